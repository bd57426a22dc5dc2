"""Does a layout reach a target accuracy sooner? Real `sgrad-train` runs, timed until their test accuracy first
reaches a fixed target, each beside backprop on one process.

    python scripts/time_to_accuracy.py [--target 0.88] [--seeds 0,1,2] [--steps 600] [--eval-every 20]
                                       [--layouts backprop:none,backprop:data,dni:pipeline,...]
                                       [--launch processes|devices] [--out results/bench/time_to_accuracy]

Every run is the same network, data and budget: Fashion-MNIST, the paper's FCN (`--layers` 8 of width 256, batch
norm), batch `--batch` 1024 (where two processes pay: results/bench/processes_8x256_b1024.md), Adam 1e-3; a
decoupled mode splits the layers into two modules of balanced measured cost (`model.partition=profiled
model.modules=2`) in every layout, so its one-process and two-process runs learn the same way.
`--launch processes` (CPU, the default): `parallel=none` is one process pinned to one core, the other layouts two
processes pinned to a core each (`scripts/launch_local.py`, jax.distributed); `--launch devices`: one process
using all its devices (a machine with several accelerators).

A run stops (SIGTERM, sgrad's preemption) once it has reached the target, so the budget `--steps` only bounds
the runs that do not. Runs go seed by seed, every layout once per seed (A B C ... A B C ...), so the VM's drift spreads over all of them.
Time is the run's own `watch/perf/train_seconds`: seconds spent training (the first chunk's compilation included;
evaluation, which runs every `--eval-every` steps so the crossing is seen, and start-up not). The run's wall clock
from start to exit is reported beside it.

Writes <out>.md (the table, every run, the command and commit) and <out>.png (test accuracy against training
seconds, every run, the target as a line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAYOUTS = "backprop:none,backprop:data,dni:data,dni:pipeline,cdni:data,cdni:pipeline,dgl:pipeline,ddg:pipeline"


def overrides(mode: str, parallel: str, seed: int, args, run_dir: Path) -> list[str]:
    out = ["dataset=fashion_mnist", "model=fcn", f"model.layers={args.layers}", f"mode={mode}",
           f"trainer.batch_size={args.batch}", "optim.lr=1e-3", f"trainer.steps={args.steps}",
           f"trainer.eval_every={args.eval_every}", f"trainer.log_every={args.eval_every}", "trainer.progress=false",
           "log.grad_probe_every=0", "checkpoint.every=0", f"seed={seed}", f"parallel={parallel}",
           f"hydra.run.dir={run_dir}"]
    if mode != "backprop":
        out += ["model.partition=profiled", "model.modules=2"]
    return out


def launch(parallel: str, args, cmd: list[str]) -> list[str]:
    """The command line of one run: one pinned process, two pinned processes, or one process on all devices."""
    if args.launch == "devices":
        return [sys.executable, "-m", "sgrad.cli", *cmd]
    if parallel == "none":
        core = sorted(os.sched_getaffinity(0))[0]
        return ["taskset", "-c", str(core), sys.executable, "-m", "sgrad.cli", *cmd]
    return [sys.executable, str(ROOT / "scripts" / "launch_local.py"), "2", *cmd]


def crossing(run_dir: Path, target: float) -> dict:
    """The run's curve (test accuracy against training seconds) and where it first reaches `target`."""
    seconds, curve, first = 0.0, [], None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        seconds = row.get("watch/perf/train_seconds", seconds)
        first = seconds if first is None and "watch/perf/train_seconds" in row else first
        if row.get("test/accuracy") is not None:
            curve.append((row["step"], seconds, row["test/accuracy"]))
    hit = next(((s, t) for s, t, a in curve if a >= target), None)
    return {"curve": curve, "steps": hit[0] if hit else None, "seconds": hit[1] if hit else None,
            "first_chunk": first, "best": max((a for *_, a in curve), default=None)}


