"""parallel=pipeline: module i and its SG model live on device i and all devices update at once (update unlocking).

At tick t, device i runs module i on the activation device i-1 produced at tick
t-1 (so it works on minibatch t-i), steps its parameters at once along its own
synthetic gradient, and sends its activation forward and the SG target for the
interface below (the VJP of module i at the cotangent it used) backward, one
`jax.lax.ppermute` each. The target for its own SG model arrives two ticks after
the activation it belongs to, so each device keeps its last two outputs and
regresses M_i on the older one. Stages of different shapes run in one SPMD
program: each device's state is one flat, zero-padded buffer and `lax.switch`
on the device index picks the stage's code.

With synthetic inputs (mode=dni_full / cdni_full, complete unlocking) no device
waits for the one below either: at tick t every device takes minibatch t, module
i > 1 runs on Î_i = I_i(x), and the activation sent forward is the regression
target of I_{i+1}; both targets arrive one tick later.

mode=dgl moves minibatches up one device per tick as DNI does; device i steps
module i and its auxiliary classifier on its own, and nothing is sent back.

mode=ddg keeps its paper's schedule: the forward pass is locked (within a tick,
device i runs when the activation of device i-1 for minibatch t has arrived),
the backward is not: each device applies the delayed gradient from its stash and
sends one cotangent back, which arrives next tick. So the pipeline computes
exactly the single-device DDG step; what runs in parallel is every module's
backward and update.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgrad.core import delayed, dni, greedy
from sgrad.core.optim import Optimizers
from sgrad.core.step import TrainState, masked_update

PIPE_AXIS = "pipe"
# Per device and tick: summed loss, correct fraction, a valid input, SG loss, a valid SG target, |ĝ|,
# synthetic-input loss, a valid synthetic-input target.
# (dgl: auxiliary loss and accuracy)
_LOSS, _ACC, _VALID, _SG_LOSS, _SG_VALID, _SG_NORM, _SI_LOSS, _SI_VALID, _AUX_LOSS, _AUX_ACC = range(10)
_METRICS = 10


@struct.dataclass
class PipelineState:
    """Everything in flight. Leading axis K (one row per device) except `step`."""

    step: jnp.ndarray           # ticks run = minibatches fed
    stage_KxS: jnp.ndarray      # each stage's params, SG model, batch stats, optimizer states; flat, padded
    fwd_KxBxA2: jnp.ndarray     # activation + label (-1: none) + example index, arriving at device i next tick
    bwd_KxBxA2: jnp.ndarray     # SG target + valid column (+ unused), arriving at device i next tick
    past_Kx2xBxA2: jnp.ndarray  # each device's last two outgoing activations, newest first


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """The static layout: which stage has which shapes and how its state is flattened."""

    net: dni.Network
    tx: Optimizers
    sg_scale: float
    batch: int
    out_shapes: tuple[tuple[int, ...], ...]   # module i's activation, without the batch axis
    sizes: tuple[int, ...]                    # flat state length of each stage
    unravel: tuple[Callable, ...]
    width: int                                # A: the widest activation sent between devices

    @property
    def k(self) -> int:
        return len(self.net.modules)

    @property
    def full(self) -> bool:
        """Complete unlocking: synthetic inputs, every device on the same minibatch."""
        return bool(self.net.input_models)


def _stage_tree(state: TrainState, i: int, last: bool) -> dict:
    """Stage i's share of the state: module i, SG model i (none for the last), input model I_i (none for the first)."""
    def pick(tree, group):
        if group == "sg":
            return () if last or not tree["sg"] else tree["sg"][i]
        if group == "si":
            return tree["si"][i - 1] if i > 0 and tree["si"] else ()
        return tree["modules"][i]
    stage = {f"{name}{suffix}": pick(tree, group)
             for name, group in (("module", "modules"), ("sg", "sg"), ("si", "si"))
             for suffix, tree in (("", state.params), ("_stats", state.stats), ("_opt", state.opt_state))}
    # ddg: the module's stash and the cotangent in flight to it
    stage["delayed"] = state.delayed[i] if state.delayed and not last else ()
    return stage


