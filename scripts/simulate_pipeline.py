"""Cost model of one training step spread over K devices: locked backprop, the DNI pipeline and GPipe.

    taskset -c 0 python scripts/simulate_pipeline.py [--mode cdni] [--batch 256] [--micro 4,16] [--cores N]
                                        [--measured results/bench/devices.md] [--out results/bench/pipeline_model]

Measures, on one CPU device (pin it to one core with taskset: XLA:CPU's thread pool
ignores the old single-thread flag), what each module costs: a backprop
module's forward+backward+update (W_i), a DNI stage's whole tick (T_i: forward,
VJP, SG prediction, SG regression, both updates) and W_i at GPipe's micro-batch
size. Then, for K modules on K devices, each collective costing the link latency L (the tables are
for --latency-ms values and the gloo latency measured by scripts/profile_pipeline.py; a DNI tick sends one
message each way):

  backprop, model parallel (locked)  step = sum_i W_i + 2(K-1)L (one module busy at a time)
  DNI on one device                  step = sum_i T_i          (the baseline of the K-fold speed-up)
  DNI pipeline (unlocked)            tick = max(max_i T_i, sum_i T_i / cores) + 2L
  GPipe, M micro-batches             step = (M + K - 1) * (max_i W_i(B / M) + 2L)

For K = 1..64 the network is the paper's FCN cut into K modules (first: 784 -> 256,
then K-2 hidden 256 -> 256, then the classifier), each cost measured once. It
also predicts the bench networks of `scripts/bench_devices.py` from their own
measured stages and sets the prediction beside the measurement when given, and predicts the
two-process rows of `bench_processes.py --processes 2` (--processes) from the stages as the pipeline runs them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp


from sgrad.config.compose import compose_config
from sgrad.core import dni
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.devices.layout import build_pipeline
from sgrad.modes.stage import Tick
from sgrad.run.provenance import git_commit, machine
from sgrad.core.step import create_state


def _seconds(fn, *args, repeats: int = 30) -> float:
    """Best-of-3 mean time of a jitted call (compiled first)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / repeats)
    return best


