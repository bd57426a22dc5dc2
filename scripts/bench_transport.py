"""How fast do two processes on this machine exchange what sgrad sends? gloo (what jax.distributed uses on CPU, and
sgrad's multi-process runs today) against MPI (MPICH's shared-memory transport through mpi4jax), side by side.

    python scripts/bench_transport.py [--repeats 3] [--mpi-python PATH] [--out results/bench/transport.md]

Two processes pinned to one core each. For each size, inside one compiled loop of `--loop` collectives (so
dispatch is not timed), the median of 5 calls, per collective:
  all-reduce  a float32 vector summed over both processes (data parallelism's one collective per step);
  exchange    each process sends its vector to the other and receives the other's (a pipeline tick's messages).
gloo: `jax.distributed` processes, `psum` / `ppermute` in `shard_map`. MPI: `mpirun -n 2 -bind-to core`,
`mpi4jax.allreduce` / `mpi4jax.sendrecv` in `jax.jit`. Launches alternate (gloo, MPI, gloo, MPI, ...) and each
cell is the median over `--repeats` launches, so the VM's drift hits both alike.

MPI needs mpi4jax, which builds from source against an MPI (no wheel on PyPI): see docs/parallelism.md
("Transport"). Without it (`--mpi-python` names a Python that has it) only gloo is measured, and the file says so.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sgrad.devices.processes import one_device_env

ROOT = Path(__file__).resolve().parent.parent


def fcn_floats(width: int, layers: int, classes: int = 10, inputs: int = 784) -> int:
    """Parameters of the paper's FCN (linear layers with biases, batch norm's scale and shift per hidden layer)."""
    hidden = layers - 1
    return inputs * width + (hidden - 1) * width * width + width * classes + hidden * 3 * width + classes


# (what sgrad sends, float32 count per process)
SIZES = (
    ("pipeline message, FCN width 256, batch 1024 (1024 × 258)", 1024 * 258),
    ("data-parallel gradients, FCN 8×256", fcn_floats(256, 8)),
    ("pipeline message, FCN width 2048, batch 1024 (1024 × 2050)", 1024 * 2050),
    ("data-parallel gradients, FCN 4×2048", fcn_floats(2048, 4)),
)


def _median_seconds(fn, x, loop: int) -> float:
    fn(x).block_until_ready()  # compile
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / loop


def gloo_worker(loop: int) -> None:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
    mesh = jax.make_mesh((2,), ("p",))
    spec = NamedSharding(mesh, P("p"))

    def looped(collective):
        def body(x):
            return jax.lax.fori_loop(0, loop, lambda _, v: collective(v) * 0.5, x)
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("p"), out_specs=P("p"), check_vma=False))

    allreduce = looped(lambda v: jax.lax.psum(v, "p"))
    exchange = looped(lambda v: jax.lax.ppermute(v, "p", [(0, 1), (1, 0)]) * 2.0)
    for label, n in SIZES:
        x = jax.make_array_from_process_local_data(spec, jnp.ones(n, jnp.float32), (2 * n,))
        row = {"transport": "gloo", "size": label, "bytes": 4 * n,
               "allreduce": _median_seconds(allreduce, x, loop), "exchange": _median_seconds(exchange, x, loop)}
        if jax.process_index() == 0:
            print(json.dumps(row), flush=True)


def mpi_worker(loop: int) -> None:
    import jax
    import jax.numpy as jnp
    import mpi4jax
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    other = 1 - comm.Get_rank()

    def looped(collective):
        return jax.jit(lambda x: jax.lax.fori_loop(0, loop, lambda _, v: collective(v) * 0.5, x))

    allreduce = looped(lambda v: mpi4jax.allreduce(v, op=MPI.SUM, comm=comm))
    exchange = looped(lambda v: mpi4jax.sendrecv(v, v, source=other, dest=other, comm=comm) * 2.0)
    for label, n in SIZES:
        x = jnp.ones(n, jnp.float32)
        row = {"transport": "mpi", "size": label, "bytes": 4 * n,
               "allreduce": _median_seconds(allreduce, x, loop), "exchange": _median_seconds(exchange, x, loop)}
        if comm.Get_rank() == 0:
            print(json.dumps(row), flush=True)


def _rows(res: subprocess.CompletedProcess, what: str) -> list[dict]:
    if res.returncode:
        sys.exit(f"bench_transport: the {what} processes failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def run_gloo(loop: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    env = one_device_env(env)
    cores = sorted(os.sched_getaffinity(0))
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)]), sys.executable, __file__,
                               "--worker", "gloo", "--loop", str(loop)],
                              env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate() for p in procs]
    return _rows(subprocess.CompletedProcess([], procs[0].returncode or procs[1].returncode, *outs[0]), "gloo")


def run_mpi(python: str, loop: int) -> list[dict]:
    mpirun = Path(python).with_name("mpirun")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env = one_device_env(env)
    res = subprocess.run([str(mpirun), "-n", "2", "-bind-to", "core", python, __file__, "--worker", "mpi",
                          "--loop", str(loop)], env=env, capture_output=True, text=True)
    return _rows(res, "MPI")


def has_mpi4jax(python: str) -> bool:
    return subprocess.run([python, "-c", "import mpi4jax"], capture_output=True).returncode == 0 and \
        Path(python).with_name("mpirun").exists()


def write(rows: list[dict], out: Path, argv: list[str], mpi_note: str) -> None:
    from sgrad.run.provenance import git_commit, machine

    m = machine()
    cell = lambda t, size, kind: statistics.median(r[kind] for r in rows if r["transport"] == t and r["size"] == size)
    mpi = any(r["transport"] == "mpi" for r in rows)
    launches = len([r for r in rows if r["transport"] == "gloo"]) // len(SIZES)
    lines = ["# Transport between two processes: gloo against MPI at the sizes sgrad sends", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), jax {m['jax']}; two processes pinned to one core each.",
             f"Commit: {git_commit()}.", f"Command: `python scripts/bench_transport.py {' '.join(argv)}`.", "",
             "Per collective, inside one compiled loop, median of 5 calls in each launch, then the median over "
             f"{launches} launches of each transport, launches alternating. all-reduce: the vector summed over both "
             "processes; exchange: each process sends its vector to the other and receives the other's. gloo: "
             "jax.distributed, psum / ppermute in shard_map; MPI: mpirun -bind-to core, mpi4jax.allreduce / "
             "sendrecv in jax.jit.", "", mpi_note, ""]
    head = "| what sgrad sends | MB | gloo all-reduce (ms) | gloo exchange (ms) |"
    rule = "|---|---|---|---|"
    if mpi:
        head += " MPI all-reduce (ms) | MPI exchange (ms) | all-reduce gloo / MPI | exchange gloo / MPI |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    for label, n in SIZES:
        g_ar, g_ex = cell("gloo", label, "allreduce"), cell("gloo", label, "exchange")
        line = f"| {label} | {4 * n / 1e6:.2f} | {1e3 * g_ar:.2f} | {1e3 * g_ex:.2f} |"
        if mpi:
            m_ar, m_ex = cell("mpi", label, "allreduce"), cell("mpi", label, "exchange")
            line += f" {1e3 * m_ar:.2f} | {1e3 * m_ex:.2f} | {g_ar / m_ar:.1f} | {g_ex / m_ex:.1f} |"
        lines.append(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"bench_transport: wrote {out}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop", type=int, default=10)
    ap.add_argument("--mpi-python", default=sys.executable, help="a Python with mpi4jax (and its mpirun beside it)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/transport.md"))
    ap.add_argument("--worker", choices=("gloo", "mpi"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        (gloo_worker if args.worker == "gloo" else mpi_worker)(args.loop)
        return
    mpi = has_mpi4jax(args.mpi_python)
    note = ("MPI: MPICH from PyPI's `mpich` package, mpi4jax built from its sdist against it (docs/parallelism.md)."
            if mpi else f"MPI not measured: {args.mpi_python} has no mpi4jax (or no mpirun beside it).")
    if not mpi:
        print(f"bench_transport: {note}", flush=True)
    rows = []
    for rep in range(args.repeats):
        rows += run_gloo(args.loop)
        if mpi:
            rows += run_mpi(args.mpi_python, args.loop)
        print(f"bench_transport: launch {rep + 1}/{args.repeats} done", flush=True)
    write(rows, args.out, sys.argv[1:], note)


if __name__ == "__main__":
    main()
