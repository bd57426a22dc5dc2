"""mode=backprop: every module waits for the true gradient from the top; the baseline, update-locked."""

from __future__ import annotations

from sgrad.core import dni
from sgrad.models.network import dropout_rng
from sgrad.modes.rule import ModeRule


def _grads(net, state, x, y, settings):
    grads, stats, metrics = dni.backprop_grads(net, state.params, state.stats, x, y,
                                               dropout_rng(settings.seed, state.step))
    return grads, stats, state.carry, metrics


# No pipeline stage: a module that waits for the gradient from the top cannot run ahead of it.
RULE = ModeRule("backprop", "the true gradient, backpropagated through every module above", _grads,
                parallel=("none", "data"), tasks=("classification", "sequence", "two_clocks"))