def module_costs(mode: str, layers: int, modules: int | None, batch: int, micro: list[int]) -> dict:
    """Measured seconds per module: backprop W_i (at batch and at each micro-batch), DNI stage tick T_i.
    `modules`: that many modules of balanced cost, as the parallel benchmarks split their networks; None: one layer each."""
    split = ["model.partition=profiled", f"model.modules={modules}"] if modules else []
    cfg = compose_config(f"mode={mode}", "model.name=fcn", f"model.layers={layers}", *split,
                         f"trainer.batch_size={batch}", "optim.schedule=constant", "sg.optim.schedule=constant")
    net = build_network(cfg, (28, 28, 1), 10)
    x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
    params, stats = init_variables(net, jax.random.key(1), x)
    tx = build_train_optimizer(cfg, 1000)
    state = create_state(params, stats, tx)
    pipe, _ = build_pipeline(net, tx, state, (28, 28, 1), batch)
    y = jnp.zeros((batch,), jnp.int32)
    ok = jnp.asarray(True)
    ticks, inputs = [], [x]
    for i in range(pipe.k):
        tree = {"module": params["modules"][i], "module_stats": stats["modules"][i],
                "module_opt": state.opt_state["modules"][i],
                **({"interface": params["interface"][i], "interface_stats": stats["interface"][i],
                    "interface_opt": state.opt_state["interface"][i]}
                   if i < pipe.k - 1 else {"interface": (), "interface_stats": (), "interface_opt": ()})}
        h = jnp.zeros((batch, *pipe.out_shapes[i]))
        ticks.append(_seconds(jax.jit(lambda t, hi, h=h, i=i: pipe.stage.tick(pipe, i, t, Tick(hi, y, ok, h, y, h, ok))[0]),
                              tree, inputs[-1]))
        inputs.append(jnp.ones((batch, *pipe.out_shapes[i])))

    def backprop_module(i, b):
        f, opt = net.modules[i], tx.modules

        def work(p, s, o, h):
            fwd = dni.forward([f], [p], [s], h)
            g, d_in = fwd.vjps[0](jnp.ones_like(fwd.activations[0]))
            updates, o = opt.update(g, o, p)
            return jax.tree.map(jnp.add, p, updates), o, d_in
        return _seconds(jax.jit(work), params["modules"][i], stats["modules"][i], state.opt_state["modules"][i],
                        inputs[i][:b])

    backprop = {b: [backprop_module(i, b) for i in range(pipe.k)] for b in [batch] + [batch // m for m in micro]}
    return {"tick": ticks, "backprop": backprop}




def predict(tick: list[float], backprop: dict, batch: int, micro: list[int], cores: int,
            latency: float = 0.0) -> dict[str, float]:
    """Examples/s of each schedule for one network's measured module costs; `latency`: seconds per collective.

    Locked backprop sends 2(K-1) messages one after the other per step; the DNI pipeline waits for its tick's
    collectives; GPipe sends 2(K-1) messages per micro-batch along its critical path, M + K - 1 of them.
    """
    k = len(tick)
    out = {"backprop (locked, model parallel)": batch / (sum(backprop[batch]) + 2 * (k - 1) * latency),
           "DNI, all modules on one device": batch / sum(tick),
           "DNI pipeline (unlocked)": batch / (max(max(tick), sum(tick) / cores)
                                               + (2 * latency if k > 1 else 0.0))}
    for m in micro:
        step = (m + k - 1) * (max(backprop[batch // m]) + (2 * latency if k > 1 else 0.0))
        out[f"GPipe M={m}"] = batch / step
    return out


def read_latency(path: Path) -> tuple[float, float]:
    """(one way, swap) seconds per collective from a scripts/profile_pipeline.py report."""
    found = re.search(r"\*\*([\d.]+) ms one way, ([\d.]+) ms as a swap\*\*", path.read_text())
    if not found:
        sys.exit(f"{path}: no collective latency found (run scripts/profile_pipeline.py first)")
    return float(found.group(1)) / 1e3, float(found.group(2)) / 1e3


def read_processes(path: Path) -> dict[str, float]:
    """mode -> measured two-process pipeline examples/s from a `bench_processes.py --processes 2` table."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[3] == "pipeline" and cells[1] == "2":
            rows[cells[0]] = float(cells[4])
    return rows


def read_measured(path: Path, mode: str) -> dict[tuple[int, str], float]:
    """(modules, parallel) -> examples/s from a `bench_devices.py` table."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] == mode and re.fullmatch(r"\d+", cells[1]):
            # "modules" (a count, older tables) or "layers per module" ("1+3")
            modules = int(cells[2]) if cells[2].isdigit() else len(cells[2].split("+"))
            rows[(modules, cells[3], int(cells[1]))] = float(cells[4])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="cdni", choices=["dni", "cdni"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--micro", default="4,16", help="GPipe micro-batch counts")
    ap.add_argument("--cores", type=int, default=0, help="cores for the scaling curve (0: one per device)")
    ap.add_argument("--max-k", type=int, default=64)
    ap.add_argument("--measured", type=Path, help="results/bench/devices.md to check the model against")
    ap.add_argument("--profile", type=Path, default=Path("results/bench/pipeline_profile.md"),
                    help="scripts/profile_pipeline.py's report: the measured seconds per collective")
    ap.add_argument("--processes", type=Path, default=Path("results/bench/processes.md"),
                    help="bench_processes.py --processes 2 table: the two-process rows the model must predict")
    ap.add_argument("--latency-ms", type=float, nargs="*", default=[0.0, 0.1, 1.0],
                    help="link latencies (ms per collective) for the K = 2..64 tables")
    ap.add_argument("--out", type=Path, default=Path("results/bench/pipeline_model"))
    args = ap.parse_args()
    micro = [int(m) for m in args.micro.split(",")]

    # Scaling: first, middle and last module of the paper's FCN, one layer per module.
    base = module_costs(args.mode, 4, None, args.batch, micro)
    pick = lambda costs, k: [costs[0]] + [costs[1]] * (k - 2) + [costs[-1]] if k > 1 else [sum(costs[:1])]
    ks = [k for k in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= args.max_k]
    one_way = read_latency(args.profile)[0] if args.profile.exists() else None
    latencies = sorted({*args.latency_ms, *([one_way * 1e3] if one_way else [])})
    tables: dict[float, dict[str, list[float]]] = {}
    for lat in latencies:
        curves = tables.setdefault(lat, {})
        for k in ks:
            tick = pick(base["tick"], k)
            bp = {b: pick(c, k) for b, c in base["backprop"].items()}
            for name, v in predict(tick, bp, args.batch, micro, args.cores or k, lat / 1e3).items():
                curves.setdefault(name, []).append(v)
    curves = tables[latencies[0]]

    m = machine()
    cores = len(os.sched_getaffinity(0))
    lines = ["# Pipeline cost model", "", f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), jax {m['jax']}; module "
             f"costs measured on one CPU device with {cores} core(s) available to the process.",
             f"Commit: {git_commit()}.",
             f"Command: `python scripts/simulate_pipeline.py {' '.join(sys.argv[1:])}`.".replace("  ", " "), "",
             f"Mode {args.mode}, batch {args.batch}. Measured per-module seconds (4-layer FCN, one layer per module): "
             f"DNI tick {', '.join(f'{t * 1e3:.2f} ms' for t in base['tick'])}; backprop "
             f"{', '.join(f'{t * 1e3:.2f} ms' for t in base['backprop'][args.batch])}.", "",
             "Each collective costs the link's latency (a tick's messages are small: latency, not bandwidth, "
             "dominates); a DNI tick waits for one collective each way; locked backprop and GPipe send their "
             "messages one after another."]
    for lat, curves in tables.items():
        lines += ["", "## Predicted examples/s for K modules on K devices" + (
                      f" sharing {args.cores} cores" if args.cores else " (one core each)") +
                  f", {lat:g} ms per collective" + (" (measured, gloo on this machine)" if one_way and
                                                    abs(lat - one_way * 1e3) < 1e-9 else ""), "",
                  "| K | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
        for j, k in enumerate(ks):
            lines.append(f"| {k} | " + " | ".join(f"{v[j]:.0f}" for v in curves.values()) + " |")
        one, piped = curves["DNI, all modules on one device"], curves["DNI pipeline (unlocked)"]
        lines += ["", "Pipeline speed-up over the same network on one device, and as a fraction of K: " +
                  ", ".join(f"K={k}: {p / o:.2f}× ({p / o / k:.2f}·K)" for k, o, p in zip(ks, one, piped)) + "."]
    curves = tables[latencies[0]]

    if one_way and args.processes.exists():
        from profile_pipeline import components, tick_bound
        measured = read_processes(args.processes)
        lines += ["", f"## Check against the two-process rows of {args.processes}", "",
                  "The bench network's own two stages measured here on their flat buffers (what the SPMD program "
                  f"runs), plus one measured one-way collective ({one_way * 1e3:.2f} ms, {args.profile}) each way "
                  "(dgl: forward only): tick = max_i stage_i + collectives (ddg: sum_i stage_i, its forward pass is "
                  "locked).", "",
                  "| mode | predicted pipeline ex/s | measured | measured / predicted |", "|---|---|---|---|"]
        for mode, value in measured.items():
            stages = [st["stage_flat"] for st in components(mode, 4, args.batch)["stages"]]
            comm, busiest = tick_bound(mode, one_way, stages)
            pred = args.batch / (busiest + comm)
            lines.append(f"| {mode} | {pred:.0f} | {value:.0f} | {value / pred:.2f} |")

    if args.measured and args.measured.exists():
        measured = read_measured(args.measured, args.mode)
        cores = machine()["cpu_count"]
        lines += ["", f"## Check against the measurements in {args.measured}", "",
                  f"Each bench network's own stages measured here; prediction = batch / max(max_i T_i, "
                  f"sum_i T_i / min(K, {cores} cores)).", "",
                  "| modules | devices | predicted pipeline ex/s | measured pipeline ex/s | measured / predicted |",
                  "|---|---|---|---|---|"]
        for (modules, parallel, devices), value in sorted(measured.items()):
            if parallel != "pipeline":
                continue
            costs = module_costs(args.mode, 4, modules if modules > 1 else None, args.batch, [])
            pred = args.batch / max(max(costs["tick"]), sum(costs["tick"]) / min(devices, cores))
            lines.append(f"| {modules} | {devices} | {pred:.0f} | {value:.0f} | {value / pred:.2f} |")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, v in curves.items():
        ax.plot(ks, v, marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("modules K (one device each)")
    ax.set_ylabel("predicted examples/s")
    ax.set_title(f"Predicted throughput, FCN width 256, {args.mode}, batch {args.batch}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "scaling.png", dpi=120)
    print("\n".join(lines))
    print(f"wrote {args.out}/README.md and scaling.png")


if __name__ == "__main__":
    main()
