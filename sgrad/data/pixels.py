"""Images read as sequences (Sequential MNIST): an LSTM sees `per_step` pixels a time step in raster order and
names the class at the image's last step.

Each of `batch` rows is a stream of training images laid end to end (a fresh shuffle each epoch), cut into
windows of `window` steps like the other streams (sgrad/data/copy.py, sgrad/data/text.py): the state resets at
each image's first pixel, the loss is the class's cross-entropy at its last one. An image is hundreds of steps
(784 pixel by pixel), so truncation T << 784 leaves the class to be carried across many window boundaries: the
horizon a synthetic gradient must stand in for.
"""

from __future__ import annotations

import numpy as np

from sgrad.config import ConfigError
from sgrad.data.copy import StreamChunk, split_windows
from sgrad.data.datasets import Dataset


class PixelStream:
    """The training images as `batch` streams of `per_step` pixels per step, in windows of `window` steps."""

    def __init__(self, data: Dataset, batch: int, window: int, per_step: int, seed: int):
        pixels = int(np.prod(data.input_shape))
        if per_step < 1 or pixels % per_step:
            raise ConfigError(f"dataset.pixels_per_step={per_step}: allowed values are the divisors of the "
                              f"{pixels} values of a {data.name} image (1: pixel by pixel, "
                              f"{data.input_shape[1] * data.input_shape[2]}: row by row)")
        if len(data.train_y) < batch:
            raise ConfigError(f"trainer.batch_size={batch}: at most the {len(data.train_y)} training images "
                              f"(one stream of images per row)")
        self.data, self.batch, self.window, self.per_step, self.seed = data, batch, window, per_step, seed
        self.length = pixels // per_step          # steps per image
        self.per_row = len(data.train_y) // batch  # images each row reads per epoch
        self._orders: dict[int, np.ndarray] = {}
        self.windows_per_epoch = self.per_row * self.length // window

    @property
    def input_dim(self) -> int:
        return self.per_step

    @property
    def output_dim(self) -> int:
        return self.data.num_classes

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.data.train_y))}
        return self._orders[epoch]

    def _steps(self, images: np.ndarray, labels: np.ndarray, ids_BxS: np.ndarray, pos_S: np.ndarray):
        """Per row and step: the `per_step` pixels at `pos_S` of image `ids_BxS`, in [0, 1], the label where the
        image ends (masked there only) and a reset where it begins."""
        flat = images.reshape(len(images), -1)
        cols = pos_S[:, None] * self.per_step + np.arange(self.per_step)
        x = flat[ids_BxS[..., None], cols[None]].astype(np.float32) / 255.0
        last = (pos_S == self.length - 1).astype(np.float32)
        y = labels[ids_BxS].astype(np.float32) * last
        return x, y, np.broadcast_to(last, ids_BxS.shape).copy(), np.broadcast_to(
            (pos_S == 0).astype(np.float32), ids_BxS.shape).copy()

    def chunk(self, start: int, steps: int) -> StreamChunk:
        """Windows start..start+steps-1 of the training stream: a pure function of the seed and `start`."""
        s = np.arange(start * self.window, (start + steps) * self.window)
        image, pos = s // self.length, s % self.length
        epoch, slot = image // self.per_row, image % self.per_row
        ids = np.empty((self.batch, len(s)), np.int64)
        for e in np.unique(epoch):  # a chunk spans at most a few epochs
            at = epoch == e
            ids[:, at] = self._order(int(e))[slot[at][None] * self.batch + np.arange(self.batch)[:, None]]
        x, y, mask, resets = self._steps(self.data.train_x, self.data.train_y, ids, pos)
        return StreamChunk(*(split_windows(a, steps, self.window) for a in (x, y, mask, resets)))

    def eval_windows(self, split: str = "test", rows: int = 100, images: int = 1000):
        """The first `images` test images (or as many as there are, a multiple of `rows`), `rows` at a time, one
        window an image: [W, rows, length, ...] as the carried-state evaluation reads them."""
        x_all, y_all = self.data.test_x, self.data.test_y
        rows = min(rows, len(y_all))
        count = min(images, len(y_all)) // rows
        ids = np.arange(count * rows).reshape(count, rows).T  # row r reads images r, rows + r, ...
        pos = np.tile(np.arange(self.length), count)
        x, y, mask, resets = self._steps(x_all, y_all, np.repeat(ids, self.length, axis=1), pos)
        return tuple(split_windows(a, count, self.length) for a in (x, y, mask, resets))
