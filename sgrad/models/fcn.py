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


class Classifier(nn.Module):
    """The last layer: a linear map to class logits."""

    num_classes: int

    @nn.compact
    def __call__(self, h: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        return nn.Dense(self.num_classes)(h.reshape(h.shape[0], -1))
