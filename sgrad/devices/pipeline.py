"""parallel=pipeline: module i and its interface model live on device i and all devices update at once.

Two schedules, one SPMD program each (`jax.shard_map` over PIPE_AXIS, `lax.switch` on the device index picks
the stage's code, the mode's rule supplies it: sgrad/modes/):

- unlocked (dni, cdni, dgl, ...): at tick t device i runs module i on the activation device i-1 produced at
  tick t-1 (minibatch t-i), steps at once, and sends its activation forward and (if the mode sends anything
  back) the SG target for the interface below backward, one `jax.lax.ppermute` each (on two devices one swap
  carries both, see _exchange). The target for its own
  SG model arrives two ticks after the activation it belongs to (one with synthetic inputs, where every
  device takes minibatch t), so each device keeps its last two outputs.
- locked (ddg, fr): the forward pass is locked (within a tick device i runs module i forward when device i-1's
  activation for minibatch t has arrived and sends its output on); then every device's backward and update run
  at once, overlapping the top device's own step, and one cotangent per device goes back, to be used next tick.
  So the pipeline computes exactly the single-device step.

With `sg_share` (dni, cdni) device i+1 also holds a copy of M_i and regresses it on the last rows of the
activation it received (device i on the first rows); the two half-gradients cross with the tick's messages (in
the same swap on two devices, one more ppermute each way on more), and both devices apply their sum at the end of
the tick (apply_after_exchange), so the copy stays equal to M.

With `modules_per_device` M > 1 (unlocked modes) device d holds modules d·M .. d·M+M-1 and runs them one after
another in its tick; each still reads the activation its predecessor produced a tick earlier (on the same device
or not) and the reply its successor made, so the schedule is that of K devices, on K / M of them, and only a
device's first and last modules send anything: a network cut into more modules than devices (the paper's DNI
between every pair of layers, say) runs on the devices there are.

With `replicas` D > 1 the mesh is K x D (PIPE_AXIS x DATA_AXIS): replica d of every stage runs on its 1/D of
each minibatch and talks only to replica d of its neighbours; the stage's gradients, batch statistics and
metrics are averaged over DATA_AXIS, so all D copies of a stage keep the same state.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgrad.models.loss import is_classes
from sgrad.core.optim import Optimizers
from sgrad.devices import conv_library
from sgrad.devices.chunk import ChunkRunner, placed
from sgrad.core.step import masked_update
from sgrad.devices.layout import Pipeline, PipelineState, pad, repack, row_of, unpad
from sgrad.models.network import dropout_rng
from sgrad.modes.stage import SLOTS, LockedTick, Tick, run_module

PIPE_AXIS = "pipe"
DATA_AXIS = "data"


def device_tick(pipe: Pipeline, i: int, preprocess: Callable, row, fwd, bwd, past, stash, xs, ys, idx_B, feed,
                step):
    """Stage i's unlocked tick on its row of the slots: unpack the messages, run the rule's stage, pack the replies.

    Messages are [B, A+2]: the activation (or SG target) zero-padded to A, then a valid flag (1: an example,
    -1: nothing), then the example index; a device reads an example's target from `ys` by that index, so targets
    of any shape (a class, a token per position, a regression target) travel as one number.

    With sg_share (`stash` not None) it also returns its half of M_i's regression gradient (for device i+1) and of
    its copy of M_{i-1}'s (for device i-1), each flat, padded to P, with a valid flag, and its new stash. With
    first_share (`stash`: the rows of module 0's output device 1 made last tick) the halves are device 0's
    gradient of module 0 and its head (up) and device 1's of its copy (down), and the stash device 1's new rows.
    """
    stage = pipe.stage
    tree = pipe.tree(i, row)
    if pipe.first_rows and i == 1:
        # first_share: the last rows of module 0's output are those this device made on its copy last tick.
        fwd = jnp.concatenate([fwd[:pipe.batch - pipe.first_rows], stash])
    arrived = fwd[:, -2] >= 0
    target_of = lambda idx: ys[idx.astype(jnp.int32)]
    if i == 0 or stage.reads_input:
        # Complete unlocking: every device reads minibatch t itself, nothing waits for the device below.
        idx_in, h_in, y_in, ok_in = idx_B, preprocess(xs[idx_B]), ys[idx_B], feed
    else:
        idx_in = fwd[:, -1].astype(jnp.int32)
        h_in, y_in, ok_in = unpad(fwd[:, :-2], pipe.out_shapes[i - 1]), target_of(idx_in), arrived[0]
    out_shape = pipe.out_shapes[i] if i < pipe.k - 1 else pipe.out_shapes[i - 1]  # last: nothing to regress
    older = past[stage.lag - 1]
    # Device i's input is minibatch step - i (every device's own with synthetic inputs): its dropout key.
    rng = dropout_rng(pipe.settings.seed, step if stage.reads_input else step - i)
    tick = Tick(h_in, y_in, ok_in, unpad(older[:, :-2], out_shape), target_of(older[:, -1]),
                unpad(bwd[:, :-2], out_shape), bwd[0, -2] > 0, rng=rng)
    if stage.reads_input and i > 0:
        # The activation module i-1 produced last tick, and the input it came from: I_i's regression pair.
        tick = tick._replace(past_x=preprocess(xs[fwd[:, -1].astype(jnp.int32)]),
                             si_target=unpad(fwd[:, :-2], pipe.out_shapes[i - 1]), si_target_ok=arrived[0])
    tree, h, d_in, metrics = stage.tick(pipe, i, tree, tick)
    columns = lambda a, b: jnp.stack([jnp.broadcast_to(a, (b.shape[0],)), jnp.broadcast_to(b, (b.shape[0],))],
                                     axis=1).astype(jnp.float32)
    if pipe.first_rows:
        # Device 0's gradient of module 0 on its rows goes up, device 1's of its copy on the rest comes down.
        tree = dict(tree)
        own = _flag_row(pipe, tree.pop("first_grad"), feed) if i == 0 else _flag_row(pipe, None, False)
        peer, made = _flag_row(pipe, None, False), stash
        if i == 1:
            rows = idx_B[pipe.batch - pipe.first_rows:]
            grads, h_first = stage.first(pipe, tree, preprocess(xs[rows]), ys[rows],
                                         dropout_rng(pipe.settings.seed, step))
            peer = _flag_row(pipe, grads, feed)
            made = jnp.concatenate([pad(h_first, pipe.width), columns(jnp.where(feed, 1.0, -1.0), rows)], axis=1)
    elif stash is not None:
        tree = dict(tree)
        own = _flag_row(pipe, tree.pop("sg_grad") if i < pipe.k - 1 else None, tick.target_ok)
        if i > 0:
            # Last tick's input and the SG target made for it: the rows of M_{i-1}'s regression that are ours.
            sent, made = stash[0], stash[1]
            g_peer, _ = stage.peer(pipe, i, tree, unpad(sent[:, :-2], pipe.out_shapes[i - 1]),
                                   target_of(sent[:, -1]), unpad(made[:, :-2], pipe.out_shapes[i - 1]))
            peer = _flag_row(pipe, g_peer, made[0, -2] > 0)
        else:
            peer = _flag_row(pipe, None, False)
    if pipe.replicas > 1:
        # pmean, not sgrad.core.step.axis_mean's swap: inside the switch over stages a collective-permute spans
        # every device of the mesh, and devices of other stages run other branches (it deadlocks).
        tree = {key: jax.lax.pmean(value, DATA_AXIS) if key.endswith("_stats") else value
                for key, value in tree.items()}
    row = repack(row, tree)
    valid = jnp.where(ok_in, 1.0, -1.0)
    out = (jnp.zeros_like(fwd) if i == pipe.k - 1 else
           jnp.concatenate([pad(h, pipe.width), columns(valid, idx_in)], axis=1))
    if i == 0 or not stage.sends_back:
        back = jnp.zeros_like(bwd)
    else:
        back = jnp.concatenate([pad(d_in, pipe.width), columns(ok_in, jnp.zeros(pipe.batch))], axis=1)
    if pipe.first_rows:
        return row, out, back, metrics, own, peer, made
    if stash is None:
        return row, out, back, metrics
    rows = pipe.shared_rows
    return row, out, back, metrics, own, peer, jnp.stack([fwd[-rows:], back[-rows:]])


def device_ticks(pipe: Pipeline, d: int, preprocess: Callable, rows, fwd, bwd, past, stash, xs, ys, idx_B, feed,
                 step):
    """Device d's unlocked tick: device_tick for each of its modules i = d·M + j (M = pipe.per_device), each on its
    own row j of the device's block of the slots and its own messages (fwd, bwd, past: [M, ...]).

    -> (the block's new slots, outgoing activations [M, B, A+2], replies [M, B, A+2], metric sums [M·S]) and
    with sg_share (M = 1) its shared halves and stash (device_tick).
    """
    m = pipe.per_device
    new_rows, outs, backs, metrics = [], [], [], []
    for j in range(m):
        row, out, back, metric, *shared = device_tick(pipe, d * m + j, preprocess, row_of(rows, j), fwd[j], bwd[j],
                                                      past[j], stash, xs, ys, idx_B, feed, step)
        new_rows.append(row)
        outs.append(out)
        backs.append(back)
        metrics.append(metric)
    # The block is assembled from the new rows, not written into: a branch of the switch that writes into its
    # operand makes XLA copy the whole block in and out of it (several times the state, every tick).
    block = _rows(new_rows[0]) if m == 1 else tuple(jnp.stack(leaf) for leaf in zip(*new_rows))
    return (block, jnp.stack(outs), jnp.stack(backs), jnp.concatenate(metrics), *shared)


def _rows(row: tuple) -> tuple:
    """A device's row of the slots as its block of the [K, S_p] slots."""
    return tuple(slot[None] for slot in row)


def _flag_row(pipe: Pipeline, grads, ok):
    """A gradient as a flat row padded to P, then a valid flag (1 or 0): sg_share's message."""
    values = jnp.zeros(pipe.grad_width) if grads is None else pad(ravel_pytree(grads)[0][None], pipe.grad_width)[0]
    return jnp.concatenate([values, jnp.asarray(ok, jnp.float32)[None]])


def apply_shared(pipe: Pipeline, i: int, row, own, peer):
    """sg_share, after the exchange: M_i and device i's copy of M_{i-1} step along their regression gradients
    summed over both devices' rows (`own`, `peer`: [P+1], the lower device's half + the upper's, so both
    devices add the same numbers in the same order), where the flag says the target was valid. The update is
    elementwise in the same values on both devices, so the copies stay equal to M."""
    tree = pipe.tree(i, row)
    keys = []
    for key, grad, exists in (("interface", own, i < pipe.k - 1), ("peer", peer, i > 0)):
        if not exists:
            continue
        values, unravel = ravel_pytree(tree[key])
        tree[key], tree[f"{key}_opt"], _ = masked_update(pipe.tx.sg, unravel(grad[:values.size]), tree[f"{key}_opt"],
                                                         tree[key], grad[-1] > 0)
        keys += [key, f"{key}_opt"]
    return repack(row, tree, keys)


def _lanes(pipe: Pipeline, i: int, tree: dict) -> list:
    """What device i steps after the exchange, as (params, optimizer state) per lane, None where it has none:
    first_share one lane (module 0 and its interface model on device 0, their copy on device 1), sg_share two
    (M_i, and the copy of M_{i-1}; M_j in lane j % 2)."""
    if pipe.first_rows:
        if i == 0:
            return [({"interface": tree["interface"], "module": tree["module"]},
                     {"interface": tree["interface_opt"], "module": tree["module_opt"]})]
        return [(tree["first"], tree["first_opt"]) if i == 1 else None]
    # M_j in lane j % 2 on both of its devices (j and j+1), so that the same code steps it and its copy
    own = (tree["interface"], tree["interface_opt"]) if i < pipe.k - 1 else None
    peer = (tree["peer"], tree["peer_opt"]) if i > 0 else None
    return [own, peer] if i % 2 == 0 else [peer, own]


def _lane_shapes(pipe: Pipeline) -> list:
    """Every device's lanes (_lanes) as shapes and dtypes, None where it has none."""
    return [jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                         _lanes(pipe, i, jax.eval_shape(lambda i=i: pipe.tree(i, pipe.zeros_row()))))
            for i in range(pipe.k)]


def apply_after_exchange(pipe: Pipeline, me, row, own, peer, from_below, from_above):
    """sg_share or first_share, after the exchange: what each device shares steps along the gradient summed over
    both devices' rows (each [P+1]: this device's halves `own` (sent up) and `peer` (sent down), and those it
    received), where the flag says it is valid: M_i along own + from_above and device i's copy of M_{i-1} along
    from_below + peer (sg_share); module 0 and its interface model on device 0 along own + from_above, their
    copy on device 1 along from_below + peer (first_share). The lower device's half comes first on both devices,
    so both add the same numbers in the same order.

    The update runs outside the switch over stages, the same code on every device: compiled into each device's
    branch, XLA's CPU code rounded the two copies' updates differently (by 1e-8), and the copies drifted apart.
    Each device's lanes are read out of its slots and written back in the switch; a lane no device has is
    skipped (on two devices sg_share has one). That needs one structure for every lane (always for first_share;
    for sg_share where every SG model has M_0's shapes); where SG models differ, each device's branch steps its
    own (apply_shared), and the copies can differ in rounding as before."""
    shapes = _lane_shapes(pipe)
    like = next(lane for lanes in shapes for lane in lanes if lane is not None)
    if not all(lane is None or lane == like for lanes in shapes for lane in lanes):
        own = jnp.concatenate([own[:-1] + from_above[:-1], own[-1:]])
        peer = jnp.concatenate([from_below[:-1] + peer[:-1], from_below[-1:]])
        return jax.lax.switch(me, [partial(apply_shared, pipe, i) for i in range(pipe.k)], row, own, peer)
    used = [j for j in range(len(shapes[0])) if any(lanes[j] is not None for lanes in shapes)]

    def read(i, row):
        lanes = _lanes(pipe, i, pipe.tree(i, row))
        return tuple(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), like) if lanes[j] is None else lanes[j]
                     for j in used)

    def write(i, row, new):
        tree, keys = pipe.tree(i, row), []
        lanes = _lanes(pipe, i, tree)
        for j, (params, opt) in zip(used, new):
            if lanes[j] is None:
                continue
            if pipe.first_rows and i == 0:
                tree.update(module=params["module"], module_opt=opt["module"], interface=params["interface"],
                            interface_opt=opt["interface"])
                keys += ["module", "module_opt", "interface", "interface_opt"]
            else:
                key = "first" if pipe.first_rows else "interface" if j == i % 2 else "peer"
                tree[key], tree[f"{key}_opt"] = params, opt
                keys += [key, f"{key}_opt"]
        return repack(row, tree, keys)

    branches = range(pipe.k)
    lanes = jax.lax.switch(me, [partial(read, i) for i in branches], row)
    new = []
    for j, (params, opt) in zip(used, lanes):
        # lane j is the device's own model (M_i; module 0 on device 0) on device j, j + 2, ..., else its copy
        mine = me == 0 if pipe.first_rows else me % 2 == j
        values, unravel = ravel_pytree(params)
        n = values.size
        step = unravel(jnp.where(mine, own[:n] + from_above[:n], from_below[:n] + peer[:n]))
        ok = jnp.where(mine, own[-1], from_below[-1]) > 0
        if pipe.first_rows:  # module 0 with the modules' optimizer, its interface model with the SG models'
            parts = {part: masked_update(tx, step[part], opt[part], params[part], ok)
                     for part, tx in (("interface", pipe.tx.sg), ("module", pipe.tx.modules))}
            new.append(({p: parts[p][0] for p in parts}, {p: parts[p][1] for p in parts}))
        else:
            new.append(masked_update(pipe.tx.sg, step, opt, params, ok)[:2])
    return jax.lax.switch(me, [partial(write, i) for i in branches], row, tuple(new))


