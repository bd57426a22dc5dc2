"""Networks split into decoupled modules: layer lists grouped `dni_every` layers per module."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sgrad.models.cnn import ConvBlock
from sgrad.models.fcn import Classifier, DenseBlock


class Stage(nn.Module):
    """Consecutive layers that update together: one decoupled module f_i."""

    layers: Sequence[nn.Module]

    @nn.compact
    def __call__(self, h: jnp.ndarray, train: bool) -> jnp.ndarray:
        for layer in self.layers:
            h = layer(h, train)
        return h


def build_layers(model_cfg, num_classes: int) -> list[nn.Module]:
    """The network's layers, classifier last; `model.layers` counts them all."""
    hidden = model_cfg.layers - 1
    name = str(model_cfg.name)
    if name == "fcn":
        body = [DenseBlock(model_cfg.width, model_cfg.batch_norm) for _ in range(hidden)]
    elif name == "cnn":
        body = [
            ConvBlock(model_cfg.channels, model_cfg.kernel, model_cfg.pool,
                      max_pool=(i == 0), batch_norm=model_cfg.batch_norm)
            for i in range(hidden)
        ]
    else:
        raise ValueError(f"model.name={name!r}: allowed values are fcn, cnn")
    return body + [Classifier(num_classes)]


def build_modules(model_cfg, num_classes: int) -> tuple[Stage, ...]:
    """Group layers into modules of `dni_every` layers; the last module holds the remainder."""
    layers = build_layers(model_cfg, num_classes)
    every = model_cfg.dni_every
    return tuple(Stage(tuple(layers[i:i + every])) for i in range(0, len(layers), every))
