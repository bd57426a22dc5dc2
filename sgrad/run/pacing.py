"""How much work the run loop hands the device at a time: dispatches bounded in seconds, not steps.

A logged chunk can be minutes of device work on a slow network, and a preempted
job gets ~30 s between SIGTERM and SIGKILL (SLURM's default grace, the clouds'
preemptible VMs). So the loop runs a chunk as dispatches of about
DISPATCH_SECONDS each, the pace measured on the dispatches themselves, and keeps
at most two of them in flight (one when a single step takes longer): the host
regains control, and can stop with a checkpoint, within seconds on any network.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

import jax

DISPATCH_SECONDS = 2.0


class Pacer:
    """The dispatches in flight and the measured seconds per step.

    The first dispatch compiles, so it runs one step and is not timed; the next
    runs one step to measure the pace; from then on a dispatch holds about
    `seconds` of steps. `on_first_finish` is called once, when the first
    dispatch has finished.
    """

    def __init__(self, seconds: float | None = None, on_first_finish: Callable[[], None] | None = None):
        self.seconds = DISPATCH_SECONDS if seconds is None else seconds
        self.pace: float | None = None   # seconds per step
        self.finished: int | None = None  # the step the newest finished dispatch ended at
        self._flight: collections.deque = collections.deque()  # (end step, steps, dispatched at, handle)
        self._last_done = 0.0
        self._on_first_finish = on_first_finish

    def steps(self, left: int) -> int:
        """How many of the `left` steps of the chunk the next dispatch runs."""
        if self.pace is None:
            return min(left, 1)
        return max(1, min(left, int(self.seconds / self.pace)))

    def dispatched(self, end: int, steps: int, handle: Any) -> None:
        """A dispatch of `steps` steps ending at step `end` was issued; `handle` is ready when it has run."""
        self._flight.append((end, steps, time.perf_counter(), handle))

    def make_room(self) -> None:
        """Wait until another dispatch may be issued: fewer than two in flight, or none when one step takes
        longer than a dispatch should (or the pace is not known yet)."""
        limit = 2 if self.pace is not None and self.pace <= self.seconds else 1
        while len(self._flight) >= limit:
            self._finish_oldest()

    def wait(self, up_to: int | None = None) -> None:
        """Wait for every dispatch in flight (those ending at or before step `up_to`, if given)."""
        while self._flight and (up_to is None or self._flight[0][0] <= up_to):
            self._finish_oldest()

    def seconds_to(self, step: int) -> float | None:
        """Roughly how long until the dispatches in flight reach `step`; None while the pace is unknown."""
        if self.pace is None or self.finished is None:
            return None
        return max(0, step - self.finished) * self.pace

    def _finish_oldest(self) -> None:
        end, steps, dispatched_at, handle = self._flight.popleft()
        jax.block_until_ready(handle)
        now = time.perf_counter()
        if self.finished is not None:  # the first dispatch's time is mostly compilation
            # The device ran this dispatch from when it was issued or the one before it ended, whichever is later.
            self.pace = (now - max(dispatched_at, self._last_done)) / steps
        first = self.finished is None
        self._last_done, self.finished = now, end
        if first and self._on_first_finish is not None:
            self._on_first_finish()
