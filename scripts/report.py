"""Collect the runs of a Hydra multirun into a table, a CSV and convergence curves.

    python scripts/report.py MULTIRUN_DIR [--out DIR] [--paper FILE.yaml]

Reads each run's summary.json, .hydra/config.yaml and metrics.jsonl; writes
table.md (rows: mode, columns: layers, mean ± std test error over seeds; for language models validation
bits per character, with test BPC and tokens/s beside it), runs.csv (one row per run), curves.png (the same
measure vs step, one panel per depth),
diagnostics.png (each decoupled mode's per-module signal at the deepest network: SG cosine to the true
gradient, DGL's auxiliary accuracy, DDG's delayed-vs-current cosine; mean over seeds)
and provenance.md (the sweep command, commit and machine). Nothing is typed in by hand.
With --paper, a YAML file {mode: {layers: test error in %}} of published numbers is
shown beside ours, marked as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import dataclasses
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from sgrad.modes import RULES

# Rows in the order the modes are defined (sgrad/modes/), the baseline first.
MODES = ("backprop", *(name for name in RULES if name != "backprop"))
# Per-module signals each decoupled mode logs, and what to call them on a plot.
DIAGNOSTICS = dict(rule.diagnostic for rule in RULES.values() if rule.diagnostic)
FIELDS = ("run", "status", "dataset", "model", "layers", "mode", "seed", "step", "test/error", "test/accuracy",
          "valid/bpc", "test/bpc", "watch/perf/tokens_per_sec", "train/loss", "wall_seconds", "commit", "overrides")


@dataclasses.dataclass(frozen=True)
class Measure:
    """What the table and curves compare runs by (lower is better)."""

    key: str        # in summary.json and metrics.jsonl
    label: str
    scale: float    # shown as value * scale
    digits: int


ERROR = Measure("test/error", "test error (%)", 100.0, 2)
BPC = Measure("valid/bpc", "validation bits per character", 1.0, 3)


def measure_of(runs: list[dict]) -> Measure:
    """Validation BPC for language-model runs (model=transformer), test error otherwise."""
    return BPC if any(BPC.key in r for r in runs) else ERROR
# Swept keys that have their own place in the table (columns, rows, spread over seeds).
PLACED = {"model.layers", "mode", "seed"}


def load_runs(root: Path) -> list[dict]:
    runs, keys = [], (ERROR.key, BPC.key)
    for summary_path in sorted(root.rglob("summary.json")):
        run_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        curve, diagnostics = [], defaultdict(list)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                for key in keys:
                    if key in row:
                        curve.append((row["step"], row[key]))
                for key, value in row.items():
                    if key.rsplit("/", 1)[0] in DIAGNOSTICS and value is not None:
                        diagnostics[key].append((row["step"], value))
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        runs.append({**summary, "run": str(run_dir.relative_to(root)), "mode": str(cfg.mode),
                     # your own model (model=custom) has no model.layers: its depth is the modules it was cut into
                     "layers": int(cfg.model.layers) if str(cfg.model.name) != "custom" else
                     int(summary.get("modules", 0)), "seed": int(cfg.seed), "curve": curve,
                     "diagnostics": dict(diagnostics),
                     "overrides": " ".join(overrides)})
    _label_variants(runs)
    return runs


def _label_variants(runs: list[dict]) -> None:
    """Name each run's row: its mode, plus any other override that differs between runs of the sweep."""
    parsed = [dict(o.split("=", 1) for o in r["overrides"].split() if "=" in o) for r in runs]
    keys = sorted({k for p in parsed for k in p} - PLACED)
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    for r, p in zip(runs, parsed):
        extra = ", ".join(f"{k}={p.get(k, '(default)')}" for k in varying)
        r["row"] = r["mode"] + (f" ({extra})" if extra else "")


def _mean_std(values: list[float], seeds: int = 1, scale: float = 100.0, digits: int = 2) -> str:
    """Mean ± std (in % by default); a cell with fewer runs than the sweep has seeds says how many it has."""
    if not values:
        return "–"
    pct = [scale * v for v in values]
    fewer = f" (n={len(pct)})" if len(pct) < seeds else ""
    if len(pct) == 1:
        return f"{pct[0]:.{digits}f}{fewer}"
    return f"{statistics.mean(pct):.{digits}f} ± {statistics.stdev(pct):.{digits}f}{fewer}"


