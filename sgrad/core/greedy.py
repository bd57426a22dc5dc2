"""Decoupled Greedy Learning (Belilovsky, Eickenberg and Oyallon, ICML 2020, arXiv:1901.08164).

Module i < K and its auxiliary classifier A_i (in the interface slot where DNI
keeps the SG model) step together along the gradient of A_i's cross-entropy on
h_i = f_i(h_{i-1}); module K steps along the task loss. The explicit VJPs of
sgrad/core/dni.py mean no gradient crosses an interface: module i is handed the
cotangent of its own head's loss, nothing from above.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.core import dni
from sgrad.models.loss import LossFn, per_example, task_metrics
from sgrad.models.network import apply

PyTree = Any


class HeadStep(NamedTuple):
    params_grad: PyTree    # d(mean aux loss) / d(head params)
    cotangent: jnp.ndarray  # d(summed aux loss) / dh: what module i's VJP takes (summed-loss units, as in dni.py)
    stats: PyTree           # the head's updated batch-norm statistics
    metrics: dict           # the head's batch-mean loss (and accuracy, for class labels)


def head_step(head: nn.Module, params: PyTree, stats: PyTree, h: jnp.ndarray, labels: jnp.ndarray,
              loss: LossFn) -> HeadStep:
    """The auxiliary head's loss (the task's loss, on the head's prediction of the network's output) on h and its
    gradients w.r.t. its parameters and h."""
    def summed(q, h):
        outputs, new_stats = apply(head, q, stats, (h, None), True)
        return per_example(loss, outputs, labels).sum(), (new_stats, outputs)

    (total, (new_stats, outputs)), (d_q, d_h) = jax.value_and_grad(summed, argnums=(0, 1), has_aux=True)(params, h)
    batch = h.shape[0]
    return HeadStep(jax.tree.map(lambda g: g / batch, d_q), d_h, new_stats,
                    task_metrics(total / batch, outputs, labels))


def dgl_grads(net: dni.Network, params: PyTree, stats: PyTree, x: jnp.ndarray, labels: jnp.ndarray,
              rng: jax.Array | None = None):
    """Greedy gradients for modules and heads; (grads, new_stats, metrics) like dni.dni_grads."""
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x, rng=rng)
    loss, top = dni.loss_and_top_gradient(fwd.activations[-1], labels, net.loss)
    heads = [head_step(m, q, s, h, labels, net.loss)
             for m, q, s, h in zip(net.interface_models, params["interface"], stats["interface"], fwd.activations[:-1])]
    batch = x.shape[0]
    cotangents = [hs.cotangent for hs in heads] + [top]
    module_grads = tuple(jax.tree.map(lambda g: g / batch, vjp(cot)[0]) for vjp, cot in zip(fwd.vjps, cotangents))
    grads = {"modules": module_grads, "interface": tuple(hs.params_grad for hs in heads), "si": ()}
    new_stats = {"modules": fwd.stats, "interface": tuple(hs.stats for hs in heads), "si": ()}
    metrics = task_metrics(loss, fwd.activations[-1], labels)
    for i, hs in enumerate(heads, start=1):
        for name, value in hs.metrics.items():
            metrics[f"aux/{name}/{i}"] = value
    return grads, new_stats, metrics
