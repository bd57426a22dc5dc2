"""Pure, jittable steps: one train step per mode family, the evaluation pass and the gradient probe."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from sgrad import dni

PyTree = Any


@struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: PyTree        # {"modules": (...), "sg": (...)}
    stats: PyTree         # batch-norm statistics, same layout
    opt_state: PyTree


def create_state(params: PyTree, stats: PyTree, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, stats, tx.init(params))


def _global_norm(tree) -> jnp.ndarray:
    return optax.global_norm(tree) if jax.tree.leaves(tree) else jnp.zeros(())


def make_train_step(net: dni.Network, tx: optax.GradientTransformation, mode: str,
                    sg_scale: float = 1.0) -> Callable[[TrainState, jnp.ndarray, jnp.ndarray], tuple[TrainState, dict]]:
    """step(state, x, y) -> (state, metrics) for `backprop`, or the decoupled family (`dni`, `cdni`)."""
    if mode == "backprop":
        def grads_fn(params, stats, x, y):
            return dni.backprop_grads(net, params, stats, x, y)
    elif mode in ("dni", "cdni"):
        if net.conditioned != (mode == "cdni"):
            raise ValueError(f"mode={mode} needs a network built with conditioned={mode == 'cdni'}")
        def grads_fn(params, stats, x, y):
            return dni.dni_grads(net, params, stats, x, y, sg_scale)
    else:
        raise ValueError(f"mode={mode!r}: allowed values are backprop, dni, cdni")

    def train_step(state: TrainState, x: jnp.ndarray, y: jnp.ndarray):
        grads, stats, metrics = grads_fn(state.params, state.stats, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["norm/grad_modules"] = _global_norm(grads["modules"])
        metrics["norm/grad_sg"] = _global_norm(grads["sg"])
        metrics["norm/update_modules"] = _global_norm(updates["modules"])
        metrics["norm/params_modules"] = _global_norm(params["modules"])
        return TrainState(state.step + 1, params, stats, opt_state), metrics

    return train_step


def eval_counts(net: dni.Network, state: TrainState, x: jnp.ndarray, y: jnp.ndarray,
                mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Summed loss, correct predictions and example count over the unmasked rows of a batch."""
    logits = dni.predict(net, state.params, state.stats, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, -1) == y)
    m = mask.astype(jnp.float32)
    return {"loss": jnp.sum(loss * m), "correct": jnp.sum(correct * m), "count": jnp.sum(m)}


def probe(net: dni.Network, state: TrainState, x: jnp.ndarray, y: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """The SG-versus-true-gradient diagnostic; empty for backprop networks."""
    if not net.sg_models:
        return {}
    return dni.probe_synthetic_gradients(net, state.params, state.stats, x, y)