def missing_jobs(root: Path) -> list[str]:
    """The jobs a basic-sweeper multirun asked for that left no summary.json (interrupted or never started), as
    "N (overrides)"; empty when the sweep is complete or its jobs cannot be listed (another sweeper)."""
    multirun = root / "multirun.yaml"
    if not multirun.exists():
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    hydra_cfg = OmegaConf.load(multirun).hydra
    if "basic_sweeper" not in str(hydra_cfg.sweeper.get("_target_", "")):
        return []
    # As the basic sweeper does: its params first, the command line's overrides after them (they win).
    params = {str(k): str(v) for k, v in (hydra_cfg.sweeper.get("params") or {}).items()}
    task = list(hydra_cfg.overrides.task)
    typed = {o.split("=", 1)[0] for o in task}
    overrides = [f"{k}={v}" for k, v in params.items() if k not in typed] + task
    jobs = [job for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
            for job in batch]
    return [f"{i} ({' '.join(o for o in job if o.split('=')[0] in PLACED or ',' in str(params.get(o.split('=')[0], '')))})"
            for i, job in enumerate(jobs) if not (root / str(i) / "summary.json").exists()]


def table(runs: list[dict], paper: dict | None = None, missing: list[str] = ()) -> str:
    """Markdown: the runs' measure (test error in %, or validation BPC) by mode (rows) and depth (columns), mean ±
    std over seeds; language models add test BPC and tokens/s per mode."""
    m_ = measure_of(runs)
    depths = sorted({r["layers"] for r in runs})
    order = {m: i for i, m in enumerate(MODES)}
    modes = sorted({r["row"] for r in runs}, key=lambda row: (order.get(row.split()[0], 9), row))
    cells = defaultdict(list)
    for r in runs:
        if r.get("status") == "completed" and isinstance(r.get(m_.key), float):
            cells[(r["row"], r["layers"])].append(r[m_.key])
    seeds = sorted({r["seed"] for r in runs})
    unit = "blocks" if all(r.get("model") == "transformer" for r in runs) else "layers"
    head = f"| {m_.label} | " + " | ".join(f"{d} {unit}" for d in depths) + " |"
    rule = "|---|" + "---|" * len(depths)
    rows = [f"| {m} | " + " | ".join(_mean_std(cells[(m, d)], len(seeds), m_.scale, m_.digits) for d in depths) + " |"
            for m in modes]
    if paper:
        rows += [f"| {m} (paper) | " + " | ".join(str(paper[m].get(d, "–")) for d in depths) + " |"
                 for m in modes if m in paper]
    def baseline(row: str) -> str:
        """The backprop row run with the same other overrides."""
        return "backprop" + row[len(row.split()[0]):]

    gaps = [row for row in modes if not row.startswith("backprop") and baseline(row) in modes]
    if gaps:
        name = "error minus backprop's (points)" if m_ is ERROR else "BPC minus backprop's"
        rows += ["", f"| {name} | " + " | ".join(f"{d} {unit}" for d in depths) + " |", rule]
        for row in gaps:
            diffs = []
            for d in depths:
                ours, theirs = cells[(row, d)], cells[(baseline(row), d)]
                diffs.append(f"{m_.scale * (statistics.mean(ours) - statistics.mean(theirs)):+.{m_.digits}f}"
                             if ours and theirs else "–")
            rows.append(f"| {row} | " + " | ".join(diffs) + " |")
    if m_ is BPC:
        done = [r for r in runs if r.get("status") == "completed"]
        rows += ["", "| per mode, all depths | test BPC | tokens/s (training, last chunk) |", "|---|---|---|"]
        for m in modes:
            mine = [r for r in done if r["row"] == m]
            rows.append(f"| {m} | {_mean_std([r['test/bpc'] for r in mine], len(seeds), 1.0, 3)} | "
                        f"{_mean_std([r['watch/perf/tokens_per_sec'] for r in mine], len(seeds), 1.0, 0)} |")
    common = set.intersection(*(set(r["overrides"].split()) for r in runs))
    shared = " ".join(o for o in runs[0]["overrides"].split() if o in common and o.split("=")[0] not in PLACED)
    note = f"\nAll runs: `{shared}`." if shared else ""
    note += f"\nSeeds: {', '.join(map(str, seeds))} (mean ± std where more than one)."
    failed = [r["run"] for r in runs if r.get("status") != "completed"]
    if failed:
        note += f" Not completed (excluded): {', '.join(failed)}."
    if missing:
        note += f"\nMissing from the sweep (no summary.json: not run yet or interrupted): {', '.join(missing)}."
    return "\n".join([head, rule, *rows]) + "\n" + note + "\n"


