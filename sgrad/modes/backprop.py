"""mode=backprop: every module waits for the true gradient from the top; the baseline, update-locked."""

from __future__ import annotations

from sgrad.core import dni, recurrent
from sgrad.models.network import dropout_rng
from sgrad.modes.rule import ModeRule


def _grads(net, state, x, y, settings):
    grads, stats, metrics = dni.backprop_grads(net, state.params, state.stats, x, y,
                                               dropout_rng(settings.seed, state.step))
    return grads, stats, state.carry, metrics


def _link(predicted, true, scale):
    """Two clocks: A waits for B's true gradient at its output (the locked upper bound)."""
    return true


# No pipeline stage: a module that waits for the gradient from the top cannot run ahead of it.
RULE = ModeRule("backprop", "the true gradient, backpropagated through every module above", _grads,
                window=recurrent.bptt_window_grads, link=_link, parallel=("none", "data"))
