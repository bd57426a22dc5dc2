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
import optax

from sgrad.core import dni
from sgrad.models.network import apply

PyTree = Any


class HeadStep(NamedTuple):
    params_grad: PyTree    # d(mean aux loss) / d(head params)
    cotangent: jnp.ndarray  # d(summed aux loss) / dh: what module i's VJP takes (summed-loss units, as in dni.py)
    stats: PyTree           # the head's updated batch-norm statistics
    loss: jnp.ndarray       # mean cross-entropy of the head
    accuracy: jnp.ndarray


def head_step(head: nn.Module, params: PyTree, stats: PyTree, h: jnp.ndarray, labels: jnp.ndarray) -> HeadStep:
    """The auxiliary classifier's loss on h and its gradients w.r.t. its parameters and h."""
    def summed(q, h):
        logits, new_stats = apply(head, q, stats, (h, None), True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(), (new_stats, logits)

    (total, (new_stats, logits)), (d_q, d_h) = jax.value_and_grad(summed, argnums=(0, 1), has_aux=True)(params, h)
    batch = h.shape[0]
    return HeadStep(jax.tree.map(lambda g: g / batch, d_q), d_h, new_stats, total / batch,
                    dni.accuracy(logits, labels))


def dgl_grads(net: dni.Network, params: PyTree, stats: PyTree, x: jnp.ndarray, labels: jnp.ndarray):
    """Greedy gradients for modules and heads; (grads, new_stats, metrics) like dni.dni_grads."""
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    loss, top = dni.loss_and_top_gradient(fwd.activations[-1], labels)
    heads = [head_step(m, q, s, h, labels)
             for m, q, s, h in zip(net.interface_models, params["interface"], stats["interface"], fwd.activations[:-1])]
    batch = x.shape[0]
    cotangents = [hs.cotangent for hs in heads] + [top]
    module_grads = tuple(jax.tree.map(lambda g: g / batch, vjp(cot)[0]) for vjp, cot in zip(fwd.vjps, cotangents))
    grads = {"modules": module_grads, "interface": tuple(hs.params_grad for hs in heads), "si": ()}
    new_stats = {"modules": fwd.stats, "interface": tuple(hs.stats for hs in heads), "si": ()}
    metrics = {"loss": loss, "accuracy": dni.accuracy(fwd.activations[-1], labels)}
    for i, hs in enumerate(heads, start=1):
        metrics[f"aux/loss/{i}"] = hs.loss
        metrics[f"aux/accuracy/{i}"] = hs.accuracy
    return grads, new_stats, metrics
