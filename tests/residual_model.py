"""A user's own network, as a researcher would bring it: a stem, residual blocks and a head, each a Flax module.

`model=custom model._target_=residual_model.make_modules` trains it (the tests put tests/ on the path; your
package would be on yours)."""

from __future__ import annotations

import flax.linen as nn


class Stem(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))


class ResidualBlock(nn.Module):
    """h + W2 relu(LayerNorm(W1 h)): the block a decoupled module wraps."""

    width: int

    @nn.compact
    def __call__(self, h, train: bool):
        z = nn.relu(nn.LayerNorm()(nn.Dense(self.width)(h)))
        return h + nn.Dense(self.width)(z)


class Head(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, h):  # no `train`: sgrad adapts a module called as module(h)
        return nn.Dense(self.num_classes)(h)


def make_modules(num_classes: int, width: int = 32, blocks: int = 2) -> list[nn.Module]:
    """Stem, `blocks` residual blocks and the head: blocks + 2 decoupled modules."""
    return [Stem(width), *(ResidualBlock(width) for _ in range(blocks)), Head(num_classes)]


def widening_modules(num_classes: int) -> list[nn.Module]:
    """Two dense stages of different widths and the head: interfaces of different shapes (and SG models)."""
    return [Stem(16), Stem(24), Head(num_classes)]


def not_modules(num_classes: int):
    return {"stem": num_classes}


class Broken(nn.Module):
    """A module whose code fails on what it is given (a user's bug)."""

    @nn.compact
    def __call__(self, h):
        return nn.Dense(4)(h.reshape(h.shape[0], 5))


def broken_modules(num_classes: int) -> list[nn.Module]:
    return [Stem(8), Broken()]
