"""The one place that writes metrics: TensorBoard event files and metrics.jsonl in the run dir.

TensorBoard files are written with the `tensorboard` package's own event writer
and protos, so no TensorFlow is needed and TensorBoard's reader accepts them.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Mapping

from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def tb_dir(workdir: str | Path, run_name: str | None = None) -> Path:
    """Where a run's event files go: <run dir>/tb, or <run dir>/tb/<run_name> so that TensorBoard, pointed at
    a sweep, names the run by what the sweep varied (e.g. `0/tb/mode=cdni,model.layers=4`)."""
    return Path(workdir) / "tb" / run_name if run_name else Path(workdir) / "tb"


class MetricWriter:
    """write(step, {name: scalar}) appends one JSON line and one TensorBoard event per scalar."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 run_name: str | None = None):
        """`enabled=False` (every process but the first of a multi-process run) writes nothing."""
        self.workdir = Path(workdir)
        self._jsonl = self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)
        self._tb = EventFileWriter(str(tb_dir(workdir, run_name))) if tensorboard else None

    def write_hparams(self, hparams: dict, metrics: list[str], trial: str | None = None) -> None:
        """TensorBoard's HParams dashboard data: this run's settings and the metrics to compare runs by;
        `trial` names the row (default: a hash of the settings)."""
        if self._tb is None:
            return
        # summary_v2, not hparams.api: the latter imports TensorFlow (for Keras), which sgrad does not need.
        from tensorboard.plugins.hparams import summary_v2
        # TensorBoard shows every number with five significant digits (3 -> 3.0000): integers (layers, widths,
        # batch sizes, seeds) go as text, which it shows as written and filters as a set of values.
        hparams = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in hparams.items()}
        config = summary_v2.hparams_config_pb(hparams=[summary_v2.HParam(k) for k in hparams],
                                              metrics=[summary_v2.Metric(m) for m in metrics])
        for summary in (config, summary_v2.hparams_pb(hparams, trial_id=trial)):
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._jsonl is None:
            return
        values = {k: float(v) for k, v in scalars.items()}
        # JSON has no NaN or Infinity: a non-finite value is null (TensorBoard still gets the float).
        record = {"step": int(step), **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        if self._jsonl is None:
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is None:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rewind(workdir: str | Path, step: int, run_name: str | None = None) -> None:
    """Drop everything logged after `step`, so a resumed run continues its curves with no duplicates."""
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    folder = tb_dir(workdir, run_name)
    files = sorted(folder.glob("events.out.tfevents.*"))
    if not files:
        return
    if step == 0:  # a fresh start: nothing to keep (its HParams summary is written again)
        for f in files:
            f.unlink()
        return
    events = [e for f in files for e in LegacyEventFileLoader(str(f)).Load()
              if e.HasField("summary") and e.step <= step]
    writer = EventFileWriter(str(folder), filename_suffix=".resumed")
    for e in events:
        writer.add_event(e)
    writer.close()
    for f in files:
        f.unlink()
