"""When spreading over two devices pays: measured speed-ups of data and pipeline parallelism against the work per
step, next to a cost model that predicts them from quantities measured in the same run.

    python scripts/crossover.py [--widths 256,1024,2048] [--batches 64,256,1024] [--layers 4] [--repeats 2]
                                [--out results/bench/crossover]

Each point runs `scripts/bench_processes.py --processes 2` (two processes pinned to one core each, jax.distributed +
gloo) on the paper's FCN at that width and batch: `data` (backprop, cDNI) and `pipeline` (cDNI, DGL), each
timed chunk for chunk beside process 0 alone (one process, the baseline), and in the same processes times the
collectives alone and what each device computes alone.
The model predicts a parallel step from what each device computes and sends, each part timed alone in the same
processes (scripts/parallel_rows.py part_seconds, scripts/timing.py collective_seconds):

  data      max_i T_i(B/N) + mean + wait                        T_i(B/N): the one-device step on 1/N of the batch
                                                                 on device i; mean: the step's bucket_mean of its
                                                                 leaves (into one buffer, the collective, back out)
  pipeline  max_i tick_i + messages * ppermute(B x A) + wait     tick_i: device i's tick, its branch of the
                                                                 pipeline's switch over stages, without messages
  wait      what a collective after a step that long costs       scripts/timing.py wait_seconds: a stand-in step
            beyond the same collective timed back to back        with and without a one-float swap, less the swap
  speed-up  T1 / predicted step                                  T1: the one-process step, timed beside the row

Each device's part is timed on its own process, all at once (the slowest core counts).

Every point is measured --repeats times (the whole grid each time, every other run in reverse order) and the
table gives the median of its runs, with the lowest and highest measured speed-up: two runs of one point on
this VM have differed by up to 43 %.

Writes <out>.md (every point, measured and predicted) and <out>.png (speed-up against T1, with the model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from parallel_rows import device_parts, predicted_speedup

ROWS = (("backprop", "data"), ("cdni", "data"), ("cdni", "pipeline"), ("dgl", "pipeline"))


def chunk_for(width: int, batch: int, layers: int) -> int:
    """Steps per timed chunk: about half a second of work at ~40 GFLOP/s per core, 3 to 200 steps (the smallest
    points' steps take a millisecond or two: fewer would time the VM's scheduling noise)."""
    flops = 6 * batch * (784 * width + (layers - 2) * width * width + 10 * width)
    return int(min(200, max(3, 0.5 / (flops / 40e9))))


def measure(width: int, batch: int, layers: int) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).with_name("bench_processes.py")), "--processes", "2", "--layers", str(layers),
           "--width", str(width), "--batch", str(batch), "--modes", "backprop,cdni,dgl",
           "--chunk", str(chunk_for(width, batch, layers)), "--chunks", "5", "--wait", "--out", "/dev/null"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"bench_processes.py failed at width {width}, batch {batch}:\n{res.stderr[-3000:]}")
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    points = []
    for mode, parallel in ROWS:
        row = next(r for r in rows if r["mode"] == mode and r["parallel"] == parallel)
        base = row["baseline_examples_per_sec"]  # one process, timed chunk for chunk beside it
        points.append({"width": width, "batch": batch, "mode": mode, "parallel": parallel, "split": row["split"],
                       "t1_ms": 1e3 * batch / base, "measured": row["examples_per_sec"] / base,
                       "predicted": predicted_speedup(row, batch),
                       "without_wait": predicted_speedup({**row, "wait_sec": 0.0}, batch),
                       "wait_ms": 1e3 * row.get("wait_sec", float("nan")),
                       "collective_ms": 1e3 * row.get("allreduce_sec", row.get("message_sec", float("nan"))),
                       "part_ms": 1e3 * max(device_parts(row) or [0]),
                       "alone_ms": 1e3 * max(row.get("stage_alone_sec", [float("nan")]))})
    return points


def write(points: list[dict], runs: list[list[dict]], out: Path, argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sgrad.run.provenance import git_commit, machine

    m = machine()
    error = lambda key, points=points: [abs(p[key] / p["measured"] - 1) for p in points if p[key]]
    errors, without = error("predicted"), error("without_wait")
    median = lambda e: 100 * sorted(e)[len(e) // 2]
    each = "; ".join(f"run {r + 1}: median {median(error('predicted', run)):.0f} %, largest "
                     f"{100 * max(error('predicted', run)):.0f} %" for r, run in enumerate(runs))
    apart = [p["highest"] / p["lowest"] - 1 for p in points]
    lines = ["# When two devices pay: measured speed-up against the work per step, and the cost model", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), jax {m['jax']}: two processes pinned to one core "
             "each, jax.distributed over localhost with gloo collectives.",
             f"Commit: {git_commit()}.", f"Command: `python scripts/crossover.py {' '.join(argv)}`.", "",
             "Paper FCN (batch norm, Adam), split into 2 modules by measured cost (`model.partition=profiled`). "
             "T1: one process's step. Model (a step's parts, each timed alone in the same processes): data = the "
             "slowest device's step on its half of the batch + the step's mean of its gradients and statistics "
             "(`bucket_mean`: the copies into one flat buffer and back out, and the collective); pipeline = the "
             "slowest device's tick (its branch of the pipeline's switch, without messages) + messages × one "
             "message's ppermute; both + the wait: what a collective after that much compute costs beyond the same "
             "collective timed back to back (`timing.wait_seconds`: a stand-in step of that length with and without "
             "a one-float swap after it, less that swap alone). Each device's part is timed on its own process, both "
             "at once (`scripts/crossover.py`).",
             f"Each point is the median of {len(runs)} runs of the whole grid (every other run in reverse order); "
             f"their measured speed-ups differ by {median(apart):.0f} % at the median point and by up to "
             f"{100 * max(apart):.0f} % (`lowest`, `highest`).", "",
             f"Model error over the {len(errors)} points: median {median(errors):.0f} %, largest "
             f"{100 * max(errors):.0f} % (without the wait: median {median(without):.0f} %, largest "
             f"{100 * max(without):.0f} %; each run against its own measurements: {each}).", "",
             "`part`: what the model charges a device besides the collective (data: the half-batch step; pipeline: the "
             "slowest device's tick inside the pipeline's switch over stages); `outside the switch`: the same tick "
             "compiled on its own, what it would cost without XLA's conditional.", "",
             "| width | batch | mode | parallel | layers per module | T1 (ms) | part (ms) | outside the switch (ms) | "
             "collective (ms) | wait (ms) | measured × | lowest | highest | model × | model error | "
             "error without the wait |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        err = f"{100 * (p['predicted'] / p['measured'] - 1):+.0f} %" if p["predicted"] else ""
        err_without = f"{100 * (p['without_wait'] / p['measured'] - 1):+.0f} %" if p["without_wait"] else ""
        model = f"{p['predicted']:.2f}" if p["predicted"] else ""
        alone = f"{p['alone_ms']:.1f}" if p["parallel"] == "pipeline" else ""
        lines.append(f"| {p['width']} | {p['batch']} | {p['mode']} | {p['parallel']} | {p['split']} | "
                     f"{p['t1_ms']:.1f} | {p['part_ms']:.1f} | {alone} | {p['collective_ms']:.2f} | "
                     f"{p['wait_ms']:+.2f} | {p['measured']:.2f} | {p['lowest']:.2f} | {p['highest']:.2f} | {model} | "
                     f"{err} | {err_without} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(12, 5))
    colors = {("backprop", "data"): "C0", ("cdni", "data"): "C1", ("cdni", "pipeline"): "C2",
              ("dgl", "pipeline"): "C3"}
    for key, color in colors.items():
        pts = sorted((p for p in points if (p["mode"], p["parallel"]) == key), key=lambda p: p["t1_ms"])
        ax.plot([p["t1_ms"] for p in pts], [p["measured"] for p in pts], "o", color=color,
                label=f"{key[0]} {key[1]}: measured (median; bar: lowest to highest run)")
        ax.vlines([p["t1_ms"] for p in pts], [p["lowest"] for p in pts], [p["highest"] for p in pts], color=color,
                  lw=1)
        model = [p for p in pts if p["predicted"]]
        ax.plot([p["t1_ms"] for p in model], [p["predicted"] for p in model], "--", color=color, marker="x",
                label=f"{key[0]} {key[1]}: model")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(2.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("work per step: one process's step time T1 (ms, log scale)")
    ax.set_ylabel("speed-up over one process")
    ax.set_title("Two pinned processes (gloo): when data and pipeline parallelism pay")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: it hid points
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,1024,2048")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/bench/crossover"))
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of the whole grid, every other one in reverse order; each point the median of its runs")
    args = ap.parse_args()
    grid = [(w, b) for w in map(int, args.widths.split(",")) for b in map(int, args.batches.split(","))]
    runs = []
    for r in range(args.repeats):
        points = {}
        for width, batch in (grid if r % 2 == 0 else grid[::-1]):  # drift falls on both ends of the grid alike
            points[width, batch] = measure(width, batch, args.layers)
            for p in points[width, batch]:
                print(json.dumps({"run": r, **p}), flush=True)
        runs.append([p for key in grid for p in points[key]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(combine(runs), runs, args.out, sys.argv[1:])


def combine(runs: list[list[dict]]) -> list[dict]:
    """Each point the median of its runs (the same points in the same order in every run), with the lowest and
    highest measured speed-up."""
    points = []
    for same in zip(*runs):
        p = dict(same[0])
        for key in ("t1_ms", "measured", "predicted", "without_wait", "wait_ms", "collective_ms", "part_ms",
                    "alone_ms"):
            values = [q[key] for q in same if q[key] is not None]
            p[key] = float(np.median(values)) if values else None
        p["split"] = "/".join(dict.fromkeys(q["split"] for q in same))  # profiled: a busy core can move it
        p["lowest"], p["highest"] = min(q["measured"] for q in same), max(q["measured"] for q in same)
        points.append(p)
    return points


if __name__ == "__main__":
    main()
