"""Save and restore the training state with Orbax: every N steps, at the end, and on preemption.

The data order is a pure function of (seed, step), so the TrainState (step,
parameters, SG models, batch statistics, optimizer states) is all a resume needs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("sgrad")


class Checkpoints:
    """The checkpoints of one run dir, newest `keep` of them kept."""

    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            # Synchronous saves: the loop donates the state's buffers to the next chunk.
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """The newest readable checkpoint shaped like `like`; an unreadable one is skipped with a warning."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        for step in reversed(self.steps()):
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                log.warning("checkpoint at step %d in %s is unreadable (%s: %s); trying an earlier one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            return step, state
        return None

    def close(self) -> None:
        self._manager.close()


def find_checkpoint_dir(path: str | Path) -> Path:
    """`trainer.resume` may name a run dir or its checkpoints/ folder."""
    path = Path(path).expanduser()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path