def run_one(mode: str, parallel: str, seed: int, args) -> dict:
    run_dir = args.workdir / f"{mode}_{parallel}_seed{seed}"
    cmd = launch(parallel, args, overrides(mode, parallel, seed, args, run_dir))
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu" if args.launch == "processes"
                                                         else "")}
    if args.launch == "processes":
        env.pop("XLA_FLAGS", None)  # one CPU device per process
    if not env["JAX_PLATFORMS"]:
        env.pop("JAX_PLATFORMS")
    # A run dir is resumed by a rerun; this measures fresh runs, so an earlier invocation's dir goes first.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log = open(run_dir.with_suffix(".log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    stopped = False
    while proc.poll() is None:
        time.sleep(0.5)
        if not stopped and (run_dir / "metrics.jsonl").exists() and crossing(run_dir, args.target)["steps"]:
            # Reached: the rest of the budget would only cost time. SIGTERM is sgrad's preemption, answered within
            # seconds with a checkpoint (launch_local passes it on to every process).
            proc.send_signal(signal.SIGTERM)
            stopped = True
    wall = time.perf_counter() - start
    log.close()
    if proc.returncode and not (stopped and proc.returncode == 128 + signal.SIGTERM):
        sys.exit(f"time_to_accuracy: {mode} parallel={parallel} seed {seed} failed (exit {proc.returncode}); "
                 f"its log is {run_dir.with_suffix('.log')}:\n{run_dir.with_suffix('.log').read_text()[-3000:]}")
    return {"mode": mode, "parallel": parallel, "seed": seed, "wall": wall, **crossing(run_dir, args.target)}


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def write(runs: list[dict], layouts: list[tuple[str, str]], args, argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sgrad.run.provenance import git_commit, machine

    m = machine()
    seeds = sorted({r["seed"] for r in runs})
    base = [r["seconds"] for r in runs if (r["mode"], r["parallel"]) == ("backprop", "none") and r["seconds"]]
    how = ("`none` is one process pinned to one core; `data` and `pipeline` are two processes pinned to one core "
           "each, joined by jax.distributed over localhost (`scripts/launch_local.py`, gloo collectives)"
           if args.launch == "processes" else f"one process on its {m['device_count']} devices")
    lines = [f"# Time to {100 * args.target:g} % test accuracy: which layout gets there sooner", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']} ({m['device']}), "
             f"jax {m['jax']}; {how}.",
             f"Commit: {git_commit()}.", f"Command: `python scripts/time_to_accuracy.py {' '.join(argv)}`.", "",
             f"Fashion-MNIST, FCN {args.layers}×256 with batch norm, batch {args.batch}, Adam 1e-3, {args.steps} "
             f"steps, the test set evaluated every {args.eval_every} steps; decoupled modes as 2 modules of balanced "
             f"measured cost in every layout. Seconds are the run's training seconds (`watch/perf/train_seconds`: "
             f"compilation included, evaluation and start-up not) until the first evaluation at or above the "
             f"target; `first chunk (s)` is the part of them the first chunk took (its compilation, and its steps); `wall (s)` is the whole run until it stopped at the target or the end of its budget, start-up and evaluations included. Seeds {', '.join(map(str, seeds))}, "
             f"run one layout after another within each seed. `× backprop on one process`: its mean seconds to the "
             f"target over this row's (> 1: sooner).", "",
             "| mode | parallel | processes | reached | steps to target | seconds to target | × backprop on one "
             "process | first chunk (s) | best test acc. | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, parallel in layouts:
        rows = [r for r in runs if (r["mode"], r["parallel"]) == (mode, parallel)]
        hit = [r for r in rows if r["seconds"] is not None]
        secs = [r["seconds"] for r in hit]
        ratio = (f"{statistics.mean(base) / statistics.mean(secs):.2f}" if base and secs and len(hit) == len(rows)
                 else "–")
        procs = 1 if parallel == "none" or args.launch == "devices" else 2
        lines.append(f"| {mode} | {parallel} | {procs} | {len(hit)}/{len(rows)} | "
                     f"{_mean_std([r['steps'] for r in hit], '.0f')} | {_mean_std(secs, '.1f')} | {ratio} | "
                     f"{_mean_std([r['first_chunk'] for r in rows], '.1f')} | "
                     f"{_mean_std([r['best'] for r in rows], '.4f')} | {_mean_std([r['wall'] for r in rows], '.0f')} |")
    lines += ["", "A ratio is given only where every seed reached the target. Every run:", "",
              "| mode | parallel | seed | steps to target | seconds to target | best test acc. | wall (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['mode']} | {r['parallel']} | {r['seed']} | {r['steps'] if r['steps'] else '–'} | "
                     f"{'%.1f' % r['seconds'] if r['seconds'] else '–'} | {r['best']:.4f} | {r['wall']:.0f} |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for n, (mode, parallel) in enumerate(layouts):
        for k, r in enumerate(r for r in runs if (r["mode"], r["parallel"]) == (mode, parallel)):
            _, t, a = zip(*r["curve"])
            ax.plot(t, a, color=f"C{n % 10}", lw=1, alpha=0.8, ls="-" if parallel == "none" else
                    "--" if parallel == "data" else ":", label=f"{mode}, parallel={parallel}" if k == 0 else None)
    ax.axhline(args.target, color="black", lw=0.8)
    ax.text(0, args.target, f" target {100 * args.target:g} %", va="bottom", fontsize=8)
    ax.set_ylim(max(0.0, args.target - 0.15), min(1.0, args.target + 0.05))
    ax.set_xlabel("training seconds (compilation included, evaluation not)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Fashion-MNIST, FCN {args.layers}×256, batch {args.batch}: test accuracy against time "
                 f"({len(seeds)} seeds each)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"time_to_accuracy: wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}; run dirs in "
          f"{args.workdir}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.88)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="mode:parallel pairs, comma-separated")
    ap.add_argument("--launch", choices=("processes", "devices"), default="processes")
    ap.add_argument("--workdir", type=Path, default=Path("outputs/time_to_accuracy"))
    ap.add_argument("--out", type=Path, default=Path("results/bench/time_to_accuracy"))
    args = ap.parse_args()
    args.workdir = args.workdir.absolute()
    layouts = [tuple(pair.split(":")) for pair in args.layouts.split(",")]
    if ("backprop", "none") not in layouts:
        sys.exit("time_to_accuracy: --layouts must include backprop:none, the baseline every ratio is taken to")
    runs = []
    total = len(layouts) * len(args.seeds.split(","))
    for seed in map(int, args.seeds.split(",")):
        for mode, parallel in layouts:
            r = run_one(mode, parallel, seed, args)
            runs.append(r)
            reached = f"{r['seconds']:.1f} s (step {r['steps']})" if r["seconds"] else "not reached"
            print(f"[{len(runs)}/{total}] {mode} parallel={parallel} seed {seed}: {reached}, best {r['best']:.4f}, "
                  f"wall {r['wall']:.0f} s", flush=True)
    write(runs, layouts, args, sys.argv[1:])


if __name__ == "__main__":
    main()
