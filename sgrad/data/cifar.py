"""CIFAR-10 in its official python format: pickled batches in cifar-10-batches-py/."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from sgrad.data.errors import DatasetError

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
ARCHIVE = "cifar-10-python.tar.gz"


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] of one pickled batch, checked for shape and range."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({e}); delete it and fetch it again") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: CIFAR-10 batch lacks 'data'/'labels'; delete it and fetch it again")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{path}: CIFAR-10 batch has data {data.dtype}{data.shape} and {labels.shape[0]} labels; "
            "expected uint8 (N, 3072) and N labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: CIFAR-10 labels outside 0..9")
    # Stored channel-major (N, 3, 32, 32); the models take channels last.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def read_split(folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def extract(archive: Path, dest: Path) -> None:
    """Unpack the official archive, refusing members that would land outside `dest`."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{archive}: cannot unpack ({e}); delete it and fetch it again") from e
