"""mode=dgl, Decoupled Greedy Learning (Belilovsky, Eickenberg and Oyallon, ICML 2020): module i < K trains with an
auxiliary classifier on its output and nothing crosses an interface but the activation. The rule itself is
sgrad/core/greedy.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgrad.core import greedy
from sgrad.core.step import masked_update
from sgrad.models.network import dropout_rng
from sgrad.modes.rule import ModeRule, Stage
from sgrad.modes.stage import SLOT, keep_if, no_metrics, run_module, slot_means, step_module, task_loss, task_means


def _grads(net, state, x, y, settings):
    grads, stats, metrics = greedy.dgl_grads(net, state.params, state.stats, x, y,
                                             dropout_rng(settings.seed, state.step))
    return grads, stats, state.carry, metrics


def _local_step(pipe, i: int, tree: dict, h_in, y_in, rng):
    """Module i and its head on rows of a minibatch -> (their gradients in units of the whole batch's mean loss,
    as {"interface", "module"}; module i's and the head's new batch statistics; h; the head's metrics). The
    head's loss averages over the rows it is given, so its gradient is scaled by rows / batch."""
    fwd = run_module(pipe, i, tree, h_in, rng)
    h = fwd.activations[0]
    hs = greedy.head_step(pipe.net.interface_models[i], tree["interface"], tree["interface_stats"], h, y_in,
                          pipe.net.loss)
    part = h_in.shape[0] / pipe.batch
    grads = {"interface": jax.tree.map(lambda g: g * part, hs.params_grad),
             "module": jax.tree.map(lambda g: g / pipe.batch, fwd.vjps[0](hs.cotangent)[0])}
    return grads, fwd.stats[0], hs.stats, h, hs.metrics


def first(pipe, copy: dict, x, y, rng):
    """first_share: device 1's copy of module 0 and its head on its rows of the minibatch -> (their gradient, h).
    Its batch statistics are not kept: a copy only runs in training mode (batch norm by its rows)."""
    view = {f"{part}{suffix}": copy[f"first{suffix}"][part]
            for part in ("module", "interface") for suffix in ("", "_stats")}
    grads, _, _, h, _ = _local_step(pipe, 0, view, x, y, rng)
    return grads, h


def stage(pipe, i: int, tree: dict, t):
    """Device i's unlocked tick: module i and its head step together on the minibatch that just arrived; the
    head's cotangent is all module i is handed, so nothing goes back down."""
    net, last = pipe.net, i == pipe.k - 1
    new, metrics = dict(tree), no_metrics()
    if i == 0 and pipe.first_rows:
        # first_share: module 0 on the first rows, device 1's copy on the rest; both step along the summed
        # gradient after the exchange (sgrad/devices/pipeline.py apply_after_exchange). Device 1 fills the last
        # rows of h.
        rows = pipe.batch - pipe.first_rows
        new["first_grad"], stats, head_stats, h, head = _local_step(pipe, 0, tree, t.h_in[:rows], t.y_in[:rows],
                                                                    t.rng)
        new["module_stats"] = keep_if(t.ok_in, stats, tree["module_stats"])
        new["interface_stats"] = keep_if(t.ok_in, head_stats, tree["interface_stats"])
        metrics[SLOT["aux_loss"]] = jnp.where(t.ok_in, head["loss"], 0.0)
        metrics[SLOT["aux_accuracy"]] = jnp.where(t.ok_in, head.get("accuracy", 0.0), 0.0)
        metrics[SLOT["valid"]] = jnp.asarray(t.ok_in, jnp.float32)
        h = jnp.concatenate([h, jnp.zeros((pipe.first_rows, *h.shape[1:]), h.dtype)])
        return new, h, None, jnp.stack(metrics)
    fwd = run_module(pipe, i, tree, t.h_in, t.rng)
    h = fwd.activations[0]
    if last:
        cot = task_loss(pipe, h, t.y_in, t.ok_in, metrics)
    else:
        hs = greedy.head_step(net.interface_models[i], tree["interface"], tree["interface_stats"], h, t.y_in,
                              net.loss)
        new["interface"], new["interface_opt"], _ = masked_update(pipe.tx.sg, hs.params_grad, tree["interface_opt"], tree["interface"], t.ok_in)
        new["interface_stats"] = keep_if(t.ok_in, hs.stats, tree["interface_stats"])
        cot = hs.cotangent
        metrics[SLOT["aux_loss"]] = jnp.where(t.ok_in, hs.metrics["loss"], 0.0)
        metrics[SLOT["aux_accuracy"]] = jnp.where(t.ok_in, hs.metrics.get("accuracy", 0.0), 0.0)
    new, d_in = step_module(pipe, tree, new, fwd, cot, 1.0 / pipe.batch, t.ok_in, metrics)
    new["module_stats"] = keep_if(t.ok_in, fwd.stats[0], tree["module_stats"])
    return new, h, d_in, jnp.stack(metrics)


def _stage_metrics(sums_KxM, k: int):
    return {**task_means(sums_KxM),
            **slot_means(sums_KxM, k, {"aux/loss": ("aux_loss", "valid"), "aux/accuracy": ("aux_accuracy", "valid")})}


RULE = ModeRule("dgl", "the gradient of its own auxiliary classifier's loss on h_i (Decoupled Greedy Learning)",
                _grads, interface="aux", stage=Stage(stage, _stage_metrics, "unlocked", first=first),
                diagnostic=("aux/accuracy", "auxiliary classifier accuracy"))