def swaps(stage, k: int, shared: bool = False) -> bool:
    """Whether an unlocked tick of `k` devices sends its messages in one swap collective (_exchange): two devices
    and a mode that sends targets back, or gradient halves both ways (sg_share, first_share; the cost models
    count a tick's collectives with it)."""
    return k == 2 and (stage.sends_back or shared)


def _exchange(pipe: Pipeline, me, out, back, forward_perm, backward_perm, own=None, peer=None):
    """A tick's messages: `out` to the device above, `back` to the one below -> (from below, from above), and with
    sg_share each device's halves of the regression gradients (`own` up, `peer` down) -> (from below, from
    above).

    On two devices everything goes in one swap collective: device 0 sends only up (its activation and its half of
    M_0's gradient), device 1 only down (the SG target and its half of its copy's), so a tick waits on one
    collective, not two or three (results/bench/processes_8x256_b1024_sg_share.md). On more devices one
    ppermute each way (packing both ways into one collective gave no consistent gain with gloo:
    results/bench/pipeline_profile.md), and sg_share's halves one more each way. A mode that sends nothing back
    (dgl) has only the forward one.
    """
    shared = own is not None
    if swaps(pipe.stage, pipe.devices, shared):
        # Each device builds only what it sends (device 0 up, device 1 down), in one pass.
        send = (jnp.concatenate([jnp.where(me == 0, out, back).ravel(), jnp.where(me == 0, own, peer)]) if shared
                else jnp.where(me == 0, out, back))
        got = jax.lax.ppermute(send, PIPE_AXIS, [(0, 1), (1, 0)])
        msg = got[:out.size].reshape(out.shape) if shared else got
        # Device 0 receives nothing from below (it reads the data) and device 1 nothing from above: zeros, whose
        # valid column says "no target", as a one-way ppermute leaves them.
        fwd, bwd = jnp.where(me == 1, msg, 0.0), jnp.where(me == 0, msg, 0.0)
        if not shared:
            return fwd, bwd
        grads = got[out.size:]
        return fwd, bwd, grads, grads
    fwd = jax.lax.ppermute(out, PIPE_AXIS, forward_perm)
    bwd = jax.lax.ppermute(back, PIPE_AXIS, backward_perm) if pipe.stage.sends_back else back
    if not shared:
        return fwd, bwd
    return fwd, bwd, jax.lax.ppermute(own, PIPE_AXIS, forward_perm), jax.lax.ppermute(peer, PIPE_AXIS, backward_perm)