def _gather(trees: Sequence[dict], step) -> TrainState:
    """The inverse of _stage_tree over all stages."""
    group = lambda key, stages: tuple(t[key] for t in stages)
    parts = []
    for suffix in ("", "_stats", "_opt"):
        parts.append({"modules": group("module" + suffix, trees),
                      "sg": group("sg" + suffix, trees[:-1]) if trees[0]["sg"] != () else (),
                      "si": group("si" + suffix, trees[1:]) if trees[1]["si"] != () else ()})
    stashes = group("delayed", trees[:-1]) if trees[0]["delayed"] != () else ()
    return TrainState(step, *parts, stashes)


def build_pipeline(net: dni.Network, tx: Optimizers, state: TrainState, input_shape: Sequence[int],
                   batch: int, sg_scale: float = 1.0) -> tuple[Pipeline, PipelineState]:
    """The layout of a decoupled network over len(net.modules) devices and its initial state."""
    if net.mode == "backprop":
        raise ValueError("parallel=pipeline needs a decoupled mode (dni, cdni, dni_full, cdni_full, dgl, ddg): "
                         "backprop is update-locked")
    k = len(net.modules)
    trees = [_stage_tree(state, i, i == k - 1) for i in range(k)]
    flats, unravels = zip(*(ravel_pytree(t) for t in trees))
    h = jnp.zeros((batch, *input_shape), jnp.float32)
    out_shapes = []
    for f, p, s in zip(net.modules, state.params["modules"], state.stats["modules"]):
        h = jax.eval_shape(lambda p, h, f=f, s=s: dni.apply_module(f, p, s, h, False)[0], p, h)
        out_shapes.append(tuple(h.shape[1:]))
    width = max(int(np.prod(s)) for s in out_shapes[:-1])
    pipe = Pipeline(net, tx, sg_scale, batch, tuple(out_shapes),
                    tuple(int(f.size) for f in flats), tuple(unravels), width)
    stage = jnp.stack([jnp.pad(f, (0, max(pipe.sizes) - f.size)) for f in flats])
    msg = jnp.zeros((k, batch, width + 2), jnp.float32)
    no_label = msg.at[..., -2].set(-1.0)
    return pipe, PipelineState(state.step, stage, no_label, msg, jnp.stack([no_label, no_label], axis=1))


