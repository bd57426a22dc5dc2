"""summary.json: a run's final status and numbers, written however the run ends."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sgrad.run.provenance import provenance


class DivergenceError(RuntimeError):
    """A metric became NaN/Inf; the message names the step and the metric (module or interface)."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written at `step` and the run can be resumed."""

    def __init__(self, signum: int, step: int, command: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. "
                         f"Resume with: {command}")
        self.signum, self.step = signum, step


@contextlib.contextmanager
def run_record(workdir: Path, fields: Callable[[], dict], closing: Sequence = (), enabled: bool = True,
               earlier: Sequence[float] = ()) -> Iterator[dict]:
    """Run the block; then close `closing` and write summary.json (status, fields(), provenance), even on error.

    Status: completed, diverged (DivergenceError), preempted (Preempted) or failed.
    The yielded dict becomes the summary. `enabled=False` (processes after the first) writes no file.
    `earlier`: the wall seconds of this run dir's earlier segments (earlier_segments), counted in the total.
    """
    summary: dict = {}
    status, start = "failed", time.perf_counter()
    try:
        yield summary
        status = "completed"
    except DivergenceError:
        status = "diverged"
        raise
    except Preempted:
        status = "preempted"
        raise
    finally:
        for c in closing:
            c.close()
        segments = [*earlier, round(time.perf_counter() - start, 3)]
        # A resumed or rerun run counts every segment it took: wall_seconds is the total, not the last part.
        summary.update({"status": status, **fields(), "wall_seconds": sum(segments), "wall_segments": segments,
                        **provenance()})
        # JSON has no NaN or Infinity (json.dumps would write them bare, which strict readers reject): in the
        # file a non-finite number is null, and `non_finite` names what was (the returned dict keeps the floats).
        bad = [k for k, v in summary.items() if isinstance(v, float) and not math.isfinite(v)]
        written = {**summary, **{k: None for k in bad}, "non_finite": bad} if bad else summary
        if enabled:
            (Path(workdir) / "summary.json").write_text(json.dumps(written, indent=2, allow_nan=False) + "\n")


def earlier_segments(path: Path) -> list[float]:
    """The wall seconds of the segments an earlier start in this run dir recorded (none for a fresh dir)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(old.get("wall_segments", [old["wall_seconds"]] if "wall_seconds" in old else []))
