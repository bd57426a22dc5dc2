"""Run one sgrad-train run as N processes on this machine, joined by jax.distributed: the rehearsal for a
cluster, where SLURM (hydra/launcher=submitit_slurm) or mpirun starts the processes instead.

    python scripts/launch_local.py 2 +exp=mnist_dni parallel=data [any sgrad-train override]

Each process gets `distributed=true` and the coordinator, process count and its index through JAX's own
variables (JAX_COORDINATOR_ADDRESS, and JAX_NUM_PROCESSES / JAX_PROCESS_ID, which sgrad-train passes to
jax.distributed.initialize), one CPU device, gloo collectives (or those JAX_CPU_COLLECTIVES_IMPLEMENTATION
names: with mpi, one mpiexec starts them as one MPI world), and a core of its own when there are enough.
Process 0 writes the run dir and the log; the exit status is the first non-zero one.
SIGTERM to this launcher (a scheduler's preemption) goes on to every process, which stop together at one step with
a checkpoint; Ctrl-C reaches them from the terminal directly, so the launcher only waits for them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from sgrad.devices.processes import one_device_env, start_processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 2:
        sys.exit("usage: python scripts/launch_local.py N [sgrad-train overrides...]   (N >= 2 processes)")
    n, overrides = int(sys.argv[1]), sys.argv[2:]
    cores = sorted(os.sched_getaffinity(0))
    base = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{free_port()}", "JAX_NUM_PROCESSES": str(n),
            "JAX_PLATFORMS": "cpu",
            # gloo unless the environment names another (JAX's "mpi" needs MPITRAMPOLINE_LIB: docs/parallelism.md)
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")}
    base = one_device_env(base)
    print(f"launch_local: {n} processes of sgrad-train {' '.join(overrides)} distributed=true", flush=True)
    try:
        procs = start_processes([[sys.executable, "-m", "sgrad.cli", *overrides, "distributed=true"]] * n, base,
                                cores[:n] if n <= len(cores) else None)
    except RuntimeError as e:
        sys.exit(f"launch_local: {e}")
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    codes = [p.wait() for p in procs]
    sys.exit(next((c for c in codes if c), 0))


if __name__ == "__main__":
    main()
