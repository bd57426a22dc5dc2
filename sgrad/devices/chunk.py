"""Compiled chunks of training steps: a jitted loop that gathers its own batches from device-resident data, and
runs a logged chunk as one dispatch or several (the run loop bounds each dispatch in time)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sgrad.core.step import TrainState
from sgrad.devices import conv_library


def preprocess(x: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """uint8 pixels -> standardised float32, per channel; token ids (int32) pass as they are."""
    if x.dtype != jnp.uint8:
        return x
    return (x.astype(jnp.float32) / 255.0 - mean) / std


def zero_metrics(step, state, *args):
    """Zeros shaped like the metrics `step(state, *args)` returns: the start of a running sum."""
    shapes = jax.eval_shape(step, state, *args)[1]
    return jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)


def summed_loop(step, state, sums, lo, hi, batch_at):
    """(state, sums + the metrics of steps lo..hi-1) in one fori_loop; step i trains on batch_at(i)."""
    def body(i, carry):
        s, acc = carry
        s, metrics = step(s, *batch_at(i))
        return s, jax.tree.map(jnp.add, acc, metrics)
    return jax.lax.fori_loop(lo, hi, body, (state, sums))


def chunk_metrics(sums: dict, last: dict, n) -> dict:
    """Metrics of a chunk of n >= 1 steps: the mean over its steps of what every step reports, and the last
    step's diagnostics (what only a step with `diagnostics=True` reports)."""
    return {**last, **{k: v / jnp.asarray(n, v.dtype) for k, v in sums.items()}}


def placed(program: Callable, placements) -> Callable:
    """program(*args) with each argument put on its sharding first (a pytree of them for a pytree argument).

    An argument already there (in a sharding equivalent to its placement) passes as it is. One seen in the last
    few calls is placed once: the training set (and a chunk's zero sums) come back with every dispatch. On a
    mesh that spans several processes every process holds the same host values (the loop keeps them in step), so
    each builds its own shards from them:
    `jax.device_put` would first check that they agree with a collective on the devices, which waits for the
    dispatches already queued there, so the devices would idle while the host prepared each dispatch.
    """
    recent: dict[int, tuple[Any, Any]] = {}

    def put(a, sharding):
        # Equivalent, not equal: a program returns P('pipe', None) where its input was placed as P('pipe'), and
        # re-placing the state would copy every leaf of it each chunk (40 ms a chunk at FCN 4x2048's pipeline).
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(sharding, a.ndim):
            return a
        hit = recent.get(id(a))
        if hit is not None and hit[0] is a:  # the entry holds `a`, so its id cannot be reused meanwhile
            return hit[1]
        if sharding.is_fully_addressable or isinstance(a, jax.Array) and not a.is_fully_addressable:
            out = jax.device_put(a, sharding)  # one process, or an array of the mesh already: a reshard
        else:
            host = np.asarray(a)
            out = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        recent[id(a)] = (a, out)
        while len(recent) > 8:  # a chunk's index array is new every chunk: keep only the latest few
            recent.pop(next(iter(recent)))
        return out

    def place(args):
        # `placements` is a prefix of `args`: one sharding may stand for a whole pytree (the state).
        return jax.tree.map(lambda sharding, arg: jax.tree.map(lambda a: put(a, sharding), arg),
                            tuple(placements), args)

    def run(*args):
        return program(*place(args))
    run.lower = lambda *args: program.lower(*place(args))
    return run


