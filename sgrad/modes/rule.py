"""The record of one gradient mode: what each module's gradient is in every task, and (optionally) how it runs as
a pipeline.

A mode is to sgrad what a GradientTransformation is to optax: a few pure functions in one record, looked up
once (`sgrad.modes.RULES[name]`), so nothing downstream branches on which mode it is. `ModeRule` is the
algorithm; `Stage` the pipeline protocol of a mode that can run one module per device.
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
class Stage:
    """A mode as a pipeline, one module per device (sgrad/devices/pipeline.py, sgrad/modes/stage.py).

      tick(pipe, i, tree, tick) -> (tree, h_out, input cotangent, metric slots): device i's share of a tick
      metrics(per-device sums [K, M], K) -> metric names
      receive(pipe, i, tree, cotangent) -> tree: the locked schedule's between-ticks update
      peer(pipe, i, tree, h, y, target) -> (gradient, loss): sg_share's regression of device i's copy of M_{i-1}
        on rows of h_{i-1} and their SG target (None: the mode's interface model cannot be shared)
      first(pipe, copy, x, y, rng) -> (gradient, h): first_share's step of device 1's copy of module 0 and what
        sits on its output, on rows of the minibatch (None: module 0's update needs what only device 0 has)
    """

    tick: Callable
    metrics: Callable
    schedule: str = "unlocked"    # "unlocked" (minibatch t-i on device i) or "locked" (one step in order of i)
    sends_back: bool = False      # device i sends device i-1 a cotangent each tick
    receive: Callable | None = None
    reads_input: bool = False     # module i > 1 reads the minibatch itself (complete unlocking's I_i(x))
    peer: Callable | None = None
    first: Callable | None = None

    @property
    def lag(self) -> int:
        """Ticks between sending an activation and receiving its SG target: one when the device above reads the
        minibatch itself instead of waiting a tick for the activation."""
        return 1 if self.reads_input else 2


@dataclasses.dataclass(frozen=True, eq=False)
class ModeRule:
    """One gradient mode. `grads` is the heart; every other field has the default a locked, stateless mode needs.

    Signatures (net: models.network.Network, settings: core.step.UpdateRule):
      grads(net, state, x, y, settings) -> (grads, new_stats, new_carry, metrics)  feed-forward modules
      window(net, params, s0, x, y, mask, resets, following, scale, ahead) -> (core grads, SG grads, s_T, sums)  an
        LSTM trained in windows (sgrad/core/recurrent.py); None: the mode has no sequence task
      link(predicted, true, scale) -> what network A steps along at its output in the two-clock task
        (sgrad/core/two_timescale.py); None: no two-clock task
      init_carry(net, params, stats, x, y) -> what the mode carries between steps (TrainState.carry)
      module_active(net, step, settings, active) -> which modules step now (active: update_prob's draw)
      probe(net, state, x, y, settings) -> diagnostics against the true gradient; probe_ready(name, step, K) filters them
      refusals(settings) -> [(key, value, what is allowed)] for settings this mode cannot honour
    """

    name: str
    summary: str                                  # one line for --help and errors
    grads: Callable
    interface: str | None = None                  # what sits on module i's output: "sg", "aux" or nothing
    conditioned: bool = False                     # the interface model also sees the target y (cDNI)
    synthetic_inputs: bool = False                # complete unlocking: module i > 1 runs on I_i(x)
    window: Callable | None = None
    link: Callable | None = None
    init_carry: Callable = _no_carry
    module_active: Callable = _every_module
    probe: Callable | None = None
    probe_ready: Callable = _always_ready
    stage: Stage | None = None                    # None: cannot be pipelined (update-locked)
    parallel: tuple[str, ...] = ("none", "data", "pipeline")
    refusals: Callable = _no_refusals
    diagnostic: tuple[str, str] | None = None     # (per-module metric family, what to call it on a plot)

    @property
    def synthetic(self) -> bool:
        """Modules step along synthetic gradients ĝ = M(h)."""
        return self.interface == "sg"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The experiment families this mode has: feed-forward classification always, the others where it says
        what to do in them."""
        return ("classification",) + (("sequence",) if self.window else ()) + (("two_clocks",) if self.link else ())

    @property
    def shares_sg(self) -> bool:
        """Its pipeline can share an SG model's regression with the device above (sg_share): the device above
        makes the model's target."""
        return self.stage is not None and self.stage.peer is not None

    @property
    def shares_first(self) -> bool:
        """Its pipeline can train module 0 on two devices (first_share): module 0's update needs only the minibatch
        and module 0's own interface model."""
        return self.stage is not None and self.stage.first is not None

    @property
    def interface_name(self) -> str:
        """What to call the model on an interface in messages."""
        return {"sg": "SG model", "aux": "auxiliary classifier"}.get(self.interface, "model")

    def label(self, make: Callable[[], Any]) -> Any:
        """What an interface model sees of the target: `make()` for a conditioned mode, else None (the one place
        that decides it, for every task)."""
        return make() if self.conditioned else None
