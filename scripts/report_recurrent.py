"""Collect recurrent runs (Copy / Repeat Copy / PTB chars) into a table and curves.

    python scripts/report_recurrent.py RUN_DIRS_OR_SWEEP_DIRS... --out results/rnn/copy

Rows: backprop / DNI / DNI + aux; columns: the truncation window T; cells: the
longest sequence length solved (copy tasks), validation/test bits per
character (ptb_char, text) or test accuracy (images read pixel by pixel). Curves:
curriculum length against sequence steps seen, or the evaluation and sg/cosine
against windows.
Two-clock runs (dataset two_timescale) get B's final accuracy per link instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from sgrad.run.metrics import read_jsonl


def variant(summary: dict) -> str:
    if summary["mode"] == "backprop":
        return "backprop (truncated BPTT)"
    name = "cDNI" if summary["mode"] == "cdni" else "DNI"
    name += " + aux" if summary.get("aux") else ""
    name += ", M by least squares" if summary.get("sg_optim") == "rls" else ""
    name += ", oracle ĝ (true gradient of the windows ahead)" if summary.get("oracle") else ""
    if summary.get("sg_trace") == "accumulate":
        return name + f", accumulate BP(λ) λ={summary.get('trace_lambda', 0.0):g}"
    return name + (f", λ-return λ={summary['trace_lambda']:g}" if summary.get("trace_lambda") else "")


LINKS = {"backprop": "B's true gradient (A waits for B)", "dni": "DNI", "cut": "DNI cut (sg.scale=0)"}


def two_clock_report(runs: list[dict], out: Path) -> list[str]:
    """Mean ± std over seeds of B's and A's accuracy (last logged chunk) per link, and B's accuracy curves."""
    link = lambda r: "backprop" if r["mode"] == "backprop" else ("cut" if r["sg_scale"] == 0 else "dni")
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[link(r)].append(r)
    stat = lambda vs: f"{np.mean(vs):.3f} ± {np.std(vs):.3f}"
    lines = ["# Two networks on two clocks: B's accuracy at counting the ones A saw", "",
             f"B ticks every T={runs[0]['bptt']} steps of A; steps {sorted({r['step'] for r in runs})}; hidden "
             f"{runs[0]['hidden']}; seeds {sorted({r['seed'] for r in runs})}; commit(s) "
             f"{', '.join(sorted({r['commit'] for r in runs}))}; machine {runs[0].get('machine/cpu', '?')}.", "",
             "| link from B to A | runs | B accuracy | A accuracy (own task) |", "|---|---|---|---|"]
    for key in ("dni", "cut", "backprop"):
        if key in groups:
            g = groups[key]
            lines.append(f"| {LINKS[key]} | {len(g)} | {stat([r['b/accuracy'] for r in g])} | "
                         f"{stat([r['a/accuracy'] for r in g])} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colours = {"dni": "tab:orange", "cut": "tab:gray", "backprop": "tab:blue"}
    for r in runs:
        rows = [row for row in read_jsonl(r["dir"] / "metrics.jsonl") if "b/accuracy" in row]
        ax.plot([row["step"] for row in rows], [row["b/accuracy"] for row in rows], color=colours[link(r)],
                lw=1, label=LINKS[link(r)])
    handles = {h.get_label(): h for h in ax.get_lines()}
    ax.legend(handles.values(), handles.keys(), fontsize=8)
    ax.set_xlabel("steps of A")
    ax.set_ylabel("B accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    return lines


def bpc_cell(values: list[tuple[float, float]]) -> str:
    """'valid / test' bits per character of one run, or their mean ± std over several seeds."""
    v, t = np.array(values).T
    if len(values) == 1:
        return f"{v[0]:.3f} / {t[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std():.3f} / {t.mean():.3f} ± {t.std():.3f} ({len(values)} seeds)"


def accuracy_cell(values: list[float]) -> str:
    """Test accuracy of one run, or the mean ± std over several seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} ({len(values)} seeds)"


def solved_cell(values: list[str]) -> str:
    """The longest length each seed solved, and their mean where there are several and every run completed."""
    if len(values) > 1 and all(v.isdigit() for v in values):
        return f"{', '.join(values)} (mean {np.mean([int(v) for v in values]):.1f})"
    return ", ".join(values)


def collect(paths: list[Path]) -> list[dict]:
    runs = []
    for root in paths:
        for f in sorted(root.rglob("summary.json")):
            s = json.loads(f.read_text())
            if s.get("model") == "lstm":
                config = json.loads((f.parent / "run_config.json").read_text())  # the run's whole flat config
                sg_optim = config["sg.optim.name"] if s["mode"] != "backprop" else None
                runs.append({**s, "sg_optim": sg_optim, "oracle": config.get("sg.oracle", False), "dir": f.parent})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import importlib
    try:
        importlib.import_module("matplotlib")
    except ModuleNotFoundError:
        sys.exit("report_recurrent: the curves need matplotlib, which `pip install -e .` does not bring: "
                 "pip install -e '.[report]'")
    runs = collect(args.paths)
    if not runs:
        sys.exit(f"no recurrent runs (summary.json with model=lstm) under {', '.join(map(str, args.paths))}")
    args.out.mkdir(parents=True, exist_ok=True)
    if runs[0]["dataset"] == "two_timescale":
        lines = two_clock_report(runs, args.out)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    copy = "max_length_solved" in runs[0]
    images = "pixels_per_step" in runs[0]
    windows = sorted({r["bptt"] for r in runs})
    order = ["backprop (truncated BPTT)", "DNI", "DNI + aux", "cDNI", "cDNI + aux"]
    order += sorted({variant(r) for r in runs} - set(order))
    cells: dict[tuple[str, int], list[str]] = defaultdict(list)
    bpc: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    accuracy: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in runs:
        if copy:
            value = str(r["max_length_solved"]) + ("" if r["status"] == "completed" else f" ({r['status']})")
            cells[(variant(r), r["bptt"])].append(value)
        elif images:
            accuracy[(variant(r), r["bptt"])].append(r.get("test/accuracy", float("nan")))
        else:
            bpc[(variant(r), r["bptt"])].append((r.get("valid/bpc", float("nan")), r.get("test/bpc", float("nan"))))
    for key, values in bpc.items():
        cells[key] = [bpc_cell(values)]
    for key, values in accuracy.items():
        cells[key] = [accuracy_cell(values)]
    if copy:
        cells = {key: [solved_cell(values)] for key, values in cells.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    what = ("longest sequence length N solved" if copy else
            f"test accuracy, {runs[0]['pixels_per_step']} pixel(s) a step" if images else
            "valid / test bits per character")
    tasks = sorted({r["dataset"] for r in runs})
    lines = [f"# {', '.join(tasks)}: {what}", "",
             f"Steps per run (windows of T): {', '.join(sorted({str(r['step']) for r in runs}))}; "
             f"hidden {sorted({r['hidden'] for r in runs})}; commit(s) {', '.join(sorted({r['commit'] for r in runs}))}; "
             f"machine {runs[0].get('machine/cpu', '?')} ({runs[0].get('machine/cpu_count', '?')} CPUs).", "",
             "| | " + " | ".join(f"T={t}" for t in windows) + " |", "|---" * (len(windows) + 1) + "|"]
    for v in order:
        if any((v, t) in cells for t in windows):
            lines.append(f"| {v} | " + " | ".join(", ".join(cells.get((v, t), ["–"])) for t in windows) + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    with open(args.out / "runs.csv", "w") as f:
        keys = ["dataset", "mode", "aux", "trace_lambda", "sg_trace", "sg_optim", "oracle", "bptt", "hidden", "seed", "step", "status", "max_length_solved",
                "valid/bpc", "test/bpc", "pixels_per_step", "test/accuracy", "wall_seconds", "commit", "dir"]
        f.write(",".join(keys) + "\n")
        for r in runs:
            f.write(",".join(str(r.get(k, "")) for k in keys) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # Copy: the curriculum against time steps seen. Text (images): validation BPC (test accuracy) and sg/cosine
    # against steps.
    cosine = ("sg/cosine", "cosine(ĝ, true future gradient)")
    panels = ([("curriculum/length", "curriculum length N")] if copy else
              [("test/accuracy", "test accuracy"), cosine] if images else [("valid/bpc", "valid bits per char"), cosine])
    width = max(3.2 * len(windows), 6.4)  # one T still leaves the legend room
    fig, axes = plt.subplots(len(panels), len(windows), figsize=(width, 3.0 * len(panels)),
                             sharey="row", squeeze=False)
    colours = dict(zip(order, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                               "tab:pink", "tab:olive")))
    for row_axes, (key, label) in zip(axes, panels):
        for ax, t in zip(row_axes, windows):
            for r in runs:
                if r["bptt"] != t:
                    continue
                rows = [row for row in read_jsonl(r["dir"] / "metrics.jsonl") if key in row]
                if rows:
                    ax.plot([row["step"] * (t if copy else 1) for row in rows], [row[key] for row in rows],
                            color=colours[variant(r)], label=variant(r), lw=1, marker="" if copy else ".")
            ax.set_title(f"T={t}")
            ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # side by side, long tick labels would run together
            ax.set_xlabel("time steps seen" if copy else "training steps (windows)")
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel(label)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    # As many legend columns as fit the width (about 2.2 inches a label); more labels wrap onto a second row.
    ncol = max(1, min(len(handles), int(width // 2.2)))
    rows = -(-len(handles) // ncol)
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.04 * rows - 0.04))
    fig.savefig(args.out / "curves.png", dpi=110)
    print("\n".join(lines))
    for name in ("table.md", "runs.csv", "curves.png"):
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
