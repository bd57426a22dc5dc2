"""Copy and Repeat Copy (Graves et al. 2014, as used in Jaderberg et al. 2016 sec. 3.1), generated on the fly.

Each batch row is a stream of independent episodes laid end to end and cut into
windows of T steps; a reset flag marks each episode's first step. A curriculum
raises the sequence length N once the error per bit (binary cross-entropy in
bits, averaged over the output bits of a chunk) falls below a threshold.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class StreamChunk:
    """steps S of windows T: inputs [S,B,T,D], targets [S,B,T,O], loss mask and resets [S,B,T]."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    resets: np.ndarray


def split_windows(a: np.ndarray, count: int, window: int) -> np.ndarray:
    """A stream per row [B, count*window, ...] as StreamChunk holds it: [count, B, window, ...]."""
    return np.swapaxes(a.reshape(a.shape[0], count, window, *a.shape[2:]), 0, 1)


def copy_episode(rng: np.random.Generator, n: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N random bit vectors, a delimiter, then N steps in which the target is the input again.

    Input channels: bits, delimiter. Returns (x [2N+1, bits+1], y [2N+1, bits], mask [2N+1]).
    """
    seq = rng.integers(0, 2, (n, bits)).astype(np.float32)
    x = np.zeros((2 * n + 1, bits + 1), np.float32)
    x[:n, :bits] = seq
    x[n, bits] = 1.0
    y = np.zeros((2 * n + 1, bits), np.float32)
    y[n + 1:] = seq
    mask = np.zeros(2 * n + 1, np.float32)
    mask[n + 1:] = 1.0
    return x, y, mask


def repeat_copy_episode(rng: np.random.Generator, n: int, repeats: int, bits: int, max_repeats: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N bit vectors, a delimiter carrying the repeat count R / max_repeats, then the sequence R times and an
    end marker (target channel `bits`). Input channels: bits, delimiter, count. Length N + 1 + R*N + 1."""
    seq = rng.integers(0, 2, (n, bits)).astype(np.float32)
    length = n + 1 + repeats * n + 1
    x = np.zeros((length, bits + 2), np.float32)
    x[:n, :bits] = seq
    x[n, bits] = 1.0
    x[n, bits + 1] = repeats / max_repeats
    y = np.zeros((length, bits + 1), np.float32)
    y[n + 1:n + 1 + repeats * n, :bits] = np.tile(seq, (repeats, 1))
    y[-1, bits] = 1.0
    mask = np.zeros(length, np.float32)
    mask[n + 1:] = 1.0
    return x, y, mask


class CopyTask:
    """A curriculum over N for `copy` or `repeat_copy`; `chunk()` is a pure function of (seed, start, level)."""

    def __init__(self, kind: str, bits: int, batch: int, window: int, seed: int, start_length: int = 1,
                 threshold: float = 0.15, max_repeats: int = 5):
        if kind not in ("copy", "repeat_copy"):
            raise ValueError(f"unknown copy task {kind!r}: allowed values are copy, repeat_copy")
        self.kind, self.bits, self.batch, self.window, self.seed = kind, bits, batch, window, seed
        self.level, self.threshold, self.max_repeats = start_length, threshold, max_repeats
        self.solved = start_length - 1  # the longest N whose error fell below the threshold

    @property
    def input_dim(self) -> int:
        return self.bits + (1 if self.kind == "copy" else 2)

    @property
    def output_dim(self) -> int:
        return self.bits + (0 if self.kind == "copy" else 1)

    @property
    def longest_episode(self) -> int:
        """Steps of the longest episode at the current level."""
        n = self.level
        return 2 * n + 1 if self.kind == "copy" else n + 1 + self.max_repeats * n + 1

    def episode(self, rng: np.random.Generator):
        if self.kind == "copy":
            return copy_episode(rng, self.level, self.bits)
        repeats = int(rng.integers(1, self.max_repeats + 1))
        return repeat_copy_episode(rng, self.level, repeats, self.bits, self.max_repeats)

    def chunk(self, start: int, steps: int) -> StreamChunk:
        """`steps` windows per row, each row a fresh stream of episodes (a reset at the chunk's first step)."""
        total = steps * self.window
        x = np.zeros((self.batch, total, self.input_dim), np.float32)
        y = np.zeros((self.batch, total, self.output_dim), np.float32)
        mask = np.zeros((self.batch, total), np.float32)
        resets = np.zeros((self.batch, total), np.float32)
        rng = np.random.default_rng([self.seed, start, self.level])
        for b in range(self.batch):
            t = 0
            while t < total:
                ex, ey, em = self.episode(rng)
                n = min(len(ex), total - t)
                x[b, t:t + n], y[b, t:t + n], mask[b, t:t + n] = ex[:n], ey[:n], em[:n]
                resets[b, t] = 1.0
                t += n
        return StreamChunk(*(split_windows(a, steps, self.window) for a in (x, y, mask, resets)))

    def observe(self, error_per_bit: float) -> bool:
        """Raise N after a chunk whose error per bit is below the threshold; True when it rose."""
        if error_per_bit < self.threshold:
            self.solved = max(self.solved, self.level)
            self.level += 1
            return True
        return False
