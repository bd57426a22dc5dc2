"""Training throughput per mode: on one device next to the measured matmul peak, or across devices.

    python scripts/bench.py [--models fcn3,fcn4,fcn6,cnn4] [--batch 64,256] [--out results/bench/single_device.md]
    python scripts/bench.py --devices 1,2,4 [--out results/bench/devices.md]
    python scripts/bench.py --processes 2 [--out results/bench/processes.md]

`--devices` runs one process per device count N with N CPU devices and measures
parallel=none (one of those devices), data and pipeline on the same network.
`--processes K` gives every device a core of its own: K processes, each pinned to
one core (taskset) with one CPU device, joined by jax.distributed over localhost
with gloo collectives; the baseline is one such process running parallel=none.

Times the same compiled chunk of steps that `sgrad-train` runs (data on the
device, batches gathered inside jit), after a warm-up chunk, and reads the FLOPs
per chunk from XLA's cost analysis. Writes a markdown table with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from omegaconf import OmegaConf

from sgrad.config.compose import compose_config
from sgrad.models.network import activation_shapes, init_variables
from sgrad.run.build import build_network, build_train_optimizer, update_settings
from sgrad.run.provenance import git_commit, machine
from sgrad.core.step import init_state, make_train_step
from sgrad.modes import RULES
from sgrad.devices import conv_library
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.devices.parallel import make_runner

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


def paper_cfg(model: str, layers: int, mode: str, batch: int, width: int | None = None):
    """The paper's settings for one row of the table, composed from configs/mode/*.yaml as `sgrad-train` does;
    `dni_linear` is DNI with a linear SG model (a decoupled step that should cost little more than backprop).
    `width`: the FCN's hidden width (the paper's 256 by default)."""
    linear = ["sg.hidden_layers=0"] if mode == "dni_linear" else []
    wide = [f"model.width={width}"] if width else []
    return compose_config(f"mode={mode.removesuffix('_linear')}", f"model.name={model}", f"model.layers={layers}",
                          f"trainer.batch_size={batch}", "optim.schedule=constant", "sg.optim.schedule=constant",
                          *linear, *wide)


def exp_cfg(exp: str, mode: str):
    """A preset composed by Hydra exactly as `sgrad-train +exp=EXP mode=MODE` composes it."""
    return compose_config(f"+exp={exp}", f"mode={mode}")


def setup(cfg):
    """Network, random uint8 data on the device, initial state: what every benchmark row starts from."""
    model = str(cfg.model.name)
    batch = cfg.trainer.batch_size
    shape = (32, 32, 3) if model == "cnn" else (28, 28, 1)
    net = build_network(cfg, shape, 10)
    n = 8192
    rng = np.random.default_rng(0)
    xs = jax.device_put(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    ys = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
    mean, std = jnp.full((shape[-1],), 0.5), jnp.full((shape[-1],), 0.25)
    params, stats = init_variables(net, jax.random.key(0), preprocess(xs[:batch], mean, std))
    tx = build_train_optimizer(cfg, 10_000)
    idx = rng.integers(0, n, (cfg.trainer.log_every, batch)).astype(np.int32)
    state = init_state(net, params, stats, tx, preprocess(xs[:batch], mean, std), ys[:batch])
    return net, tx, state, shape, xs, ys, idx, (mean, std)


def _time(run_chunk, state, xs, ys, idx, chunks: int) -> float:
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


def _time_side_by_side(parallel: list, baseline: list | None, chunks: int) -> tuple[float, float | None]:
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


def _label(cfg) -> str:
    """The row's mode: `dni_linear` for DNI with a linear SG model (see paper_cfg)."""
    mode = str(cfg.mode)
    return mode + ("_linear" if mode == "dni" and cfg.sg.hidden_layers == 0 else "")


