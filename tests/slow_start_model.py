"""A model factory that takes its time, as a large network's start-up does: it leaves a marker file when it starts
building, so that a test can interrupt the run during start-up (tests/test_loop.py)."""

from __future__ import annotations

import time
from pathlib import Path

from residual_model import make_modules as residual_modules


def make_modules(num_classes: int, marker: str, seconds: float = 60.0, width: int = 16):
    Path(marker).write_text("building\n")
    time.sleep(seconds)
    return residual_modules(num_classes, width=width)
