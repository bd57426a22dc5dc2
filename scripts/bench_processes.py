"""Throughput across K processes pinned to one core each (parallel = data / pipeline), each parallel row beside
its own one-process baseline.

    python scripts/bench_processes.py --processes 2 [--modes backprop,dni,cdni,dgl,ddg] [--width 2048]
        [--out results/bench/processes.md]
    python scripts/bench_processes.py --processes 2 --exp text_transformer --batch 32 --modes backprop,cdni,dgl,dni

Every device is its own process pinned to one core (taskset) with one CPU device, joined by jax.distributed over
localhost with gloo collectives; the baseline is process 0 alone running parallel=none on its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from sgrad.devices.processes import one_device_env

from parallel_rows import add_row_arguments, device_rows, worker_args, write_table


def worker(args) -> None:
    """One of the pinned processes: a single CPU device, collectives over gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes, process_id=args.worker)
    device_rows(args.processes, args.modes.split(","), args.layers, int(args.batch), args.chunk, args.chunks,
                kinds=("data", "pipeline"), width=args.width, replicas=args.replicas, exp=args.exp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2, help="K processes, one core each")
    add_row_arguments(ap)
    ap.add_argument("--out", type=Path, default=Path("results/bench/processes.md"))
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args)
        return
    k, cores = args.processes, sorted(os.sched_getaffinity(0))
    if k > len(cores):
        sys.exit(f"--processes {k}: only {len(cores)} cores to pin to (one process per core)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env = one_device_env(env)
    port = str(20000 + os.getpid() % 20000)
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i]), sys.executable, __file__, "--worker", str(i),
                               "--processes", str(k), "--port", port, *worker_args(args)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(k)]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            sys.exit(f"{k}-process worker failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in outs[0][0].splitlines() if line.startswith("{")]
    print(outs[0][0], end="", flush=True)
    write_table(
        args, "bench_processes.py", "Throughput across processes, one core each (parallel = none / data / pipeline)",
        "every device is its own process pinned to one core (`taskset`), joined by `jax.distributed.initialize` "
        "over localhost with gloo CPU collectives, so devices do not share cores; `none` is process 0 alone "
        "with the same network on its own device, timed chunk for chunk beside each parallel row.",
        f"The layers are grouped into {k} modules of balanced cost measured on one core (`model.partition=profiled "
        f"model.modules={k}`).", rows)


if __name__ == "__main__":
    main()
