"""How long a run takes to stop with a checkpoint after SIGTERM, as a preempting scheduler would send it.

    python scripts/stop_latency.py [--after 45] [--out results/bench/stop_latency.md] -- <sgrad-train overrides>

Starts `sgrad-train <overrides>` in a fresh run dir, sends SIGTERM `--after` seconds after the run logs that it is
compiling, and records when the acknowledgment came, when the process exited, at which step it stopped and whether
a checkpoint is there; then reruns the same command until it logs that it resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sgrad.run.provenance import git_commit, machine


def start(args: list[str]) -> tuple[subprocess.Popen, queue.Queue]:
    proc = subprocess.Popen([sys.executable, "-m", "sgrad.cli", *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put("")], daemon=True).start()
    return proc, lines


def wait_for(lines: queue.Queue, text: str, seen: list[str]) -> tuple[str, float]:
    while True:
        line = lines.get()
        seen.append(line)
        if not line:
            raise SystemExit(f"the run ended before it logged {text!r}:\n{''.join(seen[-20:])}")
        if text in line:
            return line.strip(), time.time()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--after", type=float, default=45.0, help="seconds after the compiling line")
    ap.add_argument("--out", type=Path, default=Path("results/bench/stop_latency.md"))
    ap.add_argument("overrides", nargs="+")
    a = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="stop-latency-")) / "run"
    args = [*a.overrides, f"hydra.run.dir={run}"]
    proc, lines = start(args)
    seen: list[str] = []
    _, compiling = wait_for(lines, "compiling the training step", seen)
    time.sleep(max(0.0, compiling + a.after - time.time()))
    while not lines.empty():
        seen.append(lines.get())
    pace = next((s.split("] - ")[-1].strip() for s in seen if "s per step" in s), "(no pace logged yet)")
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    said, acked = wait_for(lines, "will stop at step", seen)
    stopped, _ = wait_for(lines, "stopped by SIGTERM", seen)
    proc.wait()
    exited = time.time()
    step = int(stopped.split(" at step ")[1].split(";")[0])
    checkpoint = (run / "checkpoints" / str(step) / "commit_success.txt").is_file()
    again, again_lines = start(args)
    resumed, _ = wait_for(again_lines, "resuming from the checkpoint", [])
    again.send_signal(signal.SIGINT)  # the resume is what this checks: leave the run dir as it was
    again.wait()
    m = machine()
    command = "python scripts/stop_latency.py " + shlex.join([f"--after={a.after:g}", *a.overrides])
    text = "\n".join([
        "# A stop signal on a slow network", "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}. Commit: {git_commit()}.", f"Command: `{command}`.", "",
        f"SIGTERM {a.after:g} s after the run logged that it was compiling. The run had logged: `{pace}`.", "",
        "| | seconds after SIGTERM |", "|---|---|",
        f"| acknowledged (`{said.split('sgrad-train: ')[-1][:90]}...`) | {acked - sent:.1f} |",
        f"| exited (status {proc.returncode}), stopped at step {step}, checkpoint there: "
        f"{'yes' if checkpoint else 'no'} | {exited - sent:.1f} |", "",
        f"Rerunning the same command: `{resumed.split('] - ')[-1]}`.", ""])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
