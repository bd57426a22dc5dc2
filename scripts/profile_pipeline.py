"""Where a pipeline tick's time goes, per device: module, interface model, optimizer, packing into its slots,
transfers and waiting, next to the same work on one device.

    python scripts/profile_pipeline.py [--modes dni,cdni,dgl,ddg] [--layers 4] [--batch 256]
                                       [--out results/bench/pipeline_profile.md]

The network is `bench_processes.py --processes 2`'s: the paper's FCN with batch norm, two modules of balanced
measured cost (`model.partition=profiled`). Three kinds of measurement, each in processes pinned to one core:

- components: one process, each piece of a device's tick jitted on its own (median of repeats): the module's
  forward and VJP; the interface model (SG prediction and regression for dni/cdni, the auxiliary classifier
  for dgl, the VJP recomputed at the stash for ddg); both optimizer updates; the whole stage on plain arrays;
  the whole stage on the slots the SPMD program keeps (the difference is packing); and the
  single-device step of the whole network;
- transfers: two processes joined by jax.distributed with gloo: one ppermute of a tick's message size, one
  way and as a swap;
- ticks: the pipeline itself on those two processes (as `bench_processes.py --processes 2` runs it).

waiting = tick − (the busier device's stage on its slots + its collectives).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sgrad.devices.processes import one_device_env


def tick_bound(mode: str, one_way: float, stages: list[float], swap: float | None = None
               ) -> tuple[float, float]:
    """(seconds of collectives per tick, seconds of the busiest device) for the mode's pipeline schedule: one
    collective each way (forward only if it sends nothing back), or on two devices of an unlocked schedule one
    `swap` where it is given (sgrad/devices/pipeline.py); the stages in parallel, or one after another when the
    forward pass is locked."""
    from sgrad.devices.pipeline import swaps
    from sgrad.modes import RULES
    rule = RULES[mode]
    comm = one_way * (2 if rule.stage.sends_back else 1)
    if swap is not None and rule.stage.schedule == "unlocked" and swaps(rule.stage, len(stages)):
        comm = swap
    return comm, (sum(stages) if rule.stage.schedule == "locked" else max(stages))


def _setup(mode: str, layers: int, batch: int, modules: int = 2):
    import jax
    import jax.numpy as jnp
    from bench_networks import paper_cfg, setup
    from sgrad.devices.layout import build_pipeline
    cfg = paper_cfg("fcn", layers, mode, batch)
    cfg.model.partition, cfg.model.modules = "profiled", modules
    cfg.trainer.log_every = 20
    net, tx, state, shape, xs, ys, idx, (mean, std), settings = setup(cfg)
    pipe, pstate = build_pipeline(net, tx, state, shape, batch, settings)
    return jax, jnp, cfg, net, tx, state, shape, xs, ys, idx, (mean, std), pipe, pstate


def components(mode: str, layers: int, batch: int) -> dict:
    """Seconds per piece of each device's tick, measured one at a time on this (pinned) process."""
    jax, jnp, cfg, net, tx, state, shape, xs, ys, idx, (mean, std), pipe, pstate = _setup(mode, layers, batch)
    from sgrad.core import delayed, dni, greedy
    from sgrad.models.network import apply
    from sgrad.models.partition import seconds
    from sgrad.devices.layout import repack, row_of
    from sgrad.devices.pipeline import device_tick
    from sgrad.modes.stage import LockedTick, Tick
    from sgrad.devices.chunk import preprocess
    x = preprocess(xs[:batch], mean, std)
    y = ys[:batch]
    ok = jnp.asarray(True)
    step = jnp.asarray(5, jnp.int32)
    out = {"split": "+".join(str(len(m.layers)) for m in net.modules), "stages": []}
    h_in = x
    for i in range(pipe.k):
        last = i == pipe.k - 1
        tree = pipe.tree(i, row_of(pstate.stage_KxS, i))
        f = net.modules[i]
        fwd_h = jax.eval_shape(lambda p, s, h: apply(f, p, s, (h,), False)[0], tree["module"],
                               tree["module_stats"], h_in)
        h_out = jnp.ones(fwd_h.shape, fwd_h.dtype)
        row = {}

        def module_fwd_vjp(p, s, h, f=f):
            fwd = dni.forward([f], [p], [s], h)
            return fwd.vjps[0](jnp.ones_like(fwd.activations[0]))
        row["module"] = seconds(jax.jit(module_fwd_vjp), tree["module"], tree["module_stats"], h_in, repeats=20)
        grads = jax.tree.map(jnp.ones_like, tree["module"])
        opt = jax.jit(lambda g, o, p: tx.modules.update(g, o, p))
        row["optimizer"] = seconds(opt, grads, tree["module_opt"], tree["module"], repeats=20)
        row["interface"] = 0.0
        rule = net.rule
        if not last and rule.interface:
            model = net.interface_models[i]
            row["optimizer"] += seconds(jax.jit(lambda g, o, p: tx.sg.update(g, o, p)),
                                        jax.tree.map(jnp.ones_like, tree["interface"]), tree["interface_opt"], tree["interface"], repeats=20)
            if rule.interface == "aux":
                head = jax.jit(lambda q, s, h: greedy.head_step(model, q, s, h, y, net.loss))
                row["interface"] = seconds(head, tree["interface"], tree["interface_stats"], h_out, repeats=20)
            else:
                label = net.interface_label(y)

                def sg_work(q, s, h, model=model):
                    pred, _ = apply(model, q, s, (h, label), True)  # ĝ for the module
                    out, vjp = jax.vjp(lambda q: apply(model, q, s, (h, label), True)[0], q)
                    return pred, dni.regression_grads([out], [vjp], [h])  # M's regression on an older h
                row["interface"] = seconds(jax.jit(sg_work), tree["interface"], tree["interface_stats"], h_out, repeats=20)
        if rule.stage.schedule == "locked" and not last:
            vjp_old = jax.jit(lambda st, s, p: delayed.delayed_vjp(f, s, st, 0, p))
            row["interface"] = seconds(vjp_old, tree["carry"], tree["module_stats"], tree["module"], repeats=20)

        if rule.stage.schedule == "locked":
            plain = jax.jit(lambda t, h: rule.stage.tick(pipe, i, t, LockedTick(h, x, y, step)))

            def packed(row, h, i=i):
                t, h_o, d_in, m = rule.stage.tick(pipe, i, pipe.tree(i, row), LockedTick(h, x, y, step))
                return repack(row, t), h_o, d_in, m
            row["stage"] = seconds(plain, tree, h_in, repeats=20)
            row["stage_flat"] = seconds(jax.jit(packed), row_of(pstate.stage_KxS, i), h_in, repeats=20)
        else:
            old_h = h_out if not last else jnp.ones((batch, *pipe.out_shapes[i - 1]))
            plain = jax.jit(lambda t, h: rule.stage.tick(pipe, i, t, Tick(h, y, ok, old_h, y, old_h, ok)))
            row["stage"] = seconds(plain, tree, h_in, repeats=20)
            dev = jax.jit(lambda state_row, fw, bw, past: device_tick(
                pipe, i, lambda a: preprocess(a, mean, std), state_row, fw, bw, past, None, xs, ys, idx[0], ok, 0))
            row["stage_flat"] = seconds(dev, row_of(pstate.stage_KxS, i), pstate.fwd_KxBxA2[i],
                                        pstate.bwd_KxBxA2[i], pstate.past_Kx2xBxA2[i], repeats=20)
        out["stages"].append(row)
        h_in = h_out
    # The baseline as the parallel benchmarks measure it: the whole network's steps in a compiled chunk on this core.
    from parallel_rows import device_rows
    row = device_rows(2, [mode], layers, batch, 20, 4, kinds=("none",), parts=False)[0]
    out["single_device_step"] = batch / row["examples_per_sec"]
    out["message_floats"] = int(batch * (pipe.width + 2))
    return out


