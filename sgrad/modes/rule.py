"""The record of one gradient mode: everything the step, the pipeline, the tasks and the checks ask of a mode.

A mode is to sgrad what a GradientTransformation is to optax: a few pure functions in one record, looked up
once (`sgrad.modes.RULES[name]`), so nothing downstream branches on which mode it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

PyTree = Any


def _no_carry(net, params, stats, x, y) -> tuple:
    return ()


def _every_module(net, step, settings, active):
    return active


def _always_ready(name: str, step: int, k: int) -> bool:
    return True


def _no_refusals(settings) -> list[tuple[str, Any, str]]:
    return []


@dataclasses.dataclass(frozen=True, eq=False)
class ModeRule:
    """One gradient mode. `grads` is the heart; every other field has the default a locked, stateless mode needs.

    Signatures (net: models.network.Network, settings: core.step.UpdateRule):
      grads(net, state, x, y, settings) -> (grads, new_stats, new_carry, metrics)
      init_carry(net, params, stats, x, y) -> what the mode carries between steps (TrainState.carry)
      module_active(net, step, settings, active) -> which modules step now (active: update_prob's draw)
      probe(net, state, x, y, settings) -> diagnostics against the true gradient; probe_ready(name, step, K) filters them
      stage(ctx, i, tree, tick) -> pipeline: device i's tick (sgrad/modes/stage.py)
      refusals(settings) -> [(key, value, what is allowed)] for settings this mode cannot honour
    """

    name: str
    summary: str                                  # one line for --help and errors
    grads: Callable
    interface: str | None = None                  # what sits on module i's output: "sg", "aux" or nothing
    conditioned: bool = False                     # the interface model also sees one-hot(y) (cDNI)
    synthetic_inputs: bool = False                # complete unlocking: module i > 1 runs on I_i(x)
    init_carry: Callable = _no_carry
    module_active: Callable = _every_module
    probe: Callable | None = None
    probe_ready: Callable = _always_ready
    stage: Callable | None = None                 # None: cannot be pipelined (update-locked)
    schedule: str = "unlocked"                    # pipeline: "unlocked" (minibatch t-i on device i) or "locked"
    sends_back: bool = False                      # pipeline: device i sends device i-1 a cotangent each tick
    receive: Callable | None = None               # locked schedule: (tree, cotangent) -> tree, between ticks
    stage_metrics: Callable | None = None         # pipeline: (per-device sums [K, M], K) -> metric names
    parallel: tuple[str, ...] = ("none", "data", "pipeline")
    tasks: tuple[str, ...] = ("classification",)  # experiment families that have this mode
    refusals: Callable = _no_refusals
    diagnostic: tuple[str, str] | None = None     # (per-module metric family, what to call it on a plot)

    @property
    def synthetic(self) -> bool:
        """Modules step along synthetic gradients ĝ = M(h)."""
        return self.interface == "sg"

    @property
    def lag(self) -> int:
        """Pipeline ticks between sending an activation and receiving its SG target."""
        return 1 if self.synthetic_inputs else 2
