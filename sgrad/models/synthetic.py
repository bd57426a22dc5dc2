"""Synthetic gradient models M_i: predict dL/dh_i from the activation h_i (and, for cDNI, the label).

Every model ends in a zero-initialised layer, so a fresh DNI network starts with
zero synthetic gradients (the paper's initialisation, sec. 3 / supplement A).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.models.convolution import conv
from sgrad.models.fcn import hidden_stack

zeros = nn.initializers.zeros


def linear_layer(params: Any, who: str) -> str:
    """The name of the one Dense layer of a linear M (DenseSynthetic with no hidden layers); `who` begins the
    error for any other model ("sg.optim.name=rls fits")."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    names = {jax.tree_util.keystr(path[-1:]) for path, _ in leaves}
    if len(leaves) != 2 or names != {"['kernel']", "['bias']"}:
        raise ValueError(f"{who} a linear SG model (one Dense layer: sg.hidden_layers=0); "
                         f"got parameters {[jax.tree_util.keystr(p) for p, _ in leaves]}")
    (name,) = params.keys()
    return name


def stacked(layer: dict) -> jnp.ndarray:
    """A Dense layer's kernel [d, o] with its bias as one more row: W̃ [d+1, o], so that M(x) = [x, 1] W̃."""
    return jnp.concatenate([layer["kernel"], layer["bias"][None]], axis=0)


class DenseSynthetic(nn.Module):
    """SG model for flat activations [B, D]: `hidden_layers` x (Linear -> BN -> ReLU), then zero Linear. On a
    sequence of vectors [B, T, D] (a Transformer's) it is the same model at every position, with the label of
    that position ([B, T, C]) for cDNI."""

    hidden_layers: int
    width: int
    batch_norm: bool = True

    @nn.compact
    def __call__(self, h_BxD: jnp.ndarray, label_BxC: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        z = h_BxD if label_BxC is None else jnp.concatenate([h_BxD, label_BxC], axis=-1)
        z = hidden_stack(z, self.hidden_layers, self.width, self.batch_norm, train)
        return nn.Dense(h_BxD.shape[-1], kernel_init=zeros, bias_init=zeros)(z)


class ConvSynthetic(nn.Module):
    """SG model for conv activations [B, H, W, C]: conv stack, then a zero-initialised conv back to C."""

    hidden_layers: int
    channels: int
    kernel: int = 5
    batch_norm: bool = True

    @nn.compact
    def __call__(self, h_BxHxWxC: jnp.ndarray, label_BxK: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        z = h_BxHxWxC
        if label_BxK is not None:
            # The label enters as constant feature maps, the conv analogue of concatenation.
            b, hh, ww, _ = z.shape
            planes = jnp.broadcast_to(label_BxK[:, None, None, :], (b, hh, ww, label_BxK.shape[-1]))
            z = jnp.concatenate([z, planes.astype(z.dtype)], axis=-1)
        k = (self.kernel, self.kernel)
        for _ in range(self.hidden_layers):
            z = nn.Conv(self.channels, k, padding="SAME", use_bias=not self.batch_norm,
                        conv_general_dilated=conv)(z)
            if self.batch_norm:
                z = nn.BatchNorm(use_running_average=not train, momentum=0.9)(z)
            z = nn.relu(z)
        return nn.Conv(h_BxHxWxC.shape[-1], k, padding="SAME", kernel_init=zeros, bias_init=zeros,
                       conv_general_dilated=conv)(z)


def build_sg_model(sg_cfg, activation_ndim: int) -> nn.Module:
    """The SG model that fits an activation of rank `activation_ndim` (2: dense, 3: dense per position, 4: conv)."""
    if activation_ndim in (2, 3):
        return DenseSynthetic(sg_cfg.hidden_layers, sg_cfg.width, sg_cfg.batch_norm)
    if activation_ndim == 4:
        return ConvSynthetic(sg_cfg.hidden_layers, sg_cfg.conv_channels, sg_cfg.kernel, sg_cfg.batch_norm)
    raise ValueError(f"no synthetic gradient model for activations of rank {activation_ndim}")