def distributed_worker(args) -> None:
    """One of two pinned processes: ppermute latency at the tick's message size, then the pipeline's ticks."""
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=2, process_id=args.worker)
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from parallel_rows import device_rows
    from sgrad.models.partition import seconds
    mesh = jax.make_mesh((2,), ("x",), devices=jax.devices())
    result = {}
    for name, perm in (("one_way", [(0, 1)]), ("swap", [(0, 1), (1, 0)])):
        msg = jax.device_put(jnp.ones((2 * args.batch, args.width + 2)), NamedSharding(mesh, P("x")))
        send = jax.jit(jax.shard_map(lambda a, perm=perm: jax.lax.ppermute(a, "x", perm), mesh=mesh,
                                     in_specs=P("x"), out_specs=P("x")))
        # Many calls in one program, as the pipeline's loop makes them: latency, not dispatch.
        reps = 50

        def many(a, send=send):
            return jax.lax.fori_loop(0, reps, lambda _, b: send(b) + 1.0, a)
        many = jax.jit(many)
        result[name] = seconds(many, msg, repeats=5) / reps
    rows = device_rows(2, args.modes.split(","), args.layers, args.batch, args.chunk, args.chunks,
                       kinds=("pipeline",), parts=False)  # the ticks only: components() times the parts
    result["ticks"] = {r["mode"]: args.batch / r["examples_per_sec"] for r in rows if r["parallel"] == "pipeline"}
    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)


