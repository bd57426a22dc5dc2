"""Throughput across K processes pinned to one core each (parallel = data / pipeline), each parallel row beside
its own one-process baseline.

    python scripts/bench_processes.py --processes 2 [--modes backprop,dni,cdni,dgl,ddg] [--width 2048]
        [--out results/bench/processes.md]
    python scripts/bench_processes.py --processes 2 --exp text_transformer --batch 32 --modes backprop,cdni,dgl,dni

Every device is its own process pinned to one core (taskset) with one CPU device, joined by jax.distributed over
localhost with gloo collectives (--transport mpi: JAX's MPI collectives, the processes started by one mpiexec);
the baseline is process 0 alone running parallel=none on its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from sgrad.devices.processes import (leave_mpi_world, one_device_env, start_processes,
                                    warm_collectives)

from parallel_rows import add_row_arguments, device_rows, worker_args, write_table


def worker(args) -> None:
    """One of the pinned processes: a single CPU device, collectives over gloo or MPI."""
    jax.config.update("jax_cpu_collectives_implementation", args.transport)
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes,
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    warm_collectives()
    device_rows(args.processes, args.modes.split(","), args.layers, int(args.batch), args.chunk, args.chunks,
                kinds=("data", "pipeline"), width=args.width, replicas=args.replicas, exp=args.exp, wait=args.wait)
    leave_mpi_world()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2, help="K processes, one core each")
    add_row_arguments(ap)
    ap.add_argument("--out", type=Path, default=Path("results/bench/processes.md"))
    ap.add_argument("--transport", choices=("gloo", "mpi"), default="gloo",
                    help="JAX's CPU collectives: gloo (TCP), or mpi (an mpiexec on PATH and MPITRAMPOLINE_LIB: "
                         "docs/parallelism.md, Transport)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    k, cores = args.processes, sorted(os.sched_getaffinity(0))
    if k > len(cores):
        sys.exit(f"--processes {k}: only {len(cores)} cores to pin to (one process per core)")
    env = one_device_env({**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": args.transport})
    port = str(20000 + os.getpid() % 20000)
    command = [sys.executable, __file__, "--worker", "--processes", str(k), "--port", port,
               "--transport", args.transport, *worker_args(args)]
    try:
        procs = start_processes([command] * k, env, cores, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except RuntimeError as e:
        sys.exit(f"bench_processes.py: {e}")
    outs = [p.communicate() for p in procs]  # process 0's output first (under mpiexec, every process's)
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            sys.exit(f"{k}-process worker failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in outs[0][0].splitlines() if line.startswith("{")]
    print(outs[0][0], end="", flush=True)
    write_table(
        args, "bench_processes.py", "Throughput across processes, one core each (parallel = none / data / pipeline)",
        "every device is its own process pinned to one core (`taskset`), joined by `jax.distributed.initialize` "
        f"over localhost with {'gloo (TCP)' if args.transport == 'gloo' else 'MPI (MPICH through MPItrampoline)'} "
        "CPU collectives, so devices do not share cores; `none` is process 0 alone "
        "with the same network on its own device, timed chunk for chunk beside each parallel row.",
        f"The layers are grouped into {k} modules of balanced cost measured on one core (`model.partition=profiled "
        f"model.modules={k}`).", rows)


if __name__ == "__main__":
    main()
