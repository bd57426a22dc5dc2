"""Networks split into decoupled modules: the layers, and modules that group them."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from sgrad.models.cnn import ConvBlock
from sgrad.models.fcn import Classifier, DenseBlock
from sgrad.models.transformer import Block, Readout, TokenEmbedding


class LayerGroup(nn.Module):
    """Consecutive layers that update together: one decoupled module f_i."""

    layers: Sequence[nn.Module]

    @nn.compact
    def __call__(self, h: jnp.ndarray, train: bool) -> jnp.ndarray:
        for layer in self.layers:
            h = layer(h, train)
        return h


def build_layers(model_cfg, num_classes: int) -> list[nn.Module]:
    """The network's layers, classifier last; `model.layers` counts them all (a Transformer's: its blocks)."""
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
    elif name == "transformer":
        # Layers are blocks: the first embeds the tokens before its block, the last reads out after its block.
        blocks = [Block(model_cfg.width, model_cfg.heads, model_cfg.dropout) for _ in range(model_cfg.layers)]
        blocks[0] = LayerGroup((TokenEmbedding(num_classes, model_cfg.width, model_cfg.context), blocks[0]))
        blocks[-1] = LayerGroup((blocks[-1], Readout(num_classes)))
        return blocks
    else:
        raise ValueError(f"model.name={name!r}: allowed values are fcn, cnn, transformer")
    return body + [Classifier(num_classes)]


def group_layers(layers: Sequence[nn.Module], sizes: Sequence[int]) -> tuple[LayerGroup, ...]:
    """Consecutive layers into modules of the given sizes (sgrad/models/partition.py chooses them)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return tuple(LayerGroup(tuple(layers[a:a + n])) for a, n in zip(starts, sizes))