def stage_tick(pipe: Pipeline, i: int, tree: dict, h_in, y_in, ok_in, past_h, past_y, target, target_ok,
               past_x=None, si_target=None, si_target_ok=None):
    """One tick of stage i on unpadded arrays -> (tree, h_out, input cotangent, metrics[8]).

    First M_i regresses its output from an earlier tick (past_h) toward the SG
    target that just arrived (and, with synthetic inputs, I_i regresses the
    activation module i-1 sent for last tick's input past_x); then module i takes
    the decoupled step on (h_in, y_in), on Î_i = I_i(h_in) when it has an input
    model (h_in is then the network input). All of it uses the parameters from
    before this tick, as the single-device step does, so with one minibatch in
    flight at a time the pipeline is exactly that step. `ok_in`, `target_ok`
    and `si_target_ok` (traced bools) mask updates while the pipeline fills.
    """
    net, last = pipe.net, i == pipe.k - 1
    new = dict(tree)
    metrics = [jnp.zeros(())] * _METRICS
    onehot = lambda y: jax.nn.one_hot(y, net.num_classes) if net.conditioned else None
    keep = lambda new_tree, old_tree: jax.tree.map(lambda a, b: jnp.where(ok_in, a, b), new_tree, old_tree)
    greedy_mode = net.mode.greedy
    if not last and not greedy_mode:
        model = net.sg_models[i]

        def sg_out(q):
            # Only the output is used: the running BN statistics were updated when ĝ was predicted.
            return dni.apply_sg(model, q, tree["sg_stats"], past_h, onehot(past_y), True)[0]

        pred, vjp = jax.vjp(sg_out, tree["sg"])
        (g_sg,), (sg_loss,) = dni.regression_grads([pred], [vjp], [target])
        new["sg"], new["sg_opt"], _ = masked_update(pipe.tx.sg, g_sg, tree["sg_opt"], tree["sg"], target_ok)
        metrics[_SG_LOSS] = jnp.where(target_ok, sg_loss, 0.0)
        metrics[_SG_VALID] = target_ok.astype(jnp.float32)
    if pipe.full and i > 0:
        si_model = net.input_models[i - 1]
        si_out = lambda q, x: dni.apply_module(si_model, q, tree["si_stats"], x, True)
        pred, vjp = jax.vjp(lambda q: si_out(q, past_x)[0], tree["si"])
        (g_si,), (si_loss,) = dni.regression_grads([pred], [vjp], [si_target])
        new["si"], new["si_opt"], _ = masked_update(pipe.tx.sg, g_si, tree["si_opt"], tree["si"], si_target_ok)
        metrics[_SI_LOSS] = jnp.where(si_target_ok, si_loss, 0.0)
        metrics[_SI_VALID] = si_target_ok.astype(jnp.float32)
        h_in, si_stats = si_out(tree["si"], h_in)
        new["si_stats"] = keep(si_stats, tree["si_stats"])
    fwd = dni.forward([net.modules[i]], [tree["module"]], [tree["module_stats"]], h_in)
    h = fwd.activations[0]
    if last:
        loss, cot = dni.loss_and_top_gradient(h, y_in)
        factor = 1.0 / pipe.batch
        metrics[_LOSS] = jnp.where(ok_in, loss, 0.0)
        metrics[_ACC] = jnp.where(ok_in, dni.accuracy(h, y_in), 0.0)
    elif greedy_mode:
        hs = greedy.head_step(net.sg_models[i], tree["sg"], tree["sg_stats"], h, y_in)
        new["sg"], new["sg_opt"], _ = masked_update(pipe.tx.sg, hs.params_grad, tree["sg_opt"], tree["sg"], ok_in)
        new["sg_stats"] = keep(hs.stats, tree["sg_stats"])
        cot, factor = hs.cotangent, 1.0 / pipe.batch
        metrics[_AUX_LOSS] = jnp.where(ok_in, hs.loss, 0.0)
        metrics[_AUX_ACC] = jnp.where(ok_in, hs.accuracy, 0.0)
    else:
        cot, sg_stats = dni.apply_sg(model, tree["sg"], tree["sg_stats"], h, onehot(y_in), True)
        new["sg_stats"] = keep(sg_stats, tree["sg_stats"])
        # The VJP is linear in the cotangent: scaling the update leaves the SG target (d_in) unscaled.
        factor = pipe.sg_scale / pipe.batch
        metrics[_SG_NORM] = jnp.where(ok_in, jnp.sqrt(jnp.sum(cot ** 2) / pipe.batch), 0.0)
    d_params, d_in = fwd.vjps[0](cot)
    grads = jax.tree.map(lambda g: g * factor, d_params)
    new["module"], new["module_opt"], _ = masked_update(pipe.tx.modules, grads, tree["module_opt"],
                                                         tree["module"], ok_in)
    new["module_stats"] = keep(fwd.stats[0], tree["module_stats"])
    metrics[_VALID] = ok_in.astype(jnp.float32)
    return new, h, d_in, jnp.stack(metrics)


def ddg_stage_tick(pipe: Pipeline, i: int, tree: dict, h_in, x, y, step):
    """Device i's share of one DDG step (core/delayed.py) on unpadded arrays -> (tree, h_out, the cotangent for
    device i-1, metrics[_METRICS]). Run in order of i, it is exactly the single-device step."""
    net, k = pipe.net, pipe.k
    metrics = [jnp.zeros(())] * _METRICS
    fwd = dni.forward([net.modules[i]], [tree["module"]], [tree["module_stats"]], h_in)
    h, new = fwd.activations[0], dict(tree)
    new["module_stats"] = fwd.stats[0]
    if i == k - 1:
        loss, top = dni.loss_and_top_gradient(h, y)
        d_params, d_in = fwd.vjps[0](top)
        grads, active = jax.tree.map(lambda g: g / pipe.batch, d_params), True
        metrics[_LOSS], metrics[_ACC] = loss, dni.accuracy(h, y)
    else:
        grads, d_in, new["delayed"] = delayed.module_step(net.modules[i], tree["module_stats"], tree["delayed"],
                                                          step, x, y, h_in, tree["module"])
        active = step >= delayed.delay(k, i)
    new["module"], new["module_opt"], _ = masked_update(pipe.tx.modules, grads, tree["module_opt"], tree["module"],
                                                        active)
    metrics[_VALID] = jnp.ones(())
    return new, h, d_in, jnp.stack(metrics)