def write_csv(runs: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in runs:
            w.writerow({k: r.get(k, "") for k in FIELDS})


def plot_curves(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m_ = measure_of(runs)
    depths = sorted({r["layers"] for r in runs})
    fig, axes = plt.subplots(1, len(depths), figsize=(4.5 * len(depths), 3.6), squeeze=False, sharey=True)
    rows = sorted({r["row"] for r in runs})
    colors = {row: f"C{i}" for i, row in enumerate(rows)}
    for ax, depth in zip(axes[0], depths):
        for row in rows:
            for i, r in enumerate(x for x in runs if x["layers"] == depth and x["row"] == row and x["curve"]):
                steps, errs = zip(*r["curve"])
                # Markers, so that a run evaluated once or twice still shows.
                ax.plot(steps, [m_.scale * e for e in errs], color=colors[row], alpha=0.85, marker="o", ms=3,
                        label=row if i == 0 else None)
        # your own model (model=custom) is counted in the modules it was cut into, the paper's in layers
        unit = {"custom": "modules", "transformer": "blocks"}.get(
            next((r.get("model") for r in runs if r["layers"] == depth), ""), "layers")
        ax.set_title(f"{depth} {unit}")
        held_out = "validation" if m_ is BPC else "test"
        ax.set_xlabel(f"training step ({held_out} set: every trainer.eval_every steps, and at the end)", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(m_.label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MODULE_LINES = ("-", "--", ":", "-.")


def series_style(rows: list[str], row: str, module: int) -> dict:
    """A mode's colour, a module's line style: module 1 and 2 of one mode stay apart (shades of one colour did
    not)."""
    return {"color": f"C{rows.index(row) % 10}", "linestyle": MODULE_LINES[(module - 1) % len(MODULE_LINES)]}


def plot_diagnostics(runs: list[dict], path: Path) -> bool:
    """One panel per diagnostic the runs logged, at the deepest network that has it: one line per mode and
    interface (mean over seeds). False when no run logged any."""
    families = [f for f in DIAGNOSTICS if any(k.startswith(f + "/") for r in runs for k in r["diagnostics"])]
    if not families:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.6), squeeze=False)
    for ax, family in zip(axes[0], families):
        having = [r for r in runs if any(k.startswith(family + "/") for k in r["diagnostics"])]
        depth = max(r["layers"] for r in having)
        series = defaultdict(lambda: defaultdict(list))  # (row, interface) -> step -> values over seeds
        for r in having:
            if r["layers"] != depth:
                continue
            for key, points in r["diagnostics"].items():
                if key.startswith(family + "/"):
                    for step, value in points:
                        series[(r["row"], int(key.rsplit("/", 1)[1]))][step].append(value)
        for j, ((row, i), by_step) in enumerate(sorted(series.items())):
            steps = sorted(by_step)
            # Markers where points are few: a series of one point (a short run) is otherwise invisible.
            ax.plot(steps, [statistics.mean(by_step[s]) for s in steps], label=f"{row}, module {i}",
                    marker="o" if len(steps) <= 20 else None, markersize=3,
                    **series_style(sorted({k[0] for k in series}), row, i))
        ax.set_title(f"{DIAGNOSTICS[family]}, {depth} layers", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def provenance(root: Path, runs: list[dict]) -> str:
    lines = ["# Provenance", ""]
    multirun = root / "multirun.yaml"
    if multirun.exists():
        task = OmegaConf.load(multirun).hydra.overrides.task
        lines += ["Command:", "", "```", "sgrad-train -m " + " ".join(task), "```", ""]
    commits = sorted({r.get("commit", "unknown") for r in runs})
    lines.append(f"Commit: {', '.join(commits)}")
    machines = sorted({f"{r.get('machine/cpu', '?')} ({r.get('machine/cpu_count', '?')} CPUs), "
                       f"{r.get('machine/platform', '?')}, jax {r.get('machine/jax', '?')}" for r in runs})
    lines.append(f"Machine: {'; '.join(machines)}")
    lines.append(f"Runs: {len(runs)}; wall time {sum(r.get('wall_seconds', 0) for r in runs) / 60:.1f} min in all")
    return "\n".join(lines) + "\n"


def require_matplotlib() -> None:
    """Say which install line brings matplotlib before any file is written (`pip install -e .` has none)."""
    import importlib
    try:
        importlib.import_module("matplotlib")
    except ModuleNotFoundError:
        raise SystemExit("report: the curves need matplotlib, which `pip install -e .` does not bring: "
                         "pip install -e '.[report]'")


def main() -> None:
    require_matplotlib()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a multirun dir (or any folder of run dirs)")
    ap.add_argument("--out", type=Path, help="where to write the report (default: ROOT/report)")
    ap.add_argument("--paper", type=Path, help="YAML {mode: {layers: published test error %%}}")
    args = ap.parse_args()
    paper = None
    if args.paper:
        raw = OmegaConf.to_container(OmegaConf.load(args.paper))
        paper = {str(m): {int(d): v for d, v in row.items()} for m, row in raw.items()}
    runs = load_runs(args.root)
    if not runs:
        raise SystemExit(f"report: no summary.json under {args.root}")
    out = args.out or args.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table(runs, paper, missing_jobs(args.root)))
    write_csv(runs, out / "runs.csv")
    plot_curves(runs, out / "curves.png")
    written = ["table.md", "runs.csv", "curves.png"]
    if plot_diagnostics(runs, out / "diagnostics.png"):
        written.append("diagnostics.png")
    (out / "provenance.md").write_text(provenance(args.root, runs))
    print((out / "table.md").read_text())
    for name in written + ["provenance.md"]:
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
