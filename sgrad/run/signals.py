"""SIGTERM/SIGINT during a run: the first asks the loop to checkpoint and stop; a second exits at once.

Python runs signal handlers only between bytecodes of the main thread, so a
process blocked in a collective or a file lock would never see its handler. A
watcher thread reads the signal numbers from the wakeup fd instead and exits
the process on the second signal, whatever the main thread is doing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Within the block, `received` is the first stop signal's number (0: none). `plan`, if set, says where the
    run will stop; it is printed as soon as the first signal arrives, not when the loop gets to it."""

    def __init__(self):
        self.received = 0
        self.plan = None
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
                    if self._count == 1 and self.plan is not None:
                        name = signal.Signals(signum).name
                        print(f"\nsgrad-train: {name}: {self.plan()}; a second {name} exits at once, without "
                              "a checkpoint", file=sys.stderr, flush=True)
                    if self._count >= 2:
                        print(f"sgrad-train: second {signal.Signals(signum).name}: exiting now, without a checkpoint",
                              file=sys.stderr, flush=True)
                        os._exit(128 + signum)

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
