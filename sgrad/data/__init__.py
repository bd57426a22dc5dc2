"""Datasets: readers for real formats (IDX, CIFAR-10 pickles), verified downloads, and the loader."""

from sgrad.data.datasets import Dataset, DatasetError, load_dataset

__all__ = ["Dataset", "DatasetError", "load_dataset"]
