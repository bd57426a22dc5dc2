"""The one place that builds optimizers: module and SG-model optimizers joined over the params tree."""

from __future__ import annotations

from typing import NamedTuple

import optax


def learning_rate(cfg, total_steps: int) -> optax.Schedule:
    """The schedule of `cfg.schedule`, with an optional linear warm-up."""
    kind = str(cfg.schedule)
    if kind == "constant":
        sched = optax.constant_schedule(cfg.lr)
    elif kind == "piecewise":
        sched = optax.piecewise_constant_schedule(
            cfg.lr, {int(b): cfg.decay_factor for b in cfg.boundaries})
    elif kind == "cosine":
        sched = optax.cosine_decay_schedule(cfg.lr, max(total_steps - cfg.warmup_steps, 1))
    else:
        raise ValueError(f"optim.schedule={kind!r}: allowed values are constant, piecewise, cosine")
    if cfg.warmup_steps > 0:
        warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        sched = optax.join_schedules([warm, sched], [cfg.warmup_steps])
    return sched


def build_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """One optimizer from an OptimConfig."""
    lr = learning_rate(cfg, total_steps)
    kind = str(cfg.name)
    if kind == "adam":
        if cfg.weight_decay > 0:
            tx = optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay)
        else:
            tx = optax.adam(lr, cfg.b1, cfg.b2, cfg.eps)
    elif kind == "sgd":
        tx = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
        if cfg.weight_decay > 0:
            tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    else:
        raise ValueError(f"optim.name={kind!r}: allowed values are adam, sgd")
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx


class Optimizers(NamedTuple):
    """Module and SG-model optimizers; each module and SG model keeps its own state, so one can skip a step."""

    modules: optax.GradientTransformation
    sg: optax.GradientTransformation


def build_train_optimizer(cfg, total_steps: int) -> Optimizers:
    """Modules follow `cfg.optim`, SG models `cfg.sg.optim`."""
    return Optimizers(build_optimizer(cfg.optim, total_steps), build_optimizer(cfg.sg.optim, total_steps))