@dataclasses.dataclass(frozen=True)
class ChunkRunner:
    """A compiled chunk of training steps that a run may dispatch in pieces.

    `program(state, sums, *data, lo, n, last, count) -> (state, sums, metrics)` runs the steps on rows
    lo..lo+n-1 of the chunk's data and adds their metrics to the running `sums` (which start as
    `zeros(state, *data)`). `last` says that these steps end the chunk: its final step then also computes the
    diagnostics, and `metrics` are the chunk's, over the `count` steps in `sums`; otherwise `metrics` mean
    nothing. lo, n, last and count are traced, so one compiled program runs a chunk as any number of
    dispatches, with the same results as one.

    Calling the runner runs a whole chunk in one dispatch: `runner(state, *data, n) -> (state, metrics)`.
    """

    program: Callable
    zeros_of: Callable  # (state, *data) -> zero sums; traces the step, so `zeros` calls it once
    _zeros: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    def zeros(self, state, *data):
        """The zero sums a chunk starts from: the same arrays for every chunk (their shapes never change, and the
        program does not donate them), so no chunk pays for tracing the step again."""
        if not self._zeros:
            self._zeros.append(self.zeros_of(state, *data))
        return self._zeros[0]

    def __call__(self, state, *args):
        state, _, metrics = self._whole(self.program, state, *args)
        return state, metrics

    def compiled(self, state, *args):
        """The program runner(state, *args) runs, compiled: XLA's cost and memory analyses of a chunk (on a mesh,
        per device)."""
        return self._whole(self.program.lower, state, *args).compile()

    def _whole(self, call, state, *args):
        *data, n = args
        n = np.int32(n)
        return call(state, self.zeros(state, *data), *data, np.int32(0), n, np.bool_(True), n)


def chunk_fn(train_step, mean: jnp.ndarray, std: jnp.ndarray):
    """chunk(state, sums, xs, ys, idx_CxB, lo, n, last, count): ChunkRunner.program for a train step.

    Each step gathers its batch (row i of the index array) from the
    device-resident data. The steps skip the diagnostics except the chunk's
    final one (`last`), which a cond runs after the loop, so the program holds
    the step twice, as one chunk in one dispatch did.
    """
    plain = partial(train_step, diagnostics=False)

    def chunk(state: TrainState, sums, xs, ys, idx_CxB, lo, n, last, count):
        batch_at = lambda i: (preprocess(xs[idx_CxB[i]], mean, std), ys[idx_CxB[i]])
        state, sums = summed_loop(plain, state, sums, lo, lo + n - last.astype(lo.dtype), batch_at)
        final_shapes = jax.eval_shape(train_step, state, *batch_at(0))[1]

        def final(state, sums):
            state, metrics = train_step(state, *batch_at(lo + n - 1))
            return state, {k: v + metrics[k] for k, v in sums.items()}, metrics

        def not_yet(state, sums):
            return state, sums, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), final_shapes)

        state, sums, metrics = jax.lax.cond(last, final, not_yet, state, sums)
        return state, sums, chunk_metrics(sums, metrics, count)

    return chunk


def zero_sums_fn(train_step, mean: jnp.ndarray, std: jnp.ndarray) -> Callable:
    """zeros(state, xs, ys, idx_CxB): the running sums `chunk_fn`'s program starts a chunk from."""
    def first_step(state, xs, ys, idx_CxB):
        return train_step(state, preprocess(xs[idx_CxB[0]], mean, std), ys[idx_CxB[0]], diagnostics=False)
    return partial(zero_metrics, first_step)


def summed_chunk_runner(step, batch_at) -> ChunkRunner:
    """A ChunkRunner for a step with no separate diagnostics: its metrics are the sums of every step's (the task
    turns them into means). Step i trains on batch_at(*data, i)."""
    @partial(jax.jit, donate_argnums=0)
    def program(state, sums, *rest):
        *data, lo, n, last, count = rest
        state, sums = summed_loop(step, state, sums, lo, lo + n, lambda i: batch_at(*data, i))
        return state, sums, sums

    zeros = partial(zero_metrics, lambda state, *data: step(state, *batch_at(*data, 0)))
    return ChunkRunner(program, zeros)


def make_chunk_runner(train_step, mean: jnp.ndarray, std: jnp.ndarray) -> ChunkRunner:
    """The chunk on one device, with the state's buffers donated (on CPU, convolutions by the library measured
    faster here: sgrad/devices/conv_library.py)."""
    return ChunkRunner(conv_library.jit(chunk_fn(train_step, mean, std), donate_argnums=0),
                       zero_sums_fn(train_step, mean, std))
