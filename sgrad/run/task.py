"""The contract between the one run loop (sgrad/run/loop.py) and an experiment family.

A task knows its network, data and compiled steps; the loop owns everything a
run does around them (run dir, resume, signals, divergence, checkpoints,
cadence, logs, summary). A task never touches files.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import jax
import jax.numpy as jnp


class Task(Protocol):
    name: str                       # shown in the progress bar and the start line
    total_steps: int
    steps_per_epoch: int | None     # trainer.eval_every=null evaluates once per epoch; None: only at the end
    probe_every: int                # 0: the task has no probe
    synchronous: bool               # chunk metrics must reach the host before the next chunk is built
    final_metrics: list[str]        # what TensorBoard's HParams tab compares runs by

    def init(self) -> Any:
        """The initial state (a pytree on the device)."""

    def checkpoint(self, state: Any) -> Any:
        """What a checkpoint holds: the state and any host-side progress (e.g. a curriculum) as arrays."""

    def restore(self, saved: Any) -> Any:
        """The state from what `checkpoint` produced (and host-side progress set back)."""

    # The compiled chunk program (sgrad/devices/chunk.py: ChunkRunner); set by `init` at the latest. The loop
    # runs a logged chunk as one or several dispatches of it, each bounded in time.
    runner: Any

    def chunk_data(self, start: int, stop: int) -> tuple:
        """What steps start..stop-1 read, row j for step start + j: the runner's data arguments (stop lies on
        the log_every grid, so a chunk never holds more than trainer.log_every rows)."""

    def chunk_metrics(self, device_metrics: Any, start: int, stop: int, seconds: float) -> dict[str, float]:
        """Host metrics of a finished chunk whose metrics cover steps start..stop-1, named as they are logged."""

    def evaluate(self, state: Any, step: int) -> dict[str, float]:
        """Held-out metrics (may be empty for generated tasks)."""

    def probe(self, state: Any, step: int) -> dict[str, float]:
        """Diagnostics such as cosine(ĝ, true gradient)."""

    def eval_line(self, step: int, train: dict, evaluation: dict) -> str:
        """One human line for an evaluation point."""

    def divergence_detail(self, state: Any) -> str:
        """Where non-finite parameters are, or ''."""

    def summary_fields(self) -> dict:
        """What summary.json records of this task (besides the last metrics)."""

    def objective(self, summary: dict) -> float:
        """The number a sweeper minimises."""


def non_finite_parameters(named_trees: Iterable[tuple[str, Any]]) -> str:
    """'non-finite parameters in <names>' for the named parameter trees holding a NaN or Inf, or ''.

    The one check behind every task's divergence_detail."""
    bad = [name for name, tree in named_trees
           if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))]
    return f"non-finite parameters in {', '.join(bad)}" if bad else ""
