"""Compiled chunks of training steps: a jitted loop that gathers its own batches from device-resident data."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from sgrad.core.step import TrainState
from sgrad.devices import conv_library


def preprocess(x_uint8: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """uint8 pixels -> standardised float32, per channel."""
    return (x_uint8.astype(jnp.float32) / 255.0 - mean) / std


def zero_metrics(step, state, *batch):
    """Zeros shaped like the metrics `step(state, *batch)` returns: the start of a running sum."""
    shapes = jax.eval_shape(step, state, *batch)[1]
    return jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)


def summed_loop(step, state, n, batch_at):
    """(state, metrics summed over steps 0..n-1) in one fori_loop; step i trains on batch_at(i)."""
    def body(i, carry):
        s, sums = carry
        s, metrics = step(s, *batch_at(i))
        return s, jax.tree.map(jnp.add, sums, metrics)
    return jax.lax.fori_loop(0, n, body, (state, zero_metrics(step, state, *batch_at(0))))


def chunk_metrics(sums: dict, last: dict, n) -> dict:
    """Metrics of a chunk of n >= 1 steps: the mean over its steps of what every step reports, and the last
    step's diagnostics (what only a step with `diagnostics=True` reports)."""
    return {**last, **{k: v / jnp.asarray(n, v.dtype) for k, v in sums.items()}}


def chunk_fn(train_step, mean: jnp.ndarray, std: jnp.ndarray):
    """chunk(state, xs, ys, idx_CxB, n) -> (state, metrics of the first n >= 1 steps; see chunk_metrics).

    A loop over the first `n` rows of a fixed-size index array, each step
    gathering its batch from the device-resident data. `n` is a traced value,
    so the last, shorter chunk of a run reuses the compiled program, and no step
    is spent on padding. Steps 0..n-2 skip the diagnostics; step n-1 computes them.
    """
    def chunk(state: TrainState, xs, ys, idx_CxB, n):
        batch_at = lambda i: (preprocess(xs[idx_CxB[i]], mean, std), ys[idx_CxB[i]])
        state, sums = summed_loop(partial(train_step, diagnostics=False), state, n - 1, batch_at)
        state, last = train_step(state, *batch_at(n - 1))
        sums = {k: v + last[k] for k, v in sums.items()}
        return state, chunk_metrics(sums, last, n)

    return chunk


def make_chunk_runner(train_step, mean: jnp.ndarray, std: jnp.ndarray):
    """The jitted chunk on one device, with the state's buffers donated (on CPU, convolutions by the library
    measured faster here: sgrad/devices/conv_library.py)."""
    return conv_library.jit(chunk_fn(train_step, mean, std), donate_argnums=0)
