"""Hydra callbacks: record what a multirun sweeps over, and at its end name the jobs that did not complete."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("sgrad")


FAILURE = "failed.txt"


def record_failure(workdir: Path, error: BaseException) -> None:
    """A job that could not run says why in its own dir (<job>/failed.txt), for FailedJobs and for the user."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / FAILURE).write_text(f"{error}\n")


def job_status(job: Path) -> str:
    """`completed`, another status from summary.json (preempted, diverged, ...), or why the job never ran."""
    summary = job / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text()).get("status", "unknown")
    if (job / FAILURE).exists():
        return "failed: " + (job / FAILURE).read_text().strip()
    return "did not finish (no summary.json; see its log)"


class FailedJobs(Callback):
    """Writes <sweep dir>/failed_jobs.txt and exits non-zero when any job of the sweep failed."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = []
        for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
            status = job_status(job)
            if status != "completed":
                failed.append(f"{job.name}: {status}")
        if failed:
            (sweep / "failed_jobs.txt").write_text("\n".join(failed) + "\n")
            print(f"sgrad-train: {len(failed)} job(s) of the sweep in {sweep} did not complete: "
                  + "; ".join(failed), file=sys.stderr)
            sys.exit(1)


SWEPT = "swept_keys.json"


class SweptKeys(Callback):
    """Writes <sweep dir>/swept_keys.json: the settings the sweep varies, from the command line's sweep
    overrides (a,b,c / range / choice) and the sweeper's own params (e.g. Optuna's search space). Each job
    names its TensorBoard run and its HParams by them."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
        keys += [str(k) for k in (config.hydra.sweeper.get("params") or {})]
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        (sweep / SWEPT).write_text(json.dumps(sorted(set(keys))) + "\n")
