"""Synthetic input models I_i: predict module i's input h_{i-1} from the network input x.

With them (complete unlocking, paper sec. 3.3) module i trains on I_i(x) and need
not wait for the modules below it in the forward pass either.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.models.convolution import conv
from sgrad.models.fcn import hidden_stack


class DenseInput(nn.Module):
    """x -> flat activation [B, D]: `hidden_layers` x (Linear -> BN -> ReLU), then Linear."""

    out_dim: int
    hidden_layers: int
    width: int
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        z = x.reshape(x.shape[0], -1)
        z = hidden_stack(z, self.hidden_layers, self.width, self.batch_norm, train)
        return nn.Dense(self.out_dim)(z)


class ConvInput(nn.Module):
    """x -> conv activation [B, H, W, C]: convs at input resolution, resized to H x W, then a 1x1 conv."""

    out_shape: Sequence[int]  # (H, W, C)
    hidden_layers: int
    channels: int
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        z = x
        for _ in range(self.hidden_layers):
            z = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=not self.batch_norm,
                        conv_general_dilated=conv)(z)
            if self.batch_norm:
                z = nn.BatchNorm(use_running_average=not train, momentum=0.9)(z)
            z = nn.relu(z)
        h, w, c = self.out_shape
        z = jax.image.resize(z, (z.shape[0], h, w, z.shape[-1]), "linear")
        return nn.Conv(c, (1, 1), conv_general_dilated=conv)(z)


def build_input_model(si_cfg, activation_shape: Sequence[int]) -> nn.Module:
    """The synthetic input model that produces activations of shape [B, *activation_shape]."""
    if len(activation_shape) == 1:
        return DenseInput(activation_shape[0], si_cfg.hidden_layers, si_cfg.width, si_cfg.batch_norm)
    if len(activation_shape) == 3:
        return ConvInput(tuple(activation_shape), si_cfg.hidden_layers, si_cfg.conv_channels, si_cfg.batch_norm)
    raise ValueError(f"no synthetic input model for activations of shape {tuple(activation_shape)}")
