"""Does a layout reach a target accuracy sooner? Real `sgrad-train` runs, timed until their test accuracy first
reaches fixed targets, each beside backprop on one process.

    python scripts/time_to_accuracy.py [--targets 0.87,0.88,0.885] [--seeds 0,1,2] [--steps 700]
                                       [--batch 4096] [--schedule cosine|constant] [--eval-every 20]
                                       [--layouts backprop:none,backprop:data,cdni:pipeline,...]
                                       [--launch processes|devices] [--out results/bench/time_to_accuracy]
                                       [--report-only]

Every run is the same network, data and budget: Fashion-MNIST, the paper's FCN (`--layers` 8 of width 256, batch
norm), batch `--batch` 4096, Adam 1e-3 decaying to 0 over the `--steps` budget (cosine; `--schedule constant` keeps
it), the same schedule for every run; a decoupled mode splits the layers into two modules of balanced measured cost
(`model.partition=profiled model.modules=2`) in every layout, so its one-process and two-process runs learn the
same way. Why this recipe: at batch 1024 one process reaches the FCN's accuracy plateau (88-89 %) in about 20 s,
so a second process's longer compilation decided the ratios, and with a constant rate a run's test accuracy
wanders about its plateau, so when it first touched a target near the top was mostly chance. At batch 4096 two
processes pay most (a step takes half the time) and backprop on one process needs a minute or more; the decaying
rate lets each run settle.
`--launch processes` (CPU, the default): `parallel=none` is one process pinned to one core, the other layouts two
processes pinned to a core each (`scripts/launch_local.py`, jax.distributed); `--launch devices`: one process
using all its devices (a machine with several accelerators).

A run stops (SIGTERM, sgrad's preemption) once it reaches the highest target, so the budget `--steps` (which also
sets the schedule's length) only bounds the runs that do not; the lower targets are read off the same runs. Runs go
seed by seed, every layout once per seed (A B C ... A B C ...), so the VM's drift spreads over all of them. Time is the run's own
`watch/perf/train_seconds`: seconds spent training (the first chunk's compilation included; evaluation, which runs
every `--eval-every` steps so the crossing is seen, and start-up not); the run's wall clock is reported beside it.
`--report-only` rewrites the report from the run dirs of an earlier invocation.

Writes <out>.md (the tables, every run, the command and commit) and <out>.png (test accuracy against training
seconds, every run, the targets as lines).
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

from sgrad.devices.processes import one_device_env

ROOT = Path(__file__).resolve().parent.parent
# Every decoupled mode in each layout it can use, but DNI's pipeline: its one SG model's work sits on one device
# there, so it runs slower than one process (results/bench/processes_8x256_b1024.md); data is its best layout.
DEFAULT_LAYOUTS = ("backprop:none,backprop:data,dni:data,cdni:data,cdni:pipeline,dgl:data,dgl:pipeline,ddg:pipeline,"
                   "fr:pipeline")


def overrides(mode: str, parallel: str, seed: int, args, run_dir: Path) -> list[str]:
    out = ["dataset=fashion_mnist", "model=fcn", f"model.layers={args.layers}", f"mode={mode}",
           f"trainer.batch_size={args.batch}", "optim.lr=1e-3", f"optim.schedule={args.schedule}",
           f"trainer.steps={args.steps}",
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


def crossing(run_dir: Path, targets: list[float]) -> dict:
    """The run's curve (test accuracy against training seconds) and where it first reaches each target."""
    seconds, curve, timed = 0.0, [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "watch/perf/train_seconds" in row:
            seconds = row["watch/perf/train_seconds"]
            timed.append((row["step"], seconds))
        if row.get("test/accuracy") is not None:
            curve.append((row["step"], seconds, row["test/accuracy"]))
    hits = {}
    for target in targets:
        hit = next(((s, t) for s, t, a in curve if a >= target), None)
        hits[target] = {"steps": hit[0] if hit else None, "seconds": hit[1] if hit else None}
    # The first chunk's seconds (its compilation in them), then the pace once compiled: seconds per step after it.
    first = timed[0][1] if timed else None
    pace = (timed[-1][1] - timed[0][1]) / (timed[-1][0] - timed[0][0]) if len(timed) > 1 else None
    return {"curve": curve, "hits": hits, "first_chunk": first, "best": max((a for *_, a in curve), default=None),
            "pace": pace}


def run_dir_of(args, mode: str, parallel: str, seed: int) -> Path:
    return args.workdir / f"{mode}_{parallel}_seed{seed}"


def run_one(mode: str, parallel: str, seed: int, args) -> None:
    """One run, stopped once it reaches the (highest) target."""
    run_dir = run_dir_of(args, mode, parallel, seed)
    cmd = launch(parallel, args, overrides(mode, parallel, seed, args, run_dir))
    env = dict(os.environ)
    if args.launch == "processes":
        env = one_device_env(env)
        env.setdefault("JAX_PLATFORMS", "cpu")
    # A run dir is resumed by a rerun; this measures fresh runs, so an earlier invocation's dir goes first.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.with_suffix(".log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    stopped, top = False, max(args.targets)
    while proc.poll() is None:
        time.sleep(0.5)
        if not stopped and (run_dir / "metrics.jsonl").exists() and crossing(run_dir, [top])["hits"][top]["steps"]:
            # Reached: the rest of the budget would only cost time. SIGTERM is sgrad's preemption, answered within
            # seconds with a checkpoint (launch_local passes it on to every process).
            proc.send_signal(signal.SIGTERM)
            stopped = True
    log.close()
    summary = run_dir / "summary.json"
    # The signal may land as the run ends by itself, after its handler is gone: a summary says how it ended.
    ended = stopped and summary.exists() and json.loads(summary.read_text())["status"] in ("completed", "preempted")
    if proc.returncode and not ended:
        sys.exit(f"time_to_accuracy: {mode} parallel={parallel} seed {seed} failed (exit {proc.returncode}); "
                 f"its log is {run_dir.with_suffix('.log')}:\n{run_dir.with_suffix('.log').read_text()[-3000:]}")


def collect(args, layouts, seeds) -> list[dict]:
    runs = []
    for seed in seeds:
        for mode, parallel in layouts:
            run_dir = run_dir_of(args, mode, parallel, seed)
            if not (run_dir / "metrics.jsonl").exists():
                sys.exit(f"time_to_accuracy: no run in {run_dir} (run without --report-only first)")
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append({"mode": mode, "parallel": parallel, "seed": seed, "wall": summary["wall_seconds"],
                         "commit": summary.get("commit", "unknown"),
                         **crossing(run_dir, args.targets)})
    return runs


def _mean_std(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _at(runs: list[dict], target: float, mode: str, parallel: str) -> tuple[list[dict], list[float]]:
    rows = [r for r in runs if (r["mode"], r["parallel"]) == (mode, parallel)]
    return rows, [r["hits"][target]["seconds"] for r in rows if r["hits"][target]["seconds"] is not None]


def _ratio(runs: list[dict], target: float, mode: str, parallel: str) -> str:
    """Backprop on one process's mean seconds over this layout's; only where every seed of both reached it."""
    base_rows, base = _at(runs, target, "backprop", "none")
    rows, secs = _at(runs, target, mode, parallel)
    if not secs or len(secs) < len(rows) or len(base) < len(base_rows):
        return "–"
    return f"{statistics.mean(base) / statistics.mean(secs):.2f}"


def write(runs: list[dict], layouts: list[tuple[str, str]], args, argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sgrad.run.provenance import git_commit, machine

    m = machine()
    seeds = sorted({r["seed"] for r in runs})
    top, lower = max(args.targets), sorted(args.targets)[:-1]
    how = ("`none` is one process pinned to one core; `data` and `pipeline` are two processes pinned to one core "
           "each, joined by jax.distributed over localhost (`scripts/launch_local.py`, "
           f"{os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')} collectives)"
           if args.launch == "processes" else f"one process on its {m['device_count']} devices")
    procs = lambda parallel: 1 if parallel == "none" or args.launch == "devices" else 2
    lines = [f"# Time to {100 * top:g} % test accuracy: which layout gets there sooner", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']} ({m['device']}), "
             f"jax {m['jax']}; {how}.",
             f"Commit of the runs: {runs[0]['commit']}" + (f"; of the report: {git_commit()}" if args.report_only
                                                             else "") + ".",
             f"Command: `python scripts/time_to_accuracy.py {' '.join(argv)}`" + (
                 " (the report, from the run dirs of the same command without --report-only)" if args.report_only
                 else "") + ".", "",
             f"Fashion-MNIST, FCN {args.layers}×256 with batch norm, batch {args.batch}, Adam 1e-3"
             f"{' decaying to 0 over the budget (cosine)' if args.schedule == 'cosine' else ''}, at most "
             f"{args.steps} steps, the test set evaluated every {args.eval_every} steps; decoupled modes as 2 modules "
             f"of balanced measured cost in every layout. Seconds are the run's training seconds "
             f"(`watch/perf/train_seconds`: compilation included, evaluation and start-up not) until the first "
             f"evaluation at or above the target; `first chunk (s)` is the part of them the first chunk took (its "
             f"compilation and its {args.eval_every} steps), `s / step` the training seconds per step after it; "
             f"`wall (s)` is the run's own wall clock (summary.json: "
             f"evaluations and compilation included, process start-up not) until it stopped, at the target "
             f"(SIGTERM) or at the end of its budget. Seeds {', '.join(map(str, seeds))}, one layout after "
             f"another within each seed. `× backprop on one process`: its mean seconds to the target over this "
             f"row's (> 1: sooner), given only where every seed of both reached the target.", "",
             "| mode | parallel | processes | reached | steps to target | seconds to target | × backprop on one "
             "process | first chunk (s) | best test acc. | wall (s) | s / step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, parallel in layouts:
        rows, secs = _at(runs, top, mode, parallel)
        steps = [r["hits"][top]["steps"] for r in rows if r["hits"][top]["steps"] is not None]
        lines.append(f"| {mode} | {parallel} | {procs(parallel)} | {len(secs)}/{len(rows)} | "
                     f"{_mean_std(steps, '.0f')} | {_mean_std(secs, '.1f')} | {_ratio(runs, top, mode, parallel)} | "
                     f"{_mean_std([r['first_chunk'] for r in rows], '.1f')} | "
                     f"{_mean_std([r['best'] for r in rows], '.4f')} | {_mean_std([r['wall'] for r in rows], '.0f')} | "
                     f"{_mean_std([r['pace'] for r in rows if r['pace']], '.3f')} |")
    if lower:
        lines += ["", "The same runs at lower targets (each run's first evaluation at or above it): reached, seconds "
                  "to it, × backprop on one process.", "",
                  "| mode | parallel | " + " | ".join(f"{100 * t:g} %: reached | seconds | ×" for t in lower) + " |",
                  "|---|---|" + "---|---|---|" * len(lower)]
        for mode, parallel in layouts:
            cells = []
            for t in lower:
                rows, secs = _at(runs, t, mode, parallel)
                cells.append(f"{len(secs)}/{len(rows)} | {_mean_std(secs, '.1f')} | {_ratio(runs, t, mode, parallel)}")
            lines.append(f"| {mode} | {parallel} | " + " | ".join(cells) + " |")
    lines += ["", "Every run:", "",
              "| mode | parallel | seed | steps to target | seconds to target | best test acc. | wall (s) |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        hit = r["hits"][top]
        lines.append(f"| {r['mode']} | {r['parallel']} | {r['seed']} | {hit['steps'] or '–'} | "
                     f"{'%.1f' % hit['seconds'] if hit['seconds'] else '–'} | {r['best']:.4f} | {r['wall']:.0f} |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for n, (mode, parallel) in enumerate(layouts):
        for k, r in enumerate(r for r in runs if (r["mode"], r["parallel"]) == (mode, parallel)):
            _, t, a = zip(*r["curve"])
            ax.plot(t, a, color=f"C{n % 10}", lw=1, alpha=0.8, ls="-" if parallel == "none" else
                    "--" if parallel == "data" else ":", label=f"{mode}, parallel={parallel}" if k == 0 else None)
    for t in args.targets:
        ax.axhline(t, color="black", lw=0.8 if t == top else 0.5, ls="-" if t == top else ":")
        ax.text(0, t, f" {100 * t:g} %", va="bottom", fontsize=8)
    ax.set_ylim(max(0.0, min(args.targets) - 0.1), min(1.0, top + 0.03))
    ax.set_xlabel("training seconds (compilation included, evaluation not)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Fashion-MNIST, FCN {args.layers}×256, batch {args.batch}: test accuracy against time, "
                 f"{len(seeds)} seeds each (runs stop at {100 * top:g} %)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"time_to_accuracy: wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}; run dirs in "
          f"{args.workdir}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.87,0.88,0.885",
                    help="test accuracies, comma-separated; runs stop at the highest, the table gives each")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                    help="the learning rate: constant, or cosine decay to 0 over --steps (the same for every run)")
    ap.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="mode:parallel pairs, comma-separated")
    ap.add_argument("--launch", choices=("processes", "devices"), default="processes")
    ap.add_argument("--workdir", type=Path, default=Path("outputs/time_to_accuracy"))
    ap.add_argument("--out", type=Path, default=Path("results/bench/time_to_accuracy"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the run dirs in --workdir")
    args = ap.parse_args()
    args.workdir = args.workdir.absolute()
    args.targets = [float(t) for t in args.targets.split(",")]
    layouts = [tuple(pair.split(":")) for pair in args.layouts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if ("backprop", "none") not in layouts:
        sys.exit("time_to_accuracy: --layouts must include backprop:none, the baseline every ratio is taken to")
    if not args.report_only:
        total, top = len(layouts) * len(seeds), max(args.targets)
        for seed in seeds:
            for mode, parallel in layouts:
                run_one(mode, parallel, seed, args)
                r = crossing(run_dir_of(args, mode, parallel, seed), [top])
                hit = r["hits"][top]
                reached = f"{hit['seconds']:.1f} s (step {hit['steps']})" if hit["seconds"] else "not reached"
                done = seeds.index(seed) * len(layouts) + layouts.index((mode, parallel)) + 1
                print(f"[{done}/{total}] {mode} parallel={parallel} seed {seed}: {reached}, best {r['best']:.4f}",
                      flush=True)
    write(collect(args, layouts, seeds), layouts, args, sys.argv[1:])


if __name__ == "__main__":
    main()
