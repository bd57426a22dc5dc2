"""SIGTERM/SIGINT during a run: the first asks the loop to checkpoint and stop; a second exits at once.

Python runs signal handlers only between bytecodes of the main thread, so a
process blocked in a compilation, a collective or a file lock would not see its
handler. A watcher thread reads the signal numbers from the wakeup fd instead:
it records the request, says where the run will stop, exits at once while
nothing has been trained yet (a checkpoint there would hold nothing new), and
exits on the second signal, whatever the main thread is doing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Whether a stop signal before the first step may end the process (sgrad-train's, not a notebook kernel's).
_OWNS_PROCESS = False


def own_process() -> None:
    """Called by sgrad-train: this process is the run's, so a stop signal that comes before anything was trained
    exits it at once (see StopRequest.early)."""
    global _OWNS_PROCESS
    _OWNS_PROCESS = True


class StopRequest:
    """Within the block, `received` is the first stop signal's number (0: none). `plan`, if set, says where the
    run will stop; it is printed as soon as the first signal arrives, not when the loop gets to it. `early`, if
    set in a process sgrad-train owns (own_process), is called instead at the first signal (with its number),
    says in one line what was kept, and the process exits at once. Reading `received` and fixing what `plan` says happen under `lock`, so what is
    printed is where the run stops."""

    def __init__(self):
        self.received = 0
        self.plan = None
        self.early = None
        self.lock = threading.Lock()
        self._previous: dict = {}
        self._wakeup = None
        self._count = 0

    def _handle(self, signum, frame):
        if not self.received:
            self.received = signum

    def _watch(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(16)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    self._count += 1
                    if self._count == 1:
                        self._first(signum)
                    if self._count >= 2:
                        print(f"sgrad-train: second {signal.Signals(signum).name}: exiting now, without a checkpoint",
                              file=sys.stderr, flush=True)
                        os._exit(128 + signum)

    def exit_if_early(self, signum: int) -> None:
        """While `early` is set: say what was kept, in one line, and exit. The caller holds `lock`."""
        if self.early is not None and _OWNS_PROCESS:
            print(f"\nsgrad-train: {signal.Signals(signum).name} before the first training step finished: exiting "
                  f"now; {self.early(signum)}", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    def _first(self, signum: int) -> None:
        name = signal.Signals(signum).name
        with self.lock:
            if not self.received:
                self.received = signum
            self.exit_if_early(signum)
            if self.plan is not None:
                print(f"\nsgrad-train: {name}: {self.plan()}; a second {name} exits at once, without a checkpoint",
                      file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._wakeup = (reader, writer, signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False))
        threading.Thread(target=self._watch, args=(reader,), daemon=True, name="sgrad-signals").start()
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            reader, writer, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            writer.close()
            reader.close()
