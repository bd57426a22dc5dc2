"""One device's share of a pipeline tick, on unpadded arrays: what a message holds, and the pieces that every
mode's stage shares (run module i, the task loss on the last device, the masked module update).

A stage function is `stage(pipe, i, tree, tick) -> (tree, h_out, input cotangent, metric slots)`: `pipe` is
the pipeline's static layout (net, tx, sg_scale, batch, k), `tree` stage i's share of the state
(sgrad/devices/layout.py), `tick` what arrived. Metrics travel as a fixed vector of SLOTS so that every
device's branch of the SPMD program returns the same shape; each rule names them (`stage_metrics`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sgrad.core import dni
from sgrad.models.loss import task_metrics
from sgrad.core.step import masked_update

# Per device and tick: summed loss, correct fraction, a valid input, SG loss, a valid SG target, |ĝ|,
# synthetic-input loss, a valid synthetic-input target, auxiliary loss and accuracy.
SLOTS = ("loss", "accuracy", "valid", "sg_loss", "sg_valid", "sg_norm", "si_loss", "si_valid", "aux_loss",
         "aux_accuracy")
SLOT = {name: j for j, name in enumerate(SLOTS)}


class Tick(NamedTuple):
    """What device i has at an unlocked tick: its input, its own older output with the SG target that came back
    for it, and (complete unlocking) the regression pair of its input model. `*_ok` are traced bools that mask
    updates while the pipeline fills."""

    h_in: Any
    y_in: Any
    ok_in: Any
    past_h: Any = None
    past_y: Any = None
    target: Any = None
    target_ok: Any = None
    past_x: Any = None
    si_target: Any = None
    si_target_ok: Any = None
    rng: Any = None         # the dropout key of the minibatch h_in belongs to


class LockedTick(NamedTuple):
    """What device i has in a forward-locked tick: the activation of device i-1 for this minibatch, the
    minibatch itself and the step; `ran`: (h, new batch statistics) of module i on h_in, when the pipeline ran
    that forward pass earlier in the tick (to send h on before the device's backward), else None."""

    h_in: Any
    x: Any
    y: Any
    step: Any
    ran: Any = None


def no_metrics() -> list:
    return [jnp.zeros(())] * len(SLOTS)


def slot_means(sums_KxM, k: int, names: dict[str, tuple[str, str]], first: int = 0, last: int | None = None
               ) -> dict[str, jnp.ndarray]:
    """{f"{name}/{i+1}": sum of slot / count of slot} for devices first..last-1: `names` maps a metric prefix to
    its (value slot, count slot)."""
    per = lambda row, col, count: sums_KxM[row, SLOT[col]] / jnp.maximum(sums_KxM[row, SLOT[count]], 1.0)
    out = {}
    for i in range(first, k - 1 if last is None else last):
        for name, (col, count) in names.items():
            out[f"{name}/{i + 1}"] = per(i, col, count)
    return out


def task_means(sums_KxM) -> dict[str, jnp.ndarray]:
    """The task loss and accuracy, from the last device (the pipeline drops accuracies for targets that are not
    class labels)."""
    per = lambda col: sums_KxM[-1, SLOT[col]] / jnp.maximum(sums_KxM[-1, SLOT["valid"]], 1.0)
    return {"loss": per("loss"), "accuracy": per("accuracy")}


def keep_if(ok, new_tree, old_tree):
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_tree, old_tree)


def run_module(pipe, i: int, tree: dict, h_in, rng=None) -> dni.Forward:
    """Module i's training forward pass on device i, keeping its VJP; `rng`: the step's dropout key."""
    return dni.forward([pipe.net.modules[i]], [tree["module"]], [tree["module_stats"]], h_in, rng=rng, first=i)


def task_loss(pipe, h, y_in, ok_in, metrics: list):
    """The last device: the loss's cotangent at the outputs (summed-loss units), its loss (and accuracy)
    recorded."""
    loss, cot = dni.loss_and_top_gradient(h, y_in, pipe.net.loss)
    for name, value in task_metrics(loss, h, y_in).items():
        metrics[SLOT[name]] = jnp.where(ok_in, value, 0.0)
    return cot


def step_module(pipe, tree: dict, new: dict, fwd: dni.Forward, cot, factor, active, metrics: list):
    """Module i steps along its VJP at `cot` times `factor` (where `active`); returns (tree, input cotangent)."""
    d_params, d_in = fwd.vjps[0](cot)
    grads = jax.tree.map(lambda g: g * factor, d_params)
    new["module"], new["module_opt"], _ = masked_update(pipe.tx.modules, grads, tree["module_opt"], tree["module"],
                                                        active)
    metrics[SLOT["valid"]] = jnp.asarray(active, jnp.float32)
    return new, d_in