def bench_one(cfg, chunk: int, chunks: int) -> dict:
    cfg = OmegaConf.merge(cfg, {"trainer": {"log_every": chunk}})
    model, label = str(cfg.model.name), _label(cfg)
    layers, batch = cfg.model.layers, cfg.trainer.batch_size
    net, tx, state, _, xs, ys, idx, (mean, std) = setup(cfg)
    train_step = make_train_step(net, tx, update_settings(cfg))
    # XLA counts a loop body once, so the FLOPs come from one step (as the loop runs it) compiled on its own.
    x0 = preprocess(xs[:batch], mean, std)
    cost = jax.jit(partial(train_step, diagnostics=False)).lower(state, x0, ys[:batch]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) * chunk if cost else 0.0
    runner = make_chunk_runner(train_step, mean, std)
    elapsed = _time(runner, state, xs, ys, jax.device_put(idx), chunks)
    steps = chunk * chunks
    return {"model": f"{model}{layers}", "mode": label, "batch": batch, "steps_per_sec": steps / elapsed,
            "examples_per_sec": steps * batch / elapsed, "flops_per_sec": flops * chunks / elapsed}


def peak_steps(row: dict, peak: float) -> float:
    """Steps/s if every FLOP of the step ran at `peak` FLOP/s: the roofline for this step on this machine."""
    return peak / (row["flops_per_sec"] / row["steps_per_sec"])


def bench_parallel(cfg, parallel: str, devices: int, chunk: int, chunks: int, replicas: int = 1) -> dict:
    """Examples/s of `sgrad-train parallel=... [replicas=R]` on the first `devices` devices (ticks count as
    steps)."""
    cfg = OmegaConf.merge(cfg, {"trainer": {"log_every": chunk}})
    net, tx, state, shape, xs, ys, idx, (mean, std) = setup(cfg)
    if parallel == "data":
        from jax.flatten_util import ravel_pytree
        bucket = ravel_pytree((state.params, state.stats))[0].size  # before the runner donates the state
    baseline, alone = None, None
    if parallel != "none" and jax.process_index() == 0:
        alone = jax.tree.map(jnp.copy, state)  # for part_seconds: the runners donate their state
        # The same network from the same start (its own copy: the runners donate their state) on this process's
        # own device, timed chunk for chunk beside the parallel runner.
        b_run, b_state, _ = make_runner("none", net, tx, jax.tree.map(jnp.copy, state), update_settings(cfg),
                                        shape, cfg.trainer.batch_size, mean, std, jax.local_devices()[:1])
        baseline = [b_run, b_state, xs, ys, jax.device_put(idx, jax.local_devices()[0])]
    run, state, _ = make_runner(parallel, net, tx, state, update_settings(cfg), shape,
                                cfg.trainer.batch_size, mean, std, jax.devices()[:devices], replicas)
    if parallel == "none":
        per_chunk, base_chunk = _time(run, state, xs, ys, idx, chunks) / chunks, None
    else:
        per_chunk, base_chunk = _time_side_by_side([run, state, xs, ys, idx], baseline, chunks)
    examples = chunk * cfg.trainer.batch_size
    row = {"mode": _label(cfg), "parallel": parallel, "devices": devices, "modules": len(net.modules),
           "replicas": replicas, "width": int(cfg.model.width),
           "split": "+".join(str(len(m.layers)) for m in net.modules),
           "examples_per_sec": examples / per_chunk}
    if base_chunk is not None:
        row["baseline_examples_per_sec"] = examples / base_chunk
    if parallel == "data" and devices > 1:
        # The step's one collective (sgrad.core.step.bucket_mean), timed alone at its size: what the data
        # parallel step pays on top of half the compute, the bound the link sets.
        row["allreduce_sec"] = collective_seconds(bucket, jax.devices()[:devices])
        row["bucket_floats"] = int(bucket)
    if parallel == "pipeline" and devices > 1 and net.rule.schedule == "unlocked":
        # One message of a tick ([B, A+2], sgrad/devices/layout.py) timed alone; a tick sends one each way
        # (forward only when nothing goes back).
        width = max(int(np.prod(s)) for s in activation_shapes(net.modules, shape)[:-1])
        size = cfg.trainer.batch_size // replicas * (width + 2)
        row["message_sec"] = collective_seconds(size, jax.devices()[:devices], permute=True)
        row["messages"] = 2 if net.rule.sends_back else 1
    if jax.process_index() == 0 and devices > 1:
        row.update(part_seconds(cfg, parallel, devices, replicas, net, tx, alone, shape, xs, ys, idx, mean, std))
    return row