def _receive_cotangent(pipe: Pipeline, i: int, tree: dict, cotangent) -> dict:
    """Device i < K-1 keeps the cotangent device i+1 sent this tick for its next one."""
    if i == pipe.k - 1:
        return tree
    return {**tree, "delayed": tree["delayed"]._replace(cotangent=cotangent)}


def _repack(flat: jnp.ndarray, tree: dict) -> jnp.ndarray:
    """A stage's new state written over the front of its padded buffer: the padding is never copied (a
    stage smaller than the largest would otherwise pay for the largest's size every tick)."""
    # One in-place update per leaf, at its offset in ravel_pytree's order: XLA can write each optimizer
    # result straight into the buffer instead of concatenating the leaves first.
    offset = 0
    for leaf in jax.tree.leaves(tree):
        flat = jax.lax.dynamic_update_slice(flat, jnp.ravel(leaf).astype(flat.dtype), (offset,))
        offset += leaf.size
    return flat


def _pad(a: jnp.ndarray, width: int) -> jnp.ndarray:
    flat = a.reshape(a.shape[0], -1)
    return jnp.pad(flat, ((0, 0), (0, width - flat.shape[1])))


def _unpad(a_BxA: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
    return a_BxA[:, :int(np.prod(shape))].reshape(a_BxA.shape[0], *shape)


def _device_tick(pipe: Pipeline, i: int, preprocess: Callable, flat, fwd, bwd, past, xs, ys, idx_B, feed):
    """Stage i's tick on its padded buffers: unpack the messages, run stage_tick, pack the replies.

    Messages are [B, A+2]: the activation (or SG target) zero-padded to A, then
    the label (-1: nothing valid) or valid flag, then the example index.
    """
    tree = pipe.unravel[i](flat[:pipe.sizes[i]])
    arrived = fwd[:, -2].astype(jnp.int32)
    if i == 0 or pipe.full:
        # Complete unlocking: every device reads minibatch t itself, nothing waits for the device below.
        idx_in, h_in, y_in, ok_in = idx_B, preprocess(xs[idx_B]), ys[idx_B], feed
    else:
        idx_in = fwd[:, -1].astype(jnp.int32)
        h_in, y_in, ok_in = _unpad(fwd[:, :-2], pipe.out_shapes[i - 1]), arrived, arrived[0] >= 0
    # The SG target comes back one tick after the output it belongs to when every device works on the same
    # minibatch, two ticks after when minibatches move up one device per tick.
    lag = 1 if pipe.full else 2
    out_shape = pipe.out_shapes[i] if i < pipe.k - 1 else pipe.out_shapes[i - 1]  # last: nothing to regress
    past_h, past_y = _unpad(past[lag - 1, :, :-2], out_shape), past[lag - 1, :, -2].astype(jnp.int32)
    target, target_ok = _unpad(bwd[:, :-2], out_shape), bwd[0, -2] > 0
    extra = {}
    if pipe.full and i > 0:
        # The activation module i-1 produced last tick, and the input it came from: I_i's regression pair.
        extra = {"past_x": preprocess(xs[fwd[:, -1].astype(jnp.int32)]),
                 "si_target": _unpad(fwd[:, :-2], pipe.out_shapes[i - 1]), "si_target_ok": arrived[0] >= 0}
    tree, h, d_in, metrics = stage_tick(pipe, i, tree, h_in, y_in, ok_in, past_h, past_y, target, target_ok,
                                        **extra)
    flat = _repack(flat, tree)
    columns = lambda a, b: jnp.stack([jnp.broadcast_to(a, (pipe.batch,)), jnp.broadcast_to(b, (pipe.batch,))],
                                     axis=1).astype(jnp.float32)
    label = jnp.where(ok_in, y_in, -1)
    out = (jnp.zeros_like(fwd) if i == pipe.k - 1 else
           jnp.concatenate([_pad(h, pipe.width), columns(label, idx_in)], axis=1))
    if i == 0 or pipe.net.mode.greedy:
        back = jnp.zeros_like(bwd)
    else:
        back = jnp.concatenate([_pad(d_in, pipe.width), columns(ok_in, 0)], axis=1)
    return flat, out, back, metrics


def metric_means(pipe: Pipeline, sums_KxM: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Per-tick sums of every device -> the same metric names the single-device step logs."""
    per = lambda row, col, count: sums_KxM[row, col] / jnp.maximum(sums_KxM[row, count], 1.0)
    out = {"loss": per(-1, _LOSS, _VALID), "accuracy": per(-1, _ACC, _VALID)}
    for i in range(pipe.k - 1):
        if pipe.net.mode.greedy:
            out[f"aux/loss/{i + 1}"] = per(i, _AUX_LOSS, _VALID)
            out[f"aux/accuracy/{i + 1}"] = per(i, _AUX_ACC, _VALID)
        elif pipe.net.mode.synthetic:
            out[f"sg/loss/{i + 1}"] = per(i, _SG_LOSS, _SG_VALID)
            out[f"sg/norm/{i + 1}"] = per(i, _SG_NORM, _VALID)
    if pipe.full:
        for i in range(1, pipe.k):
            out[f"si/loss/{i + 1}"] = per(i, _SI_LOSS, _SI_VALID)
    return out


def _exchange(pipe: Pipeline, out, back, forward_perm, backward_perm):
    """A tick's messages: `out` to the device above, `back` to the one below -> (from below, from above).

    One ppermute each way. Packing both into one collective (on two devices a swap, [(0, 1), (1, 0)]) gave
    no consistent gain with gloo: from run to run 0.8-1.7 ms per one-way ppermute and 1.5-2.0 ms per swap
    of the same message (scripts/profile_pipeline.py). DGL sends nothing back: its one message goes forward.
    """
    fwd = jax.lax.ppermute(out, PIPE_AXIS, forward_perm)
    return fwd, back if pipe.net.mode.greedy else jax.lax.ppermute(back, PIPE_AXIS, backward_perm)


def pipeline_chunk_fn(pipe: Pipeline, preprocess: Callable, feed_every: int = 1):
    """chunk(state, xs, ys, idx_CxB, n) per device, inside shard_map over PIPE_AXIS.

    `feed_every` > 1 feeds a minibatch only every that many ticks (row t of idx
    at tick t): with feed_every = K + 1 (2 with synthetic inputs) one minibatch
    is in flight at a time.
    """
    k = pipe.k
    forward_perm = [(j, j + 1) for j in range(k - 1)]
    backward_perm = [(j + 1, j) for j in range(k - 1)]

    def chunk(state: PipelineState, xs, ys, idx_CxB, n):
        me = jax.lax.axis_index(PIPE_AXIS)
        branches = [partial(_device_tick, pipe, i, preprocess) for i in range(k)]

        def tick(j, carry):
            s, sums = carry
            feed = s.step % feed_every == 0
            flat, out, back, metrics = jax.lax.switch(
                me, branches, s.stage_KxS[0], s.fwd_KxBxA2[0], s.bwd_KxBxA2[0], s.past_Kx2xBxA2[0],
                xs, ys, idx_CxB[j], feed)
            fwd, bwd = _exchange(pipe, out, back, forward_perm, backward_perm)
            # Device 0 receives nothing forward (it reads the data) and device K-1 nothing backward:
            # zeros, whose valid column says "no target".
            past = jnp.stack([out, s.past_Kx2xBxA2[0, 0]])
            s = PipelineState(s.step + 1, flat[None], fwd[None], bwd[None], past[None])
            return s, sums + metrics

        state, sums = jax.lax.fori_loop(0, n, tick, (state, jnp.zeros(_METRICS)))
        return state, metric_means(pipe, jax.lax.all_gather(sums, PIPE_AXIS))

    return chunk


def ddg_chunk_fn(pipe: Pipeline, preprocess: Callable):
    """chunk(state, xs, ys, idx_CxB, n) for mode=ddg, inside shard_map over PIPE_AXIS.

    A tick is one DDG step: K sub-steps in which device r runs its stage on the activation of device r-1 that
    just arrived (the locked forward pass, during which the others wait), then one backward ppermute carries
    every device's cotangent down, to be used next tick.
    """
    k = pipe.k
    forward_perm = [(j, j + 1) for j in range(k - 1)]
    backward_perm = [(j + 1, j) for j in range(k - 1)]


    def chunk(state: PipelineState, xs, ys, idx_CxB, n):
        me = jax.lax.axis_index(PIPE_AXIS)
        zeros_msg = jnp.zeros((pipe.batch, pipe.width), jnp.float32)

        def tick(j, carry):
            s, sums = carry
            x, y = preprocess(xs[idx_CxB[j]]), ys[idx_CxB[j]]

            def stage(i, flat, msg):
                tree = pipe.unravel[i](flat[:pipe.sizes[i]])
                h_in = x if i == 0 else _unpad(msg, pipe.out_shapes[i - 1])
                tree, h, d_in, metrics = ddg_stage_tick(pipe, i, tree, h_in, x, y, s.step)
                out = _pad(h, pipe.width) if i < k - 1 else zeros_msg
                back = _pad(d_in, pipe.width) if i > 0 else zeros_msg
                return _repack(flat, tree), out, back, metrics

            def wait(flat, msg):
                return flat, zeros_msg, zeros_msg, jnp.zeros(_METRICS)

            flat, msg = s.stage_KxS[0], zeros_msg
            back, metrics = zeros_msg, jnp.zeros(_METRICS)
            for r in range(k):
                # Only device r has its input now; the others pass (index k: the waiting branch).
                flat, out, back_r, metrics_r = jax.lax.switch(
                    jnp.where(me == r, me, k), [partial(stage, i) for i in range(k)] + [wait], flat, msg)
                back = jnp.where(me == r, back_r, back)
                metrics = jnp.where(me == r, metrics_r, metrics)
                if r < k - 1:
                    msg = jax.lax.ppermute(out, PIPE_AXIS, forward_perm)
            arrived = jax.lax.ppermute(back, PIPE_AXIS, backward_perm)
            receive = [lambda f, a, i=i: _repack(f, _receive_cotangent(
                pipe, i, pipe.unravel[i](f[:pipe.sizes[i]]), _unpad(a, pipe.out_shapes[min(i, k - 2)])))
                       for i in range(k)]
            flat = jax.lax.switch(me, receive, flat, arrived)
            s = s.replace(step=s.step + 1, stage_KxS=flat[None])
            return s, sums + metrics

        state, sums = jax.lax.fori_loop(0, n, tick, (state, jnp.zeros(_METRICS)))
        return state, metric_means(pipe, jax.lax.all_gather(sums, PIPE_AXIS))

    return chunk


def make_pipeline_runner(pipe: Pipeline, preprocess: Callable, devices: Sequence[jax.Device],
                         feed_every: int = 1) -> Callable:
    """jit(shard_map(chunk)) over the first K devices, stage i on device i; state buffers donated."""
    if len(devices) < pipe.k:
        raise ValueError(f"parallel=pipeline places one module per device: the network has {pipe.k} modules but "
                         f"only {len(devices)} devices are visible (on CPU set XLA_FLAGS="
                         f"--xla_force_host_platform_device_count={pipe.k}, or group layers with model.dni_every)")
    mesh = jax.make_mesh((pipe.k,), (PIPE_AXIS,), devices=devices[:pipe.k])
    state_spec = PipelineState(P(), P(PIPE_AXIS), P(PIPE_AXIS), P(PIPE_AXIS), P(PIPE_AXIS))
    specs = (state_spec, P(), P(), P(), P())
    chunk = (ddg_chunk_fn(pipe, preprocess) if pipe.net.mode.delayed else
             pipeline_chunk_fn(pipe, preprocess, feed_every))
    sharded = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=specs,
                                    out_specs=(state_spec, P()), check_vma=False), donate_argnums=0)
    placements = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                              is_leaf=lambda x: isinstance(x, P))

    def run(*args):
        return sharded(*jax.tree.map(jax.device_put, args, placements))

    return run


def to_train_state(pipe: Pipeline, state: PipelineState) -> TrainState:
    """The pipeline's parameters as an ordinary TrainState on the default device (for eval, probes, export).

    With several processes (jax.distributed) every process must call it: the stages live on other hosts.
    """
    rows = multihost_utils.process_allgather(state.stage_KxS, tiled=True)
    trees = [pipe.unravel[i](jnp.asarray(rows[i, :pipe.sizes[i]])) for i in range(pipe.k)]
    return _gather(trees, jnp.asarray(multihost_utils.process_allgather(state.step, tiled=True)))


def run_sequential(pipe: Pipeline, state: TrainState, xs, ys, idx_TxB, preprocess: Callable,
                   feed_every: int = 1) -> TrainState:
    """The same delayed schedule in plain Python on one device: the reference the pipeline must match.

    Messages are unpadded arrays in Python lists; nothing is flattened or shifted
    between devices, so this checks the schedule, not the plumbing.
    """
    k, lag = pipe.k, (1 if pipe.full else 2)
    trees = [_stage_tree(state, i, i == k - 1) for i in range(k)]
    if pipe.net.mode.delayed:
        return _run_sequential_ddg(pipe, trees, state.step, xs, ys, idx_TxB, preprocess)
    false = jnp.asarray(False)
    zeros = lambda shape: jnp.zeros((pipe.batch, *shape))
    no_y = jnp.zeros((pipe.batch,), jnp.int32)
    inbox = [(None, None, false, None)] * k  # (h, y, ok, input x) sent by device i-1 last tick
    targets = [(None, false)] * k           # SG target sent back by device i+1 last tick
    past = [[(None, None)] * 2 for _ in range(k)]  # own outputs (h, y), newest first
    tick_fn = [jax.jit(partial(stage_tick, pipe, i)) for i in range(k)]
    step = int(state.step)
    for t in range(len(idx_TxB)):
        x_t, y_t, fed = preprocess(xs[idx_TxB[t]]), ys[idx_TxB[t]], jnp.asarray(step % feed_every == 0)
        sent, returned = [], []
        for i in range(k):
            h_prev, y_prev, ok_prev, x_prev = inbox[i]
            if i == 0 or pipe.full:
                h_in, y_in, ok = x_t, y_t, fed
            else:
                h_in, y_in, ok = h_prev, y_prev, ok_prev
                if h_in is None:  # nothing has arrived yet: zeros, masked out by ok
                    h_in, y_in = zeros(pipe.out_shapes[i - 1]), no_y
            old_h, old_y = past[i][lag - 1]
            target, target_ok = targets[i]
            shape = pipe.out_shapes[min(i, k - 2)]
            extra = {}
            if pipe.full and i > 0:
                extra = {"past_x": x_t if x_prev is None else x_prev,
                         "si_target": zeros(pipe.out_shapes[i - 1]) if h_prev is None else h_prev,
                         "si_target_ok": ok_prev}
            trees[i], h, d_in, _ = tick_fn[i](
                trees[i], h_in, y_in, ok, zeros(shape) if old_h is None else old_h,
                no_y if old_y is None else old_y, zeros(shape) if target is None else target, target_ok, **extra)
            sent.append((h, y_in, ok, x_t))
            returned.append((d_in, ok))
        inbox = [(None, None, false, None)] + sent[:-1]
        targets = returned[1:] + [(None, false)]
        past = [[sent[i][:2], past[i][0]] for i in range(k)]
        step += 1
    return _gather(trees, jnp.asarray(step, jnp.int32))


def _run_sequential_ddg(pipe: Pipeline, trees: list, step, xs, ys, idx_TxB, preprocess: Callable) -> TrainState:
    """mode=ddg's ticks in plain Python: stages in order of i, then every cotangent delivered."""
    tick_fn = [jax.jit(partial(ddg_stage_tick, pipe, i)) for i in range(pipe.k)]
    step = jnp.asarray(step, jnp.int32)
    for idx in idx_TxB:
        x, y = preprocess(xs[idx]), ys[idx]
        h, sent = x, []
        for i in range(pipe.k):
            trees[i], h, d_in, _ = tick_fn[i](trees[i], h, x, y, step)
            sent.append(d_in)
        trees = [_receive_cotangent(pipe, i, t, sent[i + 1] if i < pipe.k - 1 else None) for i, t in enumerate(trees)]
        step = step + 1
    return _gather(trees, step)
