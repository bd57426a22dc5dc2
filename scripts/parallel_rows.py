"""One row of the parallel tables: a network in a mode on N devices (parallel = data or pipeline), timed beside its
own one-device baseline, with the parts the cost model needs and each program's memory per device; and the table.

Used by scripts/bench_devices.py (N CPU devices in one process) and scripts/bench_processes.py (K processes,
one core each).
"""

from __future__ import annotations

import json
import math
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from omegaconf import OmegaConf

from bench_networks import exp_cfg, paper_cfg, setup
from sgrad.core.step import make_train_step
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.devices.layout import shared_width
from sgrad.devices.parallel import make_runner
from sgrad.devices.pipeline import swaps
from sgrad.models.network import activation_shapes
from sgrad.modes import RULES
from sgrad.run.provenance import git_commit, machine
from timing import chunk_seconds, collective_seconds, memory, side_by_side, wait_seconds


def bench_parallel(cfg, spec: str, parallel: str, devices: int, chunk: int, chunks: int, replicas: int = 1,
                   parts: bool = True, wait: bool = False) -> dict:
    """Examples/s of `sgrad-train parallel=... [replicas=R]` on the first `devices` devices (ticks count as
    steps), `spec` naming the row's mode (bench_networks); `parts`: also what each device computes, timed alone
    (part_seconds); `wait`: and what a collective after that much compute costs beyond the collective alone
    (timing.wait_seconds)."""
    cfg = OmegaConf.merge(cfg, {"trainer": {"log_every": chunk}})
    net, tx, state, shape, xs, ys, idx, (mean, std), settings = setup(cfg)
    if parallel == "data":  # what the step averages, read before the runner donates the state
        leaves = [leaf.shape for leaf in jax.tree.leaves((state.params, state.stats))]
        bucket = sum(math.prod(shape) for shape in leaves)
    # sg_share / first_share: the gradient halves travel in the tick's swap (two devices), each with a valid flag
    shared = bool(cfg.sg_share or cfg.first_share)
    half = shared_width(state.params, bool(cfg.sg_share), bool(cfg.first_share)) + 1 if shared else 0
    baseline, alone = None, None
    if parallel != "none" and parts:
        alone = jax.tree.map(jnp.copy, state)  # for part_seconds: the runners donate their state
    if parallel != "none" and jax.process_index() == 0:
        # The same network from the same start (its own copy: the runners donate their state) on this process's
        # own device, timed chunk for chunk beside the parallel runner.
        b_run, b_state, _ = make_runner("none", net, tx, jax.tree.map(jnp.copy, state), settings,
                                        shape, cfg.trainer.batch_size, mean, std, jax.local_devices()[:1])
        baseline = [b_run, b_state, xs, ys, jax.device_put(idx, jax.local_devices()[0])]
    run, state, _ = make_runner(parallel, net, tx, state, settings, shape,
                                cfg.trainer.batch_size, mean, std, jax.devices()[:devices], replicas, cfg.sg_share,
                                cfg.modules_per_device, cfg.first_share)
    # XLA's memory analysis of each compiled chunk, per device (before the timing donates the states).
    mem = memory(run.compiled(state, xs, ys, idx, np.int32(len(idx))))
    base_mem = memory(baseline[0].compiled(*baseline[1:], np.int32(len(idx)))) if baseline else {}
    if parallel == "none":
        per_chunk, base_chunk = chunk_seconds(run, state, xs, ys, idx, chunks) / chunks, None
    else:
        per_chunk, base_chunk = side_by_side([run, state, xs, ys, idx], baseline, chunks)
    examples = chunk * cfg.trainer.batch_size
    row = {"mode": spec, "parallel": parallel, "devices": devices, "modules": len(net.modules),
           "replicas": replicas, "width": int(cfg.model.width),
           "split": "+".join(str(len(m.layers)) for m in net.modules),
           "examples_per_sec": examples / per_chunk, **mem}
    if base_chunk is not None:
        row["baseline_examples_per_sec"] = examples / base_chunk
        row.update({f"baseline_{key}": value for key, value in base_mem.items()})
    if parallel == "data" and devices > 1:
        # The step's one collective (sgrad.core.step.bucket_mean of its leaves, the copies into its flat buffer
        # and back included), timed alone: what the data parallel step pays on top of half the compute.
        row["allreduce_sec"] = collective_seconds(bucket, jax.devices()[:devices], shapes=leaves)
        row["bucket_floats"] = int(bucket)
    if parallel == "pipeline" and devices > 1 and net.rule.stage.schedule == "unlocked":
        # One message of a tick ([B, A+2], sgrad/devices/layout.py) timed alone as a ring ppermute; a tick sends
        # one each way (forward only when nothing goes back), two devices one swap (sgrad/devices/pipeline.py).
        width = max(int(np.prod(s)) for s in activation_shapes(net.modules, shape)[:-1])
        size = cfg.trainer.batch_size // replicas * (width + 2)
        size += half
        row["message_sec"] = collective_seconds(size, jax.devices()[:devices], permute=True)
        row["messages"] = (2 if (net.rule.stage.sends_back or shared) and
                           not swaps(net.rule.stage, devices // replicas, shared) else 1)
    if parts and devices > 1:
        row.update(part_seconds(cfg, settings, parallel, devices, replicas, net, tx, alone, shape, xs, ys, idx,
                                mean, std))
        if wait and device_parts(row):  # what a collective after the step's compute costs beyond it alone
            row["wait_sec"] = wait_seconds(jax.devices()[:devices], max(device_parts(row)))
    return row


def part_seconds(cfg, settings, parallel: str, devices: int, replicas: int, net, tx, state, shape, xs, ys, idx,
                 mean, std) -> dict:
    """What each device of a parallel row computes, timed alone: the cost model's inputs (scripts/crossover.py),
    one number per device. Data: the one-device step on its 1/N of the batch (`shard_sec`). Unlocked pipeline:
    each device's tick as the pipeline's program runs it, in a compiled loop of len(idx) ticks without the
    messages: its branch of the lax.switch over stages (unpack its state from its slots and its messages, the
    mode's stage, write the state back; `stage_sec`), and the same tick outside any switch (`stage_alone_sec`):
    the difference is what XLA's conditional costs (it copies the state it passes through).

    With a process per device (scripts/bench_processes.py) every process times its own devices' parts on its own
    core, all at once, as the parallel row runs them: cores of one machine differ by up to a fifth in speed here,
    and the parallel step waits for the slowest (process 0 timing every part would miss that). With every device
    in one process, its first device times them all in turn."""
    batch, device = cfg.trainer.batch_size, jax.local_devices()[:1]
    together = jax.process_count() > 1
    mine = ([i for i, d in enumerate(jax.devices()[:devices]) if d.process_index == jax.process_index()]
            if together else list(range(devices)))

    def timed(run, carry, xs, ys, idx) -> float:
        """Seconds per step; with a process per device, every process's timing starts at once."""
        carry, m = run(carry, xs, ys, idx, np.int32(len(idx)))  # compiles (each process its own program)
        jax.block_until_ready((carry, m))
        if together:
            multihost_utils.sync_global_devices("parts")
        return chunk_seconds(run, carry, xs, ys, idx, 3) / (3 * len(idx))

    def gathered(mine_sec: list[float]) -> list[float]:
        """Every device's seconds, from the processes that timed them (each its own devices')."""
        full = np.full(devices, np.nan)
        full[mine] = mine_sec
        if together:
            full = np.nanmax(multihost_utils.process_allgather(full), axis=0)
        return [float(t) for t in full]

    if parallel == "data":
        run = make_chunk_runner(make_train_step(net, tx, settings), mean, std)
        part = jax.device_put(idx[:, :batch // devices], device[0])
        # Every device runs the same program on its shard: one timing per process serves its devices.
        return {"shard_sec": gathered([timed(run, state, xs, ys, part)] * len(mine))}
    if parallel != "pipeline" or net.rule.stage.schedule != "unlocked" or replicas > 1 or \
            ((cfg.sg_share or cfg.first_share) and devices > 2):
        return {}  # (on more than two devices shared halves travel in collectives of their own: not modelled)
    from sgrad.devices.layout import build_pipeline, row_of
    from sgrad.devices.pipeline import apply_after_exchange, device_tick
    pipe, ps = build_pipeline(net, tx, state, shape, batch, settings, replicas, cfg.sg_share, 1, cfg.first_share)
    branches = [partial(device_tick, pipe, i, partial(preprocess, mean=mean, std=std)) for i in range(pipe.k)]
    idx = jax.device_put(idx[:, :pipe.batch], device[0])
    per = cfg.modules_per_device  # device d holds modules d*per .. d*per + per - 1
    stages = [i for d in mine for i in range(d * per, (d + 1) * per)]
    switched, alone = [], []
    for i in stages:
        def ticks(carry, xs, ys, idx, n, me=None, i=i):
            def tick(j, carry):
                (row, fwd, bwd, past, stash), sums = carry
                args = (row, fwd, bwd, past, stash, xs, ys, idx[j], jnp.bool_(True), j)
                row, out, back, metrics, *shared = (branches[i](*args) if me is None else
                                                    jax.lax.switch(me, branches, *args))
                if shared:  # sg_share, first_share: the device's own halves stand in for the exchange's sums
                    own, peer, stash = shared
                    row = apply_after_exchange(pipe, jnp.int32(i) if me is None else me, row, own, peer, peer, own)
                # The messages the device sends stand in for those it would receive (same shapes); the metrics
                # are summed as the pipeline sums them (dropped, XLA would not compute them).
                return (row, out, back, jnp.stack([out, past[0]]), stash), sums + metrics
            sums = jnp.zeros(jax.eval_shape(branches[i], *carry, xs, ys, idx[0], jnp.bool_(True), 0)[3].shape)
            carry, sums = jax.lax.fori_loop(0, n, tick, (carry, sums))
            return carry, sums
        stash = (ps.first_KxRxA2[i] if pipe.first_rows else
                 None if ps.stash_Kx2xRxA2 is None else ps.stash_Kx2xRxA2[i])
        carry = lambda: jax.device_put((tuple(jnp.copy(b) for b in row_of(ps.stage_KxS, i)), ps.fwd_KxBxA2[i],
                                        ps.bwd_KxBxA2[i], ps.past_Kx2xBxA2[i], jax.tree.map(jnp.copy, stash)),
                                       device[0])
        alone.append(timed(jax.jit(ticks, donate_argnums=0), carry(), xs, ys, idx))
        run = jax.jit(lambda c, xs, ys, idx, n, i=i: ticks(c, xs, ys, idx, n, jnp.int32(i) + 0 * n),
                      donate_argnums=0)
        switched.append(timed(run, carry(), xs, ys, idx))
    # A device's part is the sum of its modules' ticks.
    on_device = lambda times: [sum(times[d:d + per]) for d in range(0, len(times), per)]
    return {"stage_sec": gathered(on_device(switched)), "stage_alone_sec": gathered(on_device(alone))}


def collective_sec(row: dict) -> float:
    """Seconds a parallel row's step spends in collectives, each timed alone: a data row's mean, a pipeline
    tick's messages."""
    return row["allreduce_sec"] if row["parallel"] == "data" else row["messages"] * row["message_sec"]


def device_parts(row: dict) -> list[float] | None:
    """Seconds of what each device of a parallel row computes, timed alone (part_seconds): a data row's step on
    its share of the batch, an unlocked pipeline's tick, one per device; None where they
    and the collective were not both timed (sg_share or first_share on more than two devices, replicas, a locked
    pipeline)."""
    if row["parallel"] == "data" and "shard_sec" in row and "allreduce_sec" in row:
        return row["shard_sec"]
    if row["parallel"] == "pipeline" and "message_sec" in row and "stage_sec" in row:
        return row["stage_sec"]
    return None


def predicted_speedup(row: dict, batch: int) -> float | None:
    """The cost model's speed-up of a measured parallel row, from its own run's measurements (bench_parallel):
    T1 / (the slowest device's part + the collective + the wait), T1 the one-process step timed beside it, the
    wait what a collective after that much compute costs beyond the collective alone (timing.wait_seconds); None
    where the parts were not timed (device_parts)."""
    parts = device_parts(row)
    if parts is None:
        return None
    return batch / row["baseline_examples_per_sec"] / (max(parts) + collective_sec(row) + row.get("wait_sec", 0.0))


def row_plans(named, spec: str, n: int, kinds: tuple[str, ...], replicas: int) -> list[tuple[int, str, int, int]]:
    """The rows device_rows measures for one spec on n devices, as (modules, parallel, devices, replicas), given
    the config the spec composes to (`named`): its mode's layouts among `kinds`, on n devices (or `none` on one
    where it has none), and with replicas R > 1 also a pipeline of n/R modules x R copies."""
    mode = spec.split(":")[0]
    accepts = RULES[mode].parallel  # e.g. ddg's stash holds whole minibatches: no data parallelism
    # A spec that names its layout (e.g. dni:parallel=pipeline:sg_share=0.55) gets only that layout's rows.
    if str(named.parallel) != "none":
        accepts = tuple(p for p in accepts if p == str(named.parallel))
    # Every parallel row carries its own one-device baseline, timed beside it (bench_parallel).
    # modules_per_device M: a pipeline of n·M modules on n devices (and its baseline the same n·M modules).
    plans = [(n * (named.modules_per_device if p == "pipeline" else 1), p, n, 1) for p in ("data", "pipeline")
             if n > 1 and p in accepts and p in kinds]
    plans = plans or [(n, "none", 1, 1)]
    if replicas > 1 and n % replicas == 0 and n // replicas >= 2 and "pipeline" in accepts \
            and not named.sg_share and not named.first_share and "pipeline" in kinds and RULES[mode].stage \
            and RULES[mode].stage.schedule == "unlocked":  # (sharing needs replicas=1)
        plans += [(n // replicas, "pipeline", n, replicas)]
    return [plan for plan in plans if plan[1] in kinds]


def device_rows(n: int, specs: list[str], layers: int, batch: int, chunk: int, chunks: int,
                kinds: tuple[str, ...] = ("none", "data", "pipeline"), width: int | None = None,
                replicas: int = 1, parts: bool = True, exp: str | None = None, wait: bool = False) -> list[dict]:
    """The network split into n modules: `none` on one device, `data` and `pipeline` on n (those of `kinds`).
    With replicas R > 1 also n/R modules: `none` on one device and a pipeline of them x R copies on n.
    `parts`: each row also times its devices' parts alone (the cost model's inputs, part_seconds). `exp`: the
    network of that preset (e.g. text_transformer) at `batch` instead of the paper's FCN."""
    rows = []

    def compose(spec):
        if not exp:
            return paper_cfg("fcn", layers, spec, batch, width)
        cfg = exp_cfg(exp, spec)
        cfg.trainer.batch_size = batch
        return cfg

    for spec in specs:
        plans = row_plans(compose(spec), spec, n, kinds, replicas)
        for modules, parallel, d, r in plans:
            cfg = compose(spec)
            if modules > 1:  # modules of balanced measured cost (sgrad/models/partition.py), on one device or n
                cfg.model.partition, cfg.model.modules = "profiled", modules
            row = {**bench_parallel(cfg, spec, parallel, d, chunk, chunks, r, parts, wait), "process_devices": n}
            new = [row]
            if "baseline_examples_per_sec" in row:
                measured_beside = ("allreduce_sec", "bucket_floats", "message_sec", "messages", "shard_sec",
                                   "stage_sec", "stage_alone_sec", "wait_sec", "peak_mib", "temp_mib")
                new.insert(0, {**{k: v for k, v in row.items() if k not in measured_beside}, "parallel": "none",
                               "devices": 1, "replicas": 1, "examples_per_sec": row["baseline_examples_per_sec"],
                               **{key: row[f"baseline_{key}"] for key in ("peak_mib", "temp_mib")
                                  if f"baseline_{key}" in row}})
            rows += new
            if jax.process_index() == 0:
                for printed in new:
                    print(json.dumps(printed), flush=True)
    return rows


def write_table(args, script: str, title: str, how: str, grouping: str, rows: list[dict]) -> None:
    """The --devices / --processes markdown: each row's examples/s and its ratio to `none` on the same split."""
    m = machine()
    lines = [f"# {title}", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']}, jax {m['jax']}; {how}",
             f"Commit: {git_commit()}.", f"Command: `python scripts/{script} {' '.join(sys.argv[1:])}`.",
             "", (f"The preset `+exp={args.exp}` at batch {args.batch} (a Transformer's example is a window of "
                  f"`model.context` tokens); its SG and DGL settings are the preset's. " if args.exp else "") +
             f"FCN rows: {args.layers} layers of width {args.width or 256} with batch norm, batch {args.batch}, Adam; DNI SG = "
             f"2×1024 hidden layers, cDNI SG = linear on [h, one-hot y], `dni:sg.hidden_layers=0` = DNI with a linear SG, "
             f"DGL = a "
             f"linear auxiliary classifier per interface, DDG = delayed true gradients (no data-parallel row: its "
             f"stash holds whole minibatches). {grouping} Pipeline examples/s count "
             f"minibatches fed per tick; `pipeline × R replicas` is K/R modules, each on R devices that split the "
             f"batch (`parallel=pipeline replicas=R`), next to `none` with the same K/R modules. Each parallel row is timed beside its own `none` row (the row above it: the same network "
             "on one of the devices, process 0's with several processes), their chunks alternating, after a warm-up "
             f"chunk of each: median chunk of {args.chunks} chunks of {args.chunk} steps.",
             "`collective`: what a parallel step sends, timed alone at its size in the same processes (ten in one "
             "compiled loop, per collective): a data row's one collective, the mean of its gradients, batch "
             "statistics and metrics in one flat bucket (`sgrad.core.step.axis_mean`: one swap on two CPU devices, "
             "pmean on more); a pipeline row's messages of one tick (one swap on two devices where the mode sends "
             "targets back, else one ppermute each way). `parts`: what each device computes, timed alone on process "
             "0's device: a data row's one-device step on 1/N of the batch; an unlocked pipeline row's tick of "
             "each device as the pipeline runs it (its branch of the switch over stages), without the messages. "
             "`bound`: the speed-up the row would reach if a step cost only its slowest part plus its collective, "
             "T1 / (slowest part + collective) (`predicted_speedup`: what `scripts/crossover.py` models); a "
             "pipeline's parts are whole layers, so an uneven split bounds it below 2.",
             "Memory: XLA's analysis of each row's compiled chunk, per device: `peak` its arguments (the state, "
             "the whole random training set of 8192 examples, the chunk's indices), outputs and working buffers "
             "at the worst point; `working` the buffers alone (activations kept for a backward pass, messages). "
             "On CPU `peak` comes from a heap simulation of the program's top level and can fall below `working` "
             "for a compiled loop: read `working` there.",
             "", "| mode | devices | layers per module | parallel | examples/s | × one device | collective (ms) "
             "| parts (ms) | bound × | peak MiB / device | working MiB / device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r.get("baseline_examples_per_sec", r["examples_per_sec"])
        extra = "| | | |"
        bound = predicted_speedup(r, int(args.batch)) if "baseline_examples_per_sec" in r else None
        if bound:
            extra = (f"| {collective_sec(r) * 1e3:.2f} | {' / '.join(f'{t * 1e3:.1f}' for t in device_parts(r))} "
                     f"| {bound:.2f} |")
        parallel = r["parallel"] + (f" × {r['replicas']} replicas" if r.get("replicas", 1) > 1 else "")
        lines.append(f"| {r['mode']} | {r['devices']} | {r['split']} | {parallel} | "
                     f"{r['examples_per_sec']:.0f} | {r['examples_per_sec'] / base:.2f} {extra} "
                     f"{r.get('peak_mib', float('nan')):.1f} | {r.get('temp_mib', float('nan')):.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def worker_args(args) -> list[str]:
    """What a worker process is given on its command line: the rows' network and timing."""
    return ["--modes", args.modes, "--layers", str(args.layers), "--batch", args.batch, "--chunk", str(args.chunk),
            "--chunks", str(args.chunks), *(["--width", str(args.width)] if args.width else []),
            "--replicas", str(args.replicas), *(["--exp", args.exp] if args.exp else []),
            *(["--wait"] if args.wait else [])]


def add_row_arguments(ap) -> None:
    """The options both parallel benchmarks take."""
    ap.add_argument("--modes", default="backprop,dni,cdni,dni:sg.hidden_layers=0",
                    help="comma list of MODE[:KEY=VALUE...] (a mode and the overrides of its row)")
    ap.add_argument("--layers", type=int, default=4, help="FCN depth")
    ap.add_argument("--exp", help="time this preset's network (e.g. text_transformer) instead of the paper's FCN")
    ap.add_argument("--width", type=int, help="FCN hidden width (default 256)")
    ap.add_argument("--batch", default="256")
    ap.add_argument("--chunk", type=int, default=50, help="steps per compiled chunk")
    ap.add_argument("--chunks", type=int, default=4, help="timed chunks after the warm-up")
    ap.add_argument("--wait", action="store_true",
                    help="also time what a collective after each row's step costs beyond the collective alone "
                         "(timing.wait_seconds: the cost model's third term, scripts/crossover.py)")
    ap.add_argument("--replicas", type=int, default=1, help="also a pipeline of N/R modules x R copies over the "
                    "batch (parallel=pipeline replicas=R)")
