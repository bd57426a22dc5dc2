"""A user's network with dropout, written the two ways Flax code flags training, and a head with no flag:
`model=custom model._target_=dropout_model.make_modules` trains it (tests/ is on the path in the tests)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class TrainBlock(nn.Module):
    """Dense -> ReLU -> dropout, told `train` (True while training)."""

    width: int
    rate: float = 0.2

    @nn.compact
    def __call__(self, h, train: bool):
        h = nn.relu(nn.Dense(self.width)(h.reshape(h.shape[0], -1)))
        return nn.Dropout(self.rate, deterministic=not train)(h)


class DeterministicBlock(nn.Module):
    """The same, told `deterministic` (nn.Dropout's own convention: False while training)."""

    width: int
    rate: float = 0.2

    @nn.compact
    def __call__(self, h: jnp.ndarray, deterministic: bool):
        return nn.Dropout(self.rate)(nn.relu(nn.Dense(self.width)(h)), deterministic=deterministic)


def make_modules(num_classes: int, width: int = 32, rate: float = 0.2) -> list[nn.Module]:
    """Two dropout blocks and a plain nn.Sequential head (no flag at all)."""
    return [TrainBlock(width, rate), DeterministicBlock(width, rate), nn.Sequential([nn.Dense(num_classes)])]