def _metrics(pipe: Pipeline, sums, ys):
    if pipe.replicas > 1:
        sums = jax.lax.pmean(sums, DATA_AXIS)
    # [devices, M·S] -> one row of S per module, in module order (device d holds modules d·M .. d·M+M-1).
    metrics = pipe.stage.metrics(jax.lax.all_gather(sums, PIPE_AXIS).reshape(pipe.k, -1), pipe.k)
    return metrics if is_classes(ys) else {k: v for k, v in metrics.items() if "accuracy" not in k}


def _mean_over_replicas(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` stepping along the gradient averaged over DATA_AXIS. The same state as `tx` (not an optax.chain),
    so the stage's slots do not change."""
    return optax.GradientTransformation(
        tx.init, lambda grads, state, params=None: tx.update(jax.lax.pmean(grads, DATA_AXIS), state, params))


def unlocked_chunk_fn(pipe: Pipeline, preprocess: Callable, feed_every: int = 1):
    """chunk(state, sums, xs, ys, idx_CxB, lo, n, last, count) per device (ChunkRunner.program), inside shard_map
    over PIPE_AXIS. Tick j reads row j of the index array; `sums` are the device's own metric slots (the slots
    hold their counts, so `last` and `count` are not needed).

    `feed_every` > 1 feeds a minibatch only every that many ticks (row t of idx
    at tick t): with feed_every = K + 1 (2 with synthetic inputs) one minibatch
    is in flight at a time.
    """
    forward_perm = [(j, j + 1) for j in range(pipe.devices - 1)]
    backward_perm = [(j + 1, j) for j in range(pipe.devices - 1)]

    def chunk(state: PipelineState, sums, xs, ys, idx_CxB, lo, n, last, count):
        me = jax.lax.axis_index(PIPE_AXIS)
        branches = [partial(device_ticks, pipe, d, preprocess) for d in range(pipe.devices)]

        def tick(j, carry):
            s, sums = carry
            feed = s.step % feed_every == 0
            stash = (s.first_KxRxA2[0] if pipe.first_rows else
                     None if s.stash_Kx2xRxA2 is None else s.stash_Kx2xRxA2[0])
            rows, out, back, metrics, *shared = jax.lax.switch(
                me, branches, s.stage_KxS, s.fwd_KxBxA2, s.bwd_KxBxA2, s.past_Kx2xBxA2, stash,
                xs, ys, idx_CxB[j], feed, s.step)
            own, peer, stash = shared if shared else (None, None, None)
            # Only a device's first and last modules talk to other devices; its other modules read this tick's
            # output of the module below (and reply) on the device, one tick later as between devices.
            fwd, bwd, *halves = _exchange(pipe, me, out[-1], back[0], forward_perm, backward_perm, own, peer)
            past = jnp.stack([out, s.past_Kx2xBxA2[:, 0]], axis=1)
            s = s.replace(step=s.step + 1, stage_KxS=rows, fwd_KxBxA2=jnp.concatenate([fwd[None], out[:-1]]),
                          bwd_KxBxA2=jnp.concatenate([back[1:], bwd[None]]), past_Kx2xBxA2=past)
            if shared:
                row = apply_after_exchange(pipe, me, row_of(rows, 0), own, peer, *halves)
                s = s.replace(stage_KxS=_rows(row), **{"first_KxRxA2" if pipe.first_rows else "stash_Kx2xRxA2":
                                                       stash[None]})
            return s, sums + metrics

        state, sums = jax.lax.fori_loop(lo, lo + n, tick, (state, sums))
        return state, sums, _metrics(pipe, sums, ys)

    return chunk


def locked_chunk_fn(pipe: Pipeline, preprocess: Callable):
    """chunk(state, sums, xs, ys, idx_CxB, lo, n, last, count) for a forward-locked mode, inside shard_map over
    PIPE_AXIS (as unlocked_chunk_fn's).

    A tick is one step, scheduled as DDG's and FR's papers do: K-1 forward sub-steps, in which device r < K-1
    runs module r on the activation of device r-1 that just arrived and sends its output up (the locked forward
    pass; the others wait), then one sub-step in which every device works at once: device K-1 its whole step on
    what just arrived, device r < K-1 its backward and update (on the minibatch its stash holds, with the
    cotangent that came back last tick), overlapping the top's forward. One backward ppermute then carries every
    device's cotangent down, to be used next tick.
    """
    k, protocol = pipe.k, pipe.stage
    forward_perm = [(j, j + 1) for j in range(k - 1)]
    backward_perm = [(j + 1, j) for j in range(k - 1)]
    # Module r's new batch statistics, from its forward sub-step to its update: one padded row for any r.
    stats_size = max(ravel_pytree(pipe.tree(i, pipe.zeros_row())["module_stats"])[0].size
                     for i in range(k))

    def chunk(state: PipelineState, sums, xs, ys, idx_CxB, lo, n, last, count):
        me = jax.lax.axis_index(PIPE_AXIS)
        zeros_msg = jnp.zeros((pipe.batch, pipe.width), jnp.float32)
        zeros_stats = jnp.zeros(stats_size, jnp.float32)

        def tick(j, carry):
            s, sums = carry
            x, y = preprocess(xs[idx_CxB[j]]), ys[idx_CxB[j]]
            row = row_of(s.stage_KxS, 0)

            def forward(r, msg):
                h_in = x if r == 0 else unpad(msg, pipe.out_shapes[r - 1])
                fwd = run_module(pipe, r, pipe.tree(r, row), h_in, dropout_rng(pipe.settings.seed, s.step))
                stats = ravel_pytree(fwd.stats[0])[0].astype(jnp.float32)
                return pad(fwd.activations[0], pipe.width), jnp.pad(stats, (0, stats_size - stats.size))

            msg, inbox, ran_h, ran_stats = zeros_msg, zeros_msg, zeros_msg, zeros_stats
            for r in range(k - 1):
                # Only device r has its input now; it keeps input, output and statistics for its update below.
                out, stats = jax.lax.cond(me == r, partial(forward, r), lambda m: (zeros_msg, zeros_stats), msg)
                inbox = jnp.where(me == r, msg, inbox)
                ran_h, ran_stats = jnp.where(me == r, out, ran_h), jnp.where(me == r, stats, ran_stats)
                msg = jax.lax.ppermute(out, PIPE_AXIS, forward_perm)

            def stage(i, row, msg, inbox, ran_h, ran_stats):
                tree = pipe.tree(i, row)
                if i == k - 1:
                    h_in, ran = (x if i == 0 else unpad(msg, pipe.out_shapes[i - 1])), None
                else:
                    h_in = x if i == 0 else unpad(inbox, pipe.out_shapes[i - 1])
                    values, unravel = ravel_pytree(tree["module_stats"])
                    ran = (unpad(ran_h, pipe.out_shapes[i]), unravel(ran_stats[:values.size]))
                tree, h, d_in, metrics = protocol.tick(pipe, i, tree, LockedTick(h_in, x, y, s.step, ran))
                back = pad(d_in, pipe.width) if i > 0 else zeros_msg
                return repack(row, tree), back, metrics

            row, back, metrics = jax.lax.switch(me, [partial(stage, i) for i in range(k)], row, msg, inbox,
                                                 ran_h, ran_stats)
            arrived = jax.lax.ppermute(back, PIPE_AXIS, backward_perm)
            receive = [lambda f, a, i=i: repack(f, protocol.receive(pipe, i, pipe.tree(i, f),
                                                                unpad(a, pipe.out_shapes[min(i, k - 2)])))
                       for i in range(k)]
            row = jax.lax.switch(me, receive, row, arrived)
            s = s.replace(step=s.step + 1, stage_KxS=_rows(row))
            return s, sums + metrics

        state, sums = jax.lax.fori_loop(lo, lo + n, tick, (state, sums))
        return state, sums, _metrics(pipe, sums, ys)

    return chunk


def make_pipeline_runner(pipe: Pipeline, preprocess: Callable, devices: Sequence[jax.Device],
                         feed_every: int = 1) -> ChunkRunner:
    """jit(shard_map(chunk)) over the first K x replicas devices (stage i on devices i*D .. i*D+D-1); state
    buffers donated."""
    need = pipe.devices * pipe.replicas
    if len(devices) < need:
        times = f" x replicas={pipe.replicas}" if pipe.replicas > 1 else ""
        per = "one module" if pipe.per_device == 1 else f"modules_per_device={pipe.per_device} modules"
        more = (f"launch {need} processes, e.g. python scripts/launch_local.py {need} ..." if jax.process_count() > 1
                else f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={need}")
        raise ValueError(f"parallel=pipeline places {per} per device: the network has {pipe.k} modules{times} "
                         f"but only {len(devices)} devices are visible ({more}; or use fewer modules: "
                         "model.dni_every or model.modules for the paper's networks, fewer from your "
                         "model._target_ with model=custom; or several per device: modules_per_device)")
    if pipe.replicas > 1:
        if pipe.stage.schedule == "locked":
            raise ValueError(f"replicas={pipe.replicas}: mode={pipe.rule.name}'s stash holds whole minibatches, "
                             "so its pipeline cannot be replicated over the batch (replicas=1)")
        pipe = dataclasses.replace(pipe, tx=Optimizers(*map(_mean_over_replicas, pipe.tx)))
    mesh = jax.make_mesh((pipe.devices, pipe.replicas), (PIPE_AXIS, DATA_AXIS), devices=devices[:need])
    message = P(PIPE_AXIS, DATA_AXIS)
    state_spec = PipelineState(P(), tuple(P(PIPE_AXIS) for _ in pipe.slots), message, message, P(PIPE_AXIS, None, DATA_AXIS),
                               P(PIPE_AXIS) if pipe.shared_rows else None, P(PIPE_AXIS) if pipe.first_rows else None)
    per_device = P((PIPE_AXIS, DATA_AXIS))
    specs = (state_spec, per_device, P(), P(), P(None, DATA_AXIS), P(), P(), P(), P())
    chunk = (locked_chunk_fn(pipe, preprocess) if pipe.stage.schedule == "locked" else
             unlocked_chunk_fn(pipe, preprocess, feed_every))
    sharded = conv_library.jit(jax.shard_map(chunk, mesh=mesh, in_specs=specs,
                                             out_specs=(state_spec, per_device, P()), check_vma=False),
                               donate_argnums=0)
    run = placed(sharded, jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                                       is_leaf=lambda x: isinstance(x, P)))

    zeros = lambda state, *data: jnp.zeros(need * pipe.per_device * len(SLOTS))
    return ChunkRunner(run, zeros)