def _run(cmd: list[str], env) -> list[dict]:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"worker failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="dni,cdni,dgl,ddg")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/bench/pipeline_profile.md"))
    ap.add_argument("--components", help=argparse.SUPPRESS)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.components:
        print(json.dumps(components(args.components, args.layers, args.batch)), flush=True)
        return
    if args.worker is not None:
        distributed_worker(args)
        return

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("profile_pipeline.py needs two cores (one per pinned process)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env = one_device_env(env)
    me = [sys.executable, __file__, "--layers", str(args.layers), "--batch", str(args.batch)]
    parts = {}
    for mode in args.modes.split(","):
        parts[mode] = _run(["taskset", "-c", str(cores[0]), *me, "--components", mode], env)[-1]
        print(mode, json.dumps(parts[mode]), flush=True)
    width = max(p["message_floats"] for p in parts.values()) // args.batch - 2
    port = str(20000 + os.getpid() % 20000)
    common = [*me, "--modes", args.modes, "--chunk", str(args.chunk), "--chunks", str(args.chunks), "--port", port,
              "--width", str(width)]
    procs = [subprocess.Popen(["taskset", "-c", str(cores[w]), *common, "--worker", str(w)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(2)]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode:
            sys.exit(f"distributed worker failed:\n{err[-3000:]}")
    dist = [json.loads(line) for line in outs[0][0].splitlines() if line.startswith("{")][-1]
    print(json.dumps(dist), flush=True)
    write_report(args, parts, dist, width)


def write_report(args, parts: dict, dist: dict, width: int) -> None:
    from sgrad.run.provenance import git_commit, machine
    m = machine()
    ms = lambda s: f"{s * 1e3:.2f}"
    lines = ["# Where a pipeline tick's time goes (two devices, one core each)", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), jax {m['jax']}. Commit: {git_commit()}.",
             f"Command: `python scripts/profile_pipeline.py {' '.join(sys.argv[1:])}`.".replace("  ", " "), "",
             f"FCN, {args.layers} layers of width 256 with batch norm, batch {args.batch}, Adam, two modules of "
             "balanced measured cost. Milliseconds. Components: one process pinned to one core, each piece jitted "
             "alone, median of 20 calls. Collectives: two pinned processes (jax.distributed, gloo), one ppermute "
             f"of a tick's message ([{args.batch}, {width + 2}] float32) inside a compiled loop: "
             f"**{ms(dist['one_way'])} ms one way, {ms(dist['swap'])} ms as a swap** (both directions in one "
             f"collective: {'less' if dist['swap'] < 2 * dist['one_way'] else 'more'} than two one-way ppermutes "
             "in this run; a tick of a mode that sends targets back is one swap, DGL's one one-way ppermute, "
             "DDG's one each way).", "",
             "| mode | layers per module | device | module fwd+VJP | interface model | optimizers | stage | "
             "stage on its slots (packing) | collectives | tick measured | waiting | one device, whole step (compiled chunk) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for mode, p in parts.items():
        comm, busiest = tick_bound(mode, dist["one_way"], [s["stage_flat"] for s in p["stages"]], dist["swap"])
        tick = dist["ticks"].get(mode, float("nan"))
        wait = tick - busiest - comm
        for i, s in enumerate(p["stages"]):
            lines.append(f"| {mode} | {p['split']} | {i} | {ms(s['module'])} | {ms(s['interface'])} | "
                         f"{ms(s['optimizer'])} | {ms(s['stage'])} | {ms(s['stage_flat'])} "
                         f"({ms(s['stage_flat'] - s['stage'])}) | {ms(comm)} | {ms(tick)} | {ms(wait)} | "
                         f"{ms(p['single_device_step'])} |")
        bound = p["single_device_step"] / (busiest + comm)
        summary.append(f"- **{mode}**: one device {ms(p['single_device_step'])} ms per step; the busier device's "
                       f"stage {ms(busiest)} ms + collectives {ms(comm)} ms, so at best "
                       f"{bound:.2f}× one device; measured {p['single_device_step'] / tick:.2f}× "
                       f"(tick {ms(tick)} ms).")
    lines += ["", "Each piece is jitted and timed alone, outside the compiled loop the pipeline runs, so it includes a "
              "dispatch and (on the slots) a copy that the loop's donated carry avoids: a negative waiting "
              "means the loop did better than its pieces alone.", "",
              "Read per mode (the bound assumes no waiting beyond the busier device and the collectives):", "",
              *summary]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