def part_seconds(cfg, parallel: str, devices: int, replicas: int, net, tx, state, shape, xs, ys, idx, mean,
                 std) -> dict:
    """What one device of a parallel row computes, timed alone on this process's device: the cost model's inputs
    (scripts/crossover.py). Data: the one-device step on its 1/N of the batch (`shard_sec`). Unlocked pipeline:
    each device's tick as the pipeline's program runs it, in a compiled loop of len(idx) ticks without the
    messages: its branch of the lax.switch over stages (unpack its padded state and messages, the mode's stage,
    repack; `stage_sec`, one per device), and the same tick outside any switch (`stage_alone_sec`): the
    difference is what XLA's conditional costs (it copies its operands and results, the stage's flat state)."""
    batch, device = cfg.trainer.batch_size, jax.local_devices()[:1]
    if parallel == "data":
        run = make_chunk_runner(make_train_step(net, tx, update_settings(cfg)), mean, std)
        part = idx[:, :batch // devices]
        return {"shard_sec": _time(run, state, xs, ys, jax.device_put(part, device[0]), 3) / (3 * len(part))}
    if parallel != "pipeline" or net.rule.schedule != "unlocked" or replicas > 1:
        return {}
    from sgrad.devices.layout import build_pipeline
    from sgrad.devices.pipeline import device_tick
    pipe, ps = build_pipeline(net, tx, state, shape, batch, update_settings(cfg).sg_scale, replicas)
    branches = [partial(device_tick, pipe, i, partial(preprocess, mean=mean, std=std)) for i in range(pipe.k)]
    idx = jax.device_put(idx[:, :pipe.batch])
    switched, alone = [], []
    for i in range(pipe.k):
        def ticks(carry, xs, ys, idx, n, me=None, i=i):
            def tick(j, carry):
                flat, fwd, bwd, past = carry
                args = (flat, fwd, bwd, past, xs, ys, idx[j], jnp.bool_(True), j)
                flat, out, back, _ = (branches[i](*args) if me is None else jax.lax.switch(me, branches, *args))
                # The messages the device sends stand in for those it would receive (same shapes).
                return flat, out, back, jnp.stack([out, past[0]])
            return jax.lax.fori_loop(0, n, tick, carry), jnp.zeros(())
        carry = lambda: (jnp.copy(ps.stage_KxS[i]), ps.fwd_KxBxA2[i], ps.bwd_KxBxA2[i], ps.past_Kx2xBxA2[i])
        run = jax.jit(ticks, donate_argnums=0)
        alone.append(_time(run, carry(), xs, ys, idx, 3) / (3 * len(idx)))
        run = jax.jit(lambda c, xs, ys, idx, n, i=i: ticks(c, xs, ys, idx, n, jnp.int32(i) + 0 * n),
                      donate_argnums=0)
        switched.append(_time(run, carry(), xs, ys, idx, 3) / (3 * len(idx)))
    return {"stage_sec": switched, "stage_alone_sec": alone}


def collective_seconds(size: int, devices, repeats: int = 5, permute: bool = False, loop: int = 10) -> float:
    """Seconds of one pmean (or with `permute`, one ring ppermute) of f32[size] over `devices`, paid as a
    compiled loop pays it: `loop` collectives in one shard_map program (median of `repeats`), so a call's
    dispatch is not counted."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    mesh = jax.make_mesh((len(devices),), ("d",), devices=devices)
    n = len(devices)
    collective = ((lambda a: jax.lax.ppermute(a, "d", [(j, (j + 1) % n) for j in range(n)])) if permute else
                  (lambda a: jax.lax.pmean(a, "d")))
    many = lambda a: jax.lax.fori_loop(0, loop, lambda _, a: collective(a), a)
    reduce = jax.jit(jax.shard_map(many, mesh=mesh, in_specs=P("d"), out_specs=P("d"), check_vma=False))
    a = jax.device_put(jnp.ones((len(devices) * size,), jnp.float32), NamedSharding(mesh, P("d")))
    jax.block_until_ready(reduce(a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(reduce(a))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / loop


def device_rows(n: int, modes: list[str], layers: int, batch: int, chunk: int, chunks: int,
                kinds: tuple[str, ...] = ("none", "data", "pipeline"), width: int | None = None,
                replicas: int = 1) -> list[dict]:
    """The network split into n modules: `none` on one device, `data` and `pipeline` on n (those of `kinds`).
    With replicas R > 1 also n/R modules: `none` on one device and a pipeline of them x R copies on n."""
    rows = []
    for mode in modes:
        accepts = RULES[mode].parallel  # e.g. ddg's stash holds whole minibatches: no data parallelism
        # Every parallel row carries its own one-device baseline, timed beside it (bench_parallel).
        plans = [(n, p, n, 1) for p in ("data", "pipeline") if n > 1 and p in accepts and p in kinds]
        plans = plans or [(n, "none", 1, 1)]
        if replicas > 1 and n % replicas == 0 and n // replicas >= 2 and "pipeline" in accepts \
                and "pipeline" in kinds and RULES[mode].schedule == "unlocked":
            plans += [(n // replicas, "pipeline", n, replicas)]
        for modules, parallel, d, r in plans:
            if parallel not in kinds:
                continue
            cfg = paper_cfg("fcn", layers, mode, batch, width)
            if modules > 1:  # modules of balanced measured cost (sgrad/models/partition.py), on one device or n
                cfg.model.partition, cfg.model.modules = "profiled", modules
            row = {**bench_parallel(cfg, parallel, d, chunk, chunks, r), "process_devices": n}
            new = [row]
            if "baseline_examples_per_sec" in row:
                measured_beside = ("allreduce_sec", "bucket_floats", "message_sec", "messages", "shard_sec",
                                   "stage_sec", "stage_alone_sec")
                new.insert(0, {**{k: v for k, v in row.items() if k not in measured_beside}, "parallel": "none",
                               "devices": 1, "replicas": 1, "examples_per_sec": row["baseline_examples_per_sec"]})
            rows += new
            if jax.process_index() == 0:
                for printed in new:
                    print(json.dumps(printed), flush=True)
    return rows


def process_worker(args) -> None:
    """One of `--processes` pinned processes: a single CPU device each, collectives over gloo."""
    k, modes = args.processes, args.modes.split(",")
    rest = (args.layers, int(args.batch), args.chunk, args.chunks)
    knobs = {"width": args.width, "replicas": args.replicas}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=k, process_id=args.process_worker)
    device_rows(k, modes, *rest, kinds=("data", "pipeline"), **knobs)


def _write_device_table(args, title: str, how: str, grouping: str, rows: list[dict]) -> None:
    """The --devices / --processes markdown: each row's examples/s and its ratio to `none` on the same split."""
    m = machine()
    lines = [f"# {title}", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']}, jax {m['jax']}; {how}",
             f"Commit: {git_commit()}.", f"Command: `python scripts/bench.py {' '.join(sys.argv[1:])}`.",
             "", f"FCN, {args.layers} layers of width {args.width or 256} with batch norm, batch {args.batch}, Adam; DNI SG = "
             f"2×1024 hidden layers, cDNI SG = linear on [h, one-hot y], dni_linear = DNI with a linear SG, DGL = a "
             f"linear auxiliary classifier per interface, DDG = delayed true gradients (no data-parallel row: its "
             f"stash holds whole minibatches). {grouping} Pipeline examples/s count "
             f"minibatches fed per tick; `pipeline × R replicas` is K/R modules, each on R devices that split the "
             f"batch (`parallel=pipeline replicas=R`), next to `none` with the same K/R modules. Each parallel row is timed beside its own `none` row (the row above it: the same network "
             "on one of the devices, process 0's with several processes), their chunks alternating, after a warm-up "
             f"chunk of each: median chunk of {args.chunks} chunks of {args.chunk} steps.",
             "Data rows: `all-reduce` is the step's one collective (its gradients, batch statistics and metrics in "
             "one flat bucket) timed alone at its size in the same processes (ten in one compiled loop, per "
             "collective), and `bound` the speed-up a data "
             "parallel step could reach if it paid only that on top of 1/N of the one-device step: "
             "T1 / (T1/N + all-reduce).",
             "", "| mode | devices | layers per module | parallel | examples/s | × one device | all-reduce (ms) | bound × |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r.get("baseline_examples_per_sec", r["examples_per_sec"])
        extra = "| | |"
        if "allreduce_sec" in r:
            t1 = int(args.batch) / base
            extra = f"| {r['allreduce_sec'] * 1e3:.2f} | {t1 / (t1 / r['devices'] + r['allreduce_sec']):.2f} |"
        parallel = r["parallel"] + (f" × {r['replicas']} replicas" if r.get("replicas", 1) > 1 else "")
        lines.append(f"| {r['mode']} | {r['devices']} | {r['split']} | {parallel} | "
                     f"{r['examples_per_sec']:.0f} | {r['examples_per_sec'] / base:.2f} {extra}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _knobs(args) -> list[str]:
    """The network knobs a worker process is given on its command line."""
    return [*(["--width", str(args.width)] if args.width else []), "--replicas", str(args.replicas)]


def processes_main(args) -> None:
    """One process per core, pinned; then the same table as --devices with those rows."""
    k, cores = args.processes, sorted(os.sched_getaffinity(0))
    if k > len(cores):
        sys.exit(f"--processes {k}: only {len(cores)} cores to pin to (one process per core)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    common = ["--modes", args.modes, "--layers", str(args.layers), "--batch", args.batch,
              "--chunk", str(args.chunk), "--chunks", str(args.chunks), *_knobs(args)]
    port = str(20000 + os.getpid() % 20000)
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i]), sys.executable, __file__, "--process-worker",
                               str(i), "--processes", str(k), "--port", port, *common],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(k)]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            sys.exit(f"{k}-process worker failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in outs[0][0].splitlines() if line.startswith("{")]
    print(outs[0][0], end="", flush=True)
    _write_device_table(
        args, "Throughput across processes, one core each (parallel = none / data / pipeline)",
        "every device is its own process pinned to one core (`taskset`), joined by `jax.distributed.initialize` "
        "over localhost with gloo CPU collectives, so devices do not share cores; `none` is process 0 alone "
        "with the same network on its own device, timed chunk for chunk beside each parallel row.",
        f"The layers are grouped into {k} modules of balanced cost measured on one core (`model.partition=profiled "
        f"model.modules={k}`).", rows)


def devices_main(args) -> None:
    """One subprocess per device count, then a markdown table with the speed-up over one device."""
    rows = []
    for n in map(int, args.devices.split(",")):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
               "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        cmd = [sys.executable, __file__, "--device-worker", str(n), "--modes", args.modes, "--layers",
               str(args.layers), "--batch", args.batch, "--chunk", str(args.chunk), "--chunks", str(args.chunks),
               *_knobs(args)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{n}-device worker failed:\n{res.stderr[-3000:]}")
        out = res.stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        print(out, end="", flush=True)
    _write_device_table(
        args, "Throughput across devices (parallel = none / data / pipeline)",
        "N CPU devices from `XLA_FLAGS=--xla_force_host_platform_device_count=N`. XLA:CPU runs every device's "
        "kernels on one shared intra-op thread pool sized to the machine (the old "
        "`--xla_cpu_multi_thread_eigen=false` no longer limits it), so one device already uses all cores and N "
        "devices share them.",
        "With N devices the layers are grouped into N modules of balanced measured cost (`model.partition=profiled`), "
        "and `none` runs that same "
        "network on one of the devices.", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fcn3,fcn4,fcn6", help="comma list of fcnN / cnnN")
    ap.add_argument("--exp", help="bench this preset (e.g. bench_peer_mlp) in every mode instead of --models")
    ap.add_argument("--modes", default="backprop,dni,cdni,dni_linear")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--chunk", type=int, default=50, help="steps per compiled chunk")
    ap.add_argument("--chunks", type=int, default=4, help="timed chunks after the warm-up")
    ap.add_argument("--out", type=Path, default=None, help="default results/bench/single_device.md "
                    "(devices.md with --devices)")
    ap.add_argument("--devices", help="comma list of device counts: measure parallel=none/data/pipeline")
    ap.add_argument("--layers", type=int, default=4, help="FCN depth for --devices / --processes")
    ap.add_argument("--width", type=int, help="FCN hidden width for --devices / --processes (default 256)")
    ap.add_argument("--replicas", type=int, default=1, help="with --devices / --processes N: also a pipeline of "
                    "N/R modules x R copies over the batch (parallel=pipeline replicas=R)")
    ap.add_argument("--processes", type=int, help="K pinned single-device processes (jax.distributed, gloo)")
    ap.add_argument("--device-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--process-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device_worker:
        device_rows(args.device_worker, args.modes.split(","), args.layers, int(args.batch), args.chunk,
                    args.chunks, width=args.width, replicas=args.replicas)
        return
    if args.process_worker is not None:
        process_worker(args)
        return
    if args.processes:
        args.batch = args.batch.split(",")[-1]
        args.out = args.out or Path("results/bench/processes.md")
        processes_main(args)
        return
    if args.devices:
        args.batch = args.batch.split(",")[-1]  # one batch size: the largest of the default list
        args.out = args.out or Path("results/bench/devices.md")
        devices_main(args)
        return
    args.out = args.out or Path("results/bench/single_device.md")

    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    if args.exp:
        configs = [exp_cfg(args.exp, mode) for mode in args.modes.split(",")]
    else:
        configs = []
        for spec in args.models.split(","):
            model, layers = spec.rstrip("0123456789"), int(spec[len(spec.rstrip("0123456789")):])
            for batch in map(int, args.batch.split(",")):
                configs += [paper_cfg(model, layers, mode, batch) for mode in args.modes.split(",")]
    for cfg in configs:
        r = bench_one(cfg, args.chunk, args.chunks)
        rows.append(r)
        batch, mode = r["batch"], r["mode"]
        print(f"{r['model']:6s} batch {batch:4d} {mode:9s} {r['steps_per_sec']:9.1f} steps/s "
              f"{r['examples_per_sec']:10.0f} ex/s {r['flops_per_sec'] / 1e9:7.1f} GFLOP/s "
              f"({100 * r['flops_per_sec'] / peak:.0f}% of peak)", flush=True)

    m = machine()
    lines = ["# Single-device training throughput", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']} ({m['device']}), "
             f"jax {m['jax']}, python {m['python']}.",
             f"Commit: {git_commit()}.",
             f"Command: `python scripts/bench.py {' '.join(sys.argv[1:])}`".rstrip() + ".",
             f"Measured float32 matmul peak (2048² chain, same run): {peak / 1e9:.1f} GFLOP/s.",
             f"Max pooling: {os.environ.get('SGRAD_MAX_POOL') or 'chosen by measurement'} "
             "(SGRAD_MAX_POOL, sgrad/models/pooling.py).",
             f"Convolutions on XLA:CPU: {os.environ.get('SGRAD_CPU_CONV') or 'chosen by measurement'}"
             f"{' (' + ', '.join(conv_library.chosen()) + ')' if conv_library.chosen() else ''} "
             "(SGRAD_CPU_CONV, sgrad/devices/conv_library.py).",
             "", (f"The preset `+exp={args.exp}` in each mode, composed by Hydra as `sgrad-train` composes it."
                  if args.exp else "Paper settings: FCN width 256 with batch norm; DNI SG = 2×1024 hidden layers; "
                  "cDNI SG = linear on [h, one-hot y]; Adam.") + " Each figure is from the median "
             f"of {args.chunks} chunks of {args.chunk} steps after a warm-up chunk; FLOPs from XLA's cost analysis.",
             "The last column is the bound this machine puts on a step: steps/s if every FLOP of the step ran "
             "at the measured matmul peak.",
             "", "| model | batch | mode | steps/s | examples/s | GFLOP/s | % of matmul peak | steps/s at the peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = peak_steps(r, peak)
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['steps_per_sec']:.1f} | "
                     f"{r['examples_per_sec']:.0f} | {r['flops_per_sec'] / 1e9:.1f} | "
                     f"{100 * r['flops_per_sec'] / peak:.0f}% | {bound:.{0 if bound >= 10 else 1}f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
