"""Layers of the paper's fully connected network: Linear -> BatchNorm -> ReLU, and the classifier."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class DenseBlock(nn.Module):
    """One hidden layer; flattens image input so the first block takes raw batches."""

    width: int
    batch_norm: bool = True

    @nn.compact
    def __call__(self, h: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = h.reshape(h.shape[0], -1)
        h = nn.Dense(self.width, use_bias=not self.batch_norm)(h)
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.relu(h)


def hidden_stack(z: jnp.ndarray, layers: int, width: int, batch_norm: bool, train: bool) -> jnp.ndarray:
    """`layers` x (Linear -> BN -> ReLU) on a flat [B, D]: the hidden layers of the small models (SG, synthetic
    input, auxiliary classifier). Called inside a compact module, so the layers are that module's own."""
    for _ in range(layers):
        z = nn.Dense(width, use_bias=not batch_norm)(z)
        if batch_norm:
            z = nn.BatchNorm(use_running_average=not train, momentum=0.9)(z)
        z = nn.relu(z)
    return z


class Classifier(nn.Module):
    """The last layer: a linear map to class logits."""

    num_classes: int

    @nn.compact
    def __call__(self, h: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        return nn.Dense(self.num_classes)(h.reshape(h.shape[0], -1))
