"""How far the LSTM's synthetic gradient agrees with the true future gradient on Copy, setting by setting.

    python scripts/recurrent_probe.py [--windows 6000] [--bptt 2] [--seed 0] [--only NAME [--only NAME ...]]
                                      [--workdir outputs/recurrent_probe] [--out results/rnn/sg_probe.md]

Each setting is one run of `sgrad-train +exp=copy_dni trainer.bptt=T trainer.steps=W log.grad_probe_every=500`
plus its overrides. The table gives `sg/cosine` (ĝ against the true gradient of the rest of the episode, over
every window boundary of a fresh stream: sgrad/core/recurrent.py, future_gradient_probe) at each probe, its
mean over the second half of the run, and the longest Copy length solved. The settings separate what M can
learn (the core held still) from what it can track while the core learns, and compare its targets: one
window bootstrapped (the paper's) or the λ-return over the next windows (sg.trace_lambda).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "preset (one-window target)": [],
    "core held still: M alone": ["optim.lr=1e-12", "sg.optim.lr=1e-3", "dataset.start_length=4"],
    "core ignores ĝ (sg.scale=0)": ["sg.scale=0"],
    "M 10x faster (sg.optim.lr=1e-2)": ["sg.optim.lr=1e-2"],
    "M with a hidden layer": ["sg.hidden_layers=1", "sg.width=256"],
    "λ-return, λ=0.8 over 4 windows": ["sg.trace_lambda=0.8", "sg.trace_windows=4"],
    "λ-return, λ=0.9 over 8 windows": ["sg.trace_lambda=0.9", "sg.trace_windows=8"],
    "λ=0.9 over 8, core 3x slower": ["sg.trace_lambda=0.9", "sg.trace_windows=8", "optim.lr=3e-4",
                                     "sg.optim.lr=1e-3"],
    "cDNI (M sees the next window's targets)": ["mode=cdni"],
    "cDNI, λ=0.9 over 8 windows": ["mode=cdni", "sg.trace_lambda=0.9", "sg.trace_windows=8"],
    # λ=1: M regresses onto the next 8 windows' true gradient, bootstrapped only past them (a Copy episode of
    # the lengths solved at T=2 spans fewer windows, so it is mostly the true future gradient).
    "cDNI, λ=1 over 8 windows": ["mode=cdni", "sg.trace_lambda=1.0", "sg.trace_windows=8"],
    "cDNI, λ=0.95 over 8 windows": ["mode=cdni", "sg.trace_lambda=0.95", "sg.trace_windows=8"],
    "M by least squares, λ=0.9 over 8 windows": ["sg.optim.name=rls", "sg.trace_lambda=0.9", "sg.trace_windows=8"],
    "cDNI, M by least squares, λ=0.9 over 8": ["mode=cdni", "sg.optim.name=rls", "sg.trace_lambda=0.9",
                                              "sg.trace_windows=8"],
    # Accumulate BP(λ)'s trace holds only a small core (batch x 2H x M's parameters): 32 units, beside the preset's
    # one-window target on the same core.
    "32 units: preset (one-window target)": ["model.hidden=32"],
    "32 units: accumulate BP(λ), λ=0.9": ["model.hidden=32", "sg.trace=accumulate", "sg.trace_lambda=0.9"],
}


def run(name: str, overrides: list[str], args) -> dict:
    run_dir = args.workdir / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # Hydra parses the path: ASCII
    cmd = [sys.executable, "-m", "sgrad.cli", "+exp=copy_dni", f"trainer.bptt={args.bptt}",
           f"trainer.steps={args.windows}", "log.grad_probe_every=500", f"seed={args.seed}", "checkpoint.every=0",
           "trainer.progress=false", f"hydra.run.dir={run_dir}", *overrides]
    print(f"{name}: {' '.join(cmd[2:])}", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{name} failed:\n{res.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"name": name, "overrides": overrides, "cosine": [r["sg/cosine"] for r in rows if "sg/cosine" in r],
            "solved": summary.get("max_length_solved"), "commit": summary.get("commit", "?"),
            "cpu": summary.get("machine/cpu", "?")}


def table(results: list[dict], args) -> str:
    probes = max(len(r["cosine"]) for r in results)
    head = " | ".join(str(500 * (i + 1)) for i in range(probes))
    lines = [f"# The LSTM's synthetic gradient against the true future gradient (Copy, T={args.bptt})", "",
             f"`python scripts/recurrent_probe.py --windows {args.windows} --bptt {args.bptt} --seed {args.seed}`; "
             f"each row `sgrad-train +exp=copy_dni trainer.bptt={args.bptt} trainer.steps={args.windows} "
             f"log.grad_probe_every=500 seed={args.seed}` plus its overrides. Commit(s) "
             f"{', '.join(sorted({r['commit'] for r in results}))}; machine {results[0]['cpu']}.", "",
             "sg/cosine: ĝ against the true gradient of the rest of the episode, over every window boundary of a "
             "fresh stream (flattened over boundaries and batch). Solved: the longest Copy length whose error fell "
             "below 0.15 bits.", "",
             f"| setting | overrides | sg/cosine at window {head} | mean, second half | solved |",
             "|---|---|" + "---|" * probes + "---|---|"]
    for r in results:
        cos = r["cosine"]
        late = statistics.mean(cos[len(cos) // 2:]) if cos else float("nan")
        cells = " | ".join(f"{c:+.2f}" for c in cos) + " |" * (probes - len(cos))
        lines.append(f"| {r['name']} | {' '.join(r['overrides']) or '–'} | {cells} | {late:+.2f} | {r['solved']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=6000)
    ap.add_argument("--bptt", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", help="a setting's name, repeated for several (default: all; the "
                    "names hold commas)")
    ap.add_argument("--workdir", type=Path, default=Path("outputs/recurrent_probe"))
    ap.add_argument("--out", type=Path, default=Path("results/rnn/sg_probe.md"))
    args = ap.parse_args()
    unknown = set(args.only or ()) - set(SETTINGS)
    if unknown:
        sys.exit(f"--only {sorted(unknown)}: not a setting; the settings are {list(SETTINGS)}")
    chosen = SETTINGS if not args.only else {k: SETTINGS[k] for k in args.only}
    results = [run(name, overrides, args) for name, overrides in chosen.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(results, args))
    print(f"wrote {args.out} (runs in {args.workdir})")


if __name__ == "__main__":
    main()
