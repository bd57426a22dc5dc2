"""Hydra callbacks: at the end of a multirun, name the jobs that did not complete."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("sgrad")


class FailedJobs(Callback):
    """Writes <sweep dir>/failed_jobs.txt and exits non-zero when any job of the sweep failed."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = []
        for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
            summary = job / "summary.json"
            status = json.loads(summary.read_text()).get("status", "unknown") if summary.exists() else "no summary"
            if status != "completed":
                failed.append(f"{job.name}: {status}")
        if failed:
            (sweep / "failed_jobs.txt").write_text("\n".join(failed) + "\n")
            print(f"sgrad-train: {len(failed)} job(s) of the sweep in {sweep} did not complete: "
                  + "; ".join(failed), file=sys.stderr)
            sys.exit(1)
