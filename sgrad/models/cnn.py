"""Layers of the paper's CNN: 5x5 conv -> BatchNorm -> ReLU -> 3x3 pooling (max first, average after)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from sgrad.models.convolution import conv
from sgrad.models.pooling import max_pool


class ConvBlock(nn.Module):
    """One conv stage; halves the spatial size with a stride-2 pool."""

    channels: int
    kernel: int = 5
    pool: int = 3
    max_pool: bool = False
    batch_norm: bool = True

    @nn.compact
    def __call__(self, h_BxHxWxC: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = nn.Conv(self.channels, (self.kernel, self.kernel), padding="SAME",
                    use_bias=not self.batch_norm, conv_general_dilated=conv)(h_BxHxWxC)
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.relu(h)
        window, strides = (self.pool, self.pool), (2, 2)
        if self.max_pool:
            return max_pool(h, self.pool, 2)
        return nn.avg_pool(h, window, strides, padding="SAME", count_include_pad=False)
