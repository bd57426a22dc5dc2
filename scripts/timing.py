"""How sgrad's benchmarks measure: the machine's matmul peak, a compiled chunk of steps (alone, or side by side
with its baseline), one collective, and XLA's own analyses of a compiled program (FLOPs, memory per device).

Shared by scripts/bench.py (one device), scripts/parallel_rows.py (several devices or processes) and the
profile_* scripts.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

MiB = 2 ** 20


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
    """Achieved float32 FLOP/s of an n x n matmul chain: the reference 'peak' of this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32) / np.sqrt(n)

    @jax.jit
    def chain(a):
        return jax.lax.fori_loop(0, repeats, lambda _, x: x @ b, a)
    chain(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        chain(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * repeats / best


def chunk_seconds(run_chunk, state, xs, ys, idx, chunks: int) -> float:
    """Seconds for `chunks` chunks, as `chunks` x the median chunk, after a warm-up chunk that compiles.

    The median, because this kind of shared VM slows down for seconds at a time; each chunk is waited on,
    one sync per chunk of steps.
    """
    n_steps = np.int32(len(idx))
    state, m = run_chunk(state, xs, ys, idx, n_steps)
    jax.block_until_ready(m)
    times = []
    for _ in range(chunks):
        t = time.perf_counter()
        state, m = run_chunk(state, xs, ys, idx, n_steps)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * chunks


def side_by_side(parallel: list, baseline: list | None, chunks: int) -> tuple[float, float | None]:
    """Median seconds per chunk of a parallel runner and of its one-device baseline, their chunks alternating
    (baseline, parallel, baseline, parallel, ...) after two warm-up chunks of each, so that the machine's drift
    falls on both alike. `parallel` / `baseline` are [run, state, xs, ys, idx]; with several processes only
    process 0 runs the baseline (on its own device) while the others wait."""
    sync = (lambda: multihost_utils.sync_global_devices("bench")) if jax.process_count() > 1 else (lambda: None)

    def chunk(box) -> float:
        t = time.perf_counter()
        box[1], m = box[0](box[1], *box[2:], np.int32(len(box[4])))
        jax.block_until_ready((box[1], m))
        return time.perf_counter() - t
    for box in (baseline, parallel):
        if box is not None:
            chunk(box)  # compiles
            chunk(box)  # the state now lives where the runner leaves it: a first call with it may compile again
        sync()
    times_b, times_p = [], []
    for _ in range(chunks):
        if baseline is not None:
            times_b.append(chunk(baseline))
        sync()
        times_p.append(chunk(parallel))
        sync()
    return float(np.median(times_p)), float(np.median(times_b)) if times_b else None


def collective_seconds(size: int, devices, repeats: int = 5, permute: bool = False, loop: int | None = None,
                       shapes: list[tuple[int, ...]] | None = None) -> float:
    """Seconds of one mean of f32[size] over `devices` as the data-parallel step takes it
    (sgrad.core.step.axis_mean), or with `permute` one ring ppermute, paid as a compiled loop pays it: `loop`
    collectives in one shard_map program (median of `repeats`), so a call's dispatch is not counted. By default
    `loop` grows as the message shrinks (10 at 4 M floats and up, 200 at 20 K floats and below): a loop of ten
    small messages lasts about a millisecond, within this VM's scheduling noise (one message size was timed
    at 0.15 and at 2 ms by two rows of one run).

    `shapes`: the leaves the step averages (its gradients and statistics); the mean is then the step's own
    sgrad.core.step.bucket_mean of them, the copies into one flat buffer and back out included (at the 4x2048
    FCN's 10 M floats they cost about half as much again as the swap itself, two devices in one process)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from sgrad.core.step import axis_mean, bucket_mean
    mesh = jax.make_mesh((len(devices),), ("d",), devices=devices)
    n = len(devices)
    loop = loop or int(np.clip(2**22 // max(size, 1), 10, 200))
    if shapes is not None:
        # Each device's block of a leaf is the leaf itself (a leading axis of one per device).
        collective = lambda tree: bucket_mean(tree, "d")
        a = [jax.device_put(jnp.ones((n, *s), jnp.float32), NamedSharding(mesh, P("d"))) for s in shapes]
    else:
        collective = ((lambda a: jax.lax.ppermute(a, "d", [(j, (j + 1) % n) for j in range(n)])) if permute else
                      (lambda a: axis_mean(a, "d")))
        a = jax.device_put(jnp.ones((n * size,), jnp.float32), NamedSharding(mesh, P("d")))
    many = lambda a: jax.lax.fori_loop(0, loop, lambda _, a: collective(a), a)
    reduce = jax.jit(jax.shard_map(many, mesh=mesh, in_specs=P("d"), out_specs=P("d"), check_vma=False))
    jax.block_until_ready(reduce(a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(reduce(a))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / loop


def wait_seconds(devices, step_sec: float, repeats: int = 3) -> float:
    """Seconds a parallel step of `step_sec` pays for its collective beyond what the collective costs timed back
    to back (collective_seconds): devices that compute `step_sec` and then exchange one float wait for the
    slowest of them and for the message's latency after compute. Measured on a stand-in step (a chain of
    [256, 512] x [512, 512] matmuls of about `step_sec`) with and without a one-float swap after each, less
    that swap timed back to back: positive where the devices drift apart while computing (about 6 % of a
    0.6 s step here, results/bench/crossover.md), negative where a back-to-back swap costs more than one after
    compute (gloo's small messages)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((len(devices),), ("d",), devices=devices)
    n = len(devices)
    ring = [(j, (j + 1) % n) for j in range(n)]
    put = lambda a: jax.device_put(a, NamedSharding(mesh, P("d")))
    x, w = put(jnp.ones((n * 256, 512), jnp.float32)), put(jnp.full((n * 512, 512), 1e-3, jnp.float32))
    one = put(jnp.zeros((n,), jnp.float32))

    def program(swap: bool):
        def steps(x, w, one, reps, count):
            def step(_, carry):
                x, one = carry
                x = jax.lax.fori_loop(0, reps[0], lambda _, x: jnp.tanh(x @ w), x)
                return x, (jax.lax.ppermute(one + x[0, 0], "d", ring) if swap else one + x[0, 0])
            return jax.lax.fori_loop(0, count[0], step, (x, one))
        return jax.jit(jax.shard_map(steps, mesh=mesh, in_specs=P("d"), out_specs=P("d"), check_vma=False))

    def seconds(run, reps: int, count: int) -> float:
        args = (x, w, one, put(jnp.full((n,), reps, jnp.int32)), put(jnp.full((n,), count, jnp.int32)))
        t = time.perf_counter()
        jax.block_until_ready(run(*args))
        return time.perf_counter() - t

    alone, swapped = program(False), program(True)
    seconds(alone, 1, 1), seconds(swapped, 1, 1)  # compiles
    per_rep = seconds(alone, 20, 1) / 20
    if jax.process_count() > 1:  # every process must run the same stand-in step
        per_rep = float(multihost_utils.broadcast_one_to_all(np.float32(per_rep)))
    reps = max(1, round(step_sec / per_rep))
    count = int(np.clip(round(1.0 / max(step_sec, 1e-4)), 3, 200))  # about a second of steps a loop
    gaps = []
    for _ in range(repeats):
        gaps.append((seconds(swapped, reps, count) - seconds(alone, reps, count)) / count)
    return float(np.median(gaps)) - collective_seconds(1, devices, permute=True)


def flops(compiled) -> float:
    """FLOPs of one call of a compiled program, from XLA's cost analysis (0 where the backend gives none). XLA
    counts a loop body once: compile one step, not a chunk, to count a step."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def memory(compiled) -> dict[str, float]:
    """XLA's memory analysis of a compiled program, per device, in MiB: `peak_mib` (its arguments, outputs and
    working buffers at the worst point) and `temp_mib` (the working buffers alone: the activations a step keeps
    for its backward pass live there)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    return {"peak_mib": stats.peak_memory_in_bytes / MiB, "temp_mib": stats.temp_size_in_bytes / MiB}
