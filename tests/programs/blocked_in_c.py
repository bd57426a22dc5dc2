"""A run that is stuck (here: asleep in C) when a stop signal arrives: the first SIGTERM only sets the flag,
the second exits at once. Prints 'ready' once the handlers are installed."""

import time

from sgrad.run.signals import StopRequest

with StopRequest() as stop:
    print("ready", flush=True)
    time.sleep(120)  # stands for a collective or a file lock that never returns
print("woke up", stop.received, flush=True)
