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


class MetricWriter:
    """write(step, {name: scalar}) appends one JSON line and one TensorBoard event per scalar."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True, enabled: bool = True):
        """`enabled=False` (every process but the first of a multi-process run) writes nothing."""
        self.workdir = Path(workdir)
        self._jsonl = self._tb = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)
        self._tb = EventFileWriter(str(self.workdir / "tb")) if tensorboard else None

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


def rewind(workdir: str | Path, step: int) -> None:
    """Drop everything logged after `step`, so a resumed run continues its curves with no duplicates."""
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if path.exists():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    files = sorted((workdir / "tb").glob("events.out.tfevents.*"))
    if not files:
        return
    events = [e for f in files for e in LegacyEventFileLoader(str(f)).Load()
              if e.HasField("summary") and e.step <= step]
    writer = EventFileWriter(str(workdir / "tb"), filename_suffix=".resumed")
    for e in events:
        writer.add_event(e)
    writer.close()
    for f in files:
        f.unlink()
