"""Throughput across N CPU devices of one process (parallel = none / data / pipeline), each parallel row beside its
own one-device baseline.

    python scripts/bench_devices.py --devices 1,2,4 [--modes backprop,cdni,dgl,ddg] [--out results/bench/devices.md]

One subprocess per device count N, started with N CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`); they share the machine's cores. For devices that do not
share cores, scripts/bench_processes.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sgrad.devices.processes import device_count_env
from parallel_rows import add_row_arguments, device_rows, worker_args, write_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,2,4", help="comma list of device counts")
    add_row_arguments(ap)
    ap.add_argument("--out", type=Path, default=Path("results/bench/devices.md"))
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        device_rows(args.worker, args.modes.split(","), args.layers, int(args.batch), args.chunk, args.chunks,
                    width=args.width, replicas=args.replicas, exp=args.exp, wait=args.wait)
        return
    rows = []
    for n in map(int, args.devices.split(",")):
        env = {**device_count_env(n), "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        res = subprocess.run([sys.executable, __file__, "--worker", str(n), *worker_args(args)], env=env,
                             capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{n}-device worker failed:\n{res.stderr[-3000:]}")
        rows += [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        print(res.stdout, end="", flush=True)
    write_table(
        args, "bench_devices.py", "Throughput across devices (parallel = none / data / pipeline)",
        "N CPU devices from `XLA_FLAGS=--xla_force_host_platform_device_count=N`. XLA:CPU runs every device's "
        "kernels on one shared intra-op thread pool sized to the machine (the old "
        "`--xla_cpu_multi_thread_eigen=false` no longer limits it), so one device already uses all cores and N "
        "devices share them.",
        "With N devices the layers are grouped into N modules of balanced measured cost (`model.partition=profiled`), "
        "and `none` runs that same network on one of the devices.", rows)


if __name__ == "__main__":
    main()
