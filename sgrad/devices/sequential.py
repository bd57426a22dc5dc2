"""The pipeline's schedules in plain Python on one device: the reference that sgrad/devices/pipeline.py must match.

Messages are unpadded arrays in Python lists; nothing is flattened or shifted between devices, and the stage
update is the mode's own rule (the same function the SPMD program switches to), so this checks the schedule
and the plumbing around it, not a second copy of the update.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax.numpy as jnp

from sgrad.core.step import TrainState
from sgrad.devices import conv_library
from sgrad.devices.layout import Pipeline, gather, stage_tree
from sgrad.models.network import dropout_rng
from sgrad.modes.stage import LockedTick, Tick


def run_sequential(pipe: Pipeline, state: TrainState, xs, ys, idx_TxB, preprocess: Callable,
                   feed_every: int = 1) -> TrainState:
    """Ticks over rows of idx_TxB, as the pipeline runs them (`feed_every` as in its runner)."""
    k = pipe.k
    trees = [stage_tree(state, i, i == k - 1) for i in range(k)]
    if pipe.stage.schedule == "locked":
        return _run_locked(pipe, trees, state.step, xs, ys, idx_TxB, preprocess)
    stage, lag, full = pipe.stage, pipe.stage.lag, pipe.stage.reads_input
    false = jnp.asarray(False)
    zeros = lambda shape: jnp.zeros((pipe.batch, *shape))
    no_y = jnp.zeros((pipe.batch, *ys.shape[1:]), ys.dtype)  # the target of an empty slot (masked out)
    inbox = [(None, None, false, None)] * k  # (h, y, ok, input x) sent by device i-1 last tick
    targets = [(None, false)] * k           # SG target sent back by device i+1 last tick
    past = [[(None, None)] * 2 for _ in range(k)]  # own outputs (h, y), newest first
    tick_fn = [conv_library.jit(partial(stage.tick, pipe, i)) for i in range(k)]
    step = int(state.step)
    for t in range(len(idx_TxB)):
        x_t, y_t, fed = preprocess(xs[idx_TxB[t]]), ys[idx_TxB[t]], jnp.asarray(step % feed_every == 0)
        sent, returned = [], []
        for i in range(k):
            h_prev, y_prev, ok_prev, x_prev = inbox[i]
            if i == 0 or full:
                h_in, y_in, ok = x_t, y_t, fed
            else:
                h_in, y_in, ok = h_prev, y_prev, ok_prev
                if h_in is None:  # nothing has arrived yet: zeros, masked out by ok
                    h_in, y_in = zeros(pipe.out_shapes[i - 1]), no_y
            old_h, old_y = past[i][lag - 1]
            target, target_ok = targets[i] if stage.sends_back else (None, false)
            shape = pipe.out_shapes[min(i, k - 2)]
            tick = Tick(h_in, y_in, ok, zeros(shape) if old_h is None else old_h, no_y if old_y is None else old_y,
                        zeros(shape) if target is None else target, target_ok,
                        rng=dropout_rng(pipe.settings.seed, step if full else step - i))
            if full and i > 0:
                tick = tick._replace(past_x=x_t if x_prev is None else x_prev,
                                     si_target=zeros(pipe.out_shapes[i - 1]) if h_prev is None else h_prev,
                                     si_target_ok=ok_prev)
            trees[i], h, d_in, _ = tick_fn[i](trees[i], tick)
            sent.append((h, y_in, ok, x_t))
            returned.append((d_in, ok))
        inbox = [(None, None, false, None)] + sent[:-1]
        targets = returned[1:] + [(None, false)]
        past = [[sent[i][:2], past[i][0]] for i in range(k)]
        step += 1
    return gather(trees, jnp.asarray(step, jnp.int32))


def _run_locked(pipe: Pipeline, trees: list, step, xs, ys, idx_TxB, preprocess: Callable) -> TrainState:
    """A forward-locked mode's ticks: stages in order of i, then every cotangent delivered."""
    stage = pipe.stage
    tick_fn = [conv_library.jit(partial(stage.tick, pipe, i)) for i in range(pipe.k)]
    step = jnp.asarray(step, jnp.int32)
    for idx in idx_TxB:
        x, y = preprocess(xs[idx]), ys[idx]
        h, sent = x, []
        for i in range(pipe.k):
            trees[i], h, d_in, _ = tick_fn[i](trees[i], LockedTick(h, x, y, step))
            sent.append(d_in)
        trees = [stage.receive(pipe, i, t, sent[i + 1] if i < pipe.k - 1 else None) for i, t in enumerate(trees)]
        step = step + 1
    return gather(trees, step)
