"""Save and restore the training state with Orbax: every N steps, at the end, and on preemption.

The data order is a pure function of (seed, step), so the TrainState (step,
parameters, SG models, batch statistics, optimizer states) is all a resume needs;
a run stopped inside a logged chunk also keeps that chunk's running metric sums
beside its checkpoint, so the resumed run logs what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("sgrad")

CHUNK_SUMS = "chunk_sums.npz"


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's absl warnings about options and metadata lookups, silenced (errors still pass)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


class CheckpointMismatch(ValueError):
    """A checkpoint that reads fine but holds another model (shapes or structure): not corruption."""


def _leaf_name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return ".".join(parts)


def _shapes(tree) -> dict[str, tuple]:
    return {_leaf_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpoints:
    """The checkpoints of one run dir, newest `keep` of them kept."""

    def __init__(self, directory: str | Path, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        # Orbax warns about each option a read-only manager overrides (three lines per resume): noise.
        with _quiet_orbax():
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, read_only=read_only,
                # Synchronous saves: the loop donates the state's buffers to the next chunk.
                enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, chunk_sums: tuple[int, Any] | None = None) -> None:
        """Save `state` at `step`; `chunk_sums`: (the first step they cover, the running metric sums on the
        host) of the logged chunk `step` lies inside."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()
        if chunk_sums is not None and jax.process_index() == 0:
            first, sums = chunk_sums
            leaves = jax.tree_util.tree_flatten_with_path(sums)[0]
            path = self.directory / str(step) / CHUNK_SUMS
            with open(path.with_suffix(".tmp"), "wb") as f:
                np.savez(f, *(np.asarray(leaf) for _, leaf in leaves), first=np.int64(first),
                         names=np.array([_leaf_name(p) for p, _ in leaves]))
            path.with_suffix(".tmp").replace(path)

    def chunk_sums(self, step: int, like: Any) -> tuple[int, Any] | None:
        """(first step covered, sums shaped like `like`) saved with the checkpoint at `step`, or None (none
        saved, or another shape of sums)."""
        path = self.directory / str(step) / CHUNK_SUMS
        if not path.is_file():
            return None
        leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
        with np.load(path) as saved:
            names = [_leaf_name(p) for p, _ in leaves]
            arrays = [saved[f"arr_{i}"] for i in range(len(leaves)) if f"arr_{i}" in saved.files]
            if list(saved["names"]) != names or [a.shape for a in arrays] != [np.shape(x) for _, x in leaves]:
                log.warning("the running metric sums beside the checkpoint at step %d do not fit this run's "
                            "metrics; the chunk's metrics start over", step)
                return None
            return int(saved["first"]), jax.tree_util.tree_unflatten(treedef, arrays)

    def _mismatch(self, step: int, like: Any) -> str | None:
        """How the checkpoint at `step` differs from `like` in structure or shapes; None when it fits (or when
        its metadata cannot be read: that is corruption, which restoring reports)."""
        try:
            with _quiet_orbax():
                saved = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "default")
        except Exception:
            return None
        saved = _shapes(getattr(saved, "item_metadata", saved))
        if not saved:
            return None  # no metadata: a damaged checkpoint
        wanted = _shapes(like)
        if set(saved) != set(wanted):
            extra, missing = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
            return (f"it holds {len(extra)} arrays this model lacks ({', '.join(extra[:3])}) and lacks "
                    f"{len(missing)} it has ({', '.join(missing[:3])})")
        bad = [k for k in wanted if saved[k] != wanted[k]]
        if bad:
            return ", ".join(f"{k} is {saved[k]} there, {wanted[k]} here" for k in bad[:3])
        return None

    def restore_latest(self, like: Any) -> tuple[int, Any] | None:
        """The newest readable checkpoint shaped like `like`; an unreadable one is skipped with a warning.

        A readable checkpoint of another model raises CheckpointMismatch instead: going back to an older
        checkpoint of the same run would not help, and training over it would mix two runs.
        """
        for step in reversed(self.steps()):
            self._refuse_mismatch(step, like)
            try:
                state = self._read(step, like)
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                log.warning("checkpoint at step %d in %s is unreadable (%s: %s); trying an earlier one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            return step, state
        return None

    def restore(self, step: int, like: Any) -> Any:
        """The checkpoint at `step`, shaped like `like` (CheckpointMismatch if it is another model's)."""
        self._refuse_mismatch(step, like)
        return self._read(step, like)

    def _refuse_mismatch(self, step: int, like: Any) -> None:
        mismatch = self._mismatch(step, like)
        if mismatch:
            raise CheckpointMismatch(f"the checkpoint at step {step} in {self.directory} does not fit this "
                                     f"model: {mismatch}. Resume with the settings it was made with, or "
                                     "start a fresh run dir")

    def _read(self, step: int, like: Any) -> Any:
        return self._manager.restore(step, args=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))

    def close(self) -> None:
        self._manager.close()


def find_checkpoint_dir(path: str | Path) -> Path:
    """`trainer.resume` may name a run dir or its checkpoints/ folder."""
    path = Path(path).expanduser()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path
