"""Auxiliary classifiers for Decoupled Greedy Learning (Belilovsky, Eickenberg and Oyallon 2020).

Module i < K trains to make its own head's prediction right; the head sits where
DNI puts the SG model and takes the same arguments (the label is not an input:
it is the head's target).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from sgrad.models.fcn import hidden_stack


def adaptive_average_pool(h_BxHxWxC: jnp.ndarray, side: int) -> jnp.ndarray:
    """Average over a side x side grid of (nearly) equal cells, as torch's AdaptiveAvgPool2d does."""
    def cells(n: int) -> jnp.ndarray:
        # Cell j covers [floor(j n / side), ceil((j + 1) n / side)): a row-normalised [side, n] matrix.
        idx = jnp.arange(n)
        lo = (jnp.arange(side) * n) // side
        hi = -((-(jnp.arange(side) + 1) * n) // side)
        m = ((idx[None, :] >= lo[:, None]) & (idx[None, :] < hi[:, None])).astype(h_BxHxWxC.dtype)
        return m / m.sum(axis=1, keepdims=True)
    return jnp.einsum("ph,bhwc,qw->bpqc", cells(h_BxHxWxC.shape[1]), h_BxHxWxC, cells(h_BxHxWxC.shape[2]))


class AuxClassifier(nn.Module):
    """Conv activations: average-pool to pool x pool; sequences [B, T, D]: LayerNorm, and all that follows per
    position; then `hidden_layers` x (Linear -> BN -> ReLU) and a linear
    map to what the network outputs: `outputs` class logits, or an output of shape `outputs` (hidden_layers=0: a
    linear head)."""

    outputs: int | tuple[int, ...]
    hidden_layers: int = 0
    width: int = 256
    pool: int = 2
    batch_norm: bool = True

    @nn.compact
    def __call__(self, h: jnp.ndarray, label: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        del label
        shape = (self.outputs,) if isinstance(self.outputs, int) else tuple(self.outputs)
        if h.ndim == 3:
            # A sequence [B, T, D] (a causal Transformer's): a head per position, as the network's own readout.
            # Flattening over T would let position t's prediction read the tokens after t.
            z = hidden_stack(nn.LayerNorm()(h), self.hidden_layers, self.width, self.batch_norm, train)
            return nn.Dense(shape[-1])(z)
        if h.ndim == 4:
            h = adaptive_average_pool(h, min(self.pool, h.shape[1], h.shape[2]))
        z = h.reshape(h.shape[0], -1)
        z = hidden_stack(z, self.hidden_layers, self.width, self.batch_norm, train)
        return nn.Dense(math.prod(shape))(z).reshape(z.shape[0], *shape)


def build_aux_classifier(aux_cfg, outputs: int | tuple[int, ...]) -> AuxClassifier:
    return AuxClassifier(outputs, aux_cfg.hidden_layers, aux_cfg.width, aux_cfg.pool, aux_cfg.batch_norm)
