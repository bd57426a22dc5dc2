"""Where a number came from: code commit and machine, recorded next to every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import jax

_REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The checkout's commit, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str | int]:
    dev = jax.devices()[0]
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count() or 0, "platform": dev.platform,
            "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def provenance() -> dict:
    return {"commit": git_commit(), **{f"machine/{k}": v for k, v in machine().items()}}
