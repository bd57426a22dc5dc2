"""Runs that survive: resume after SIGKILL/SIGTERM equals an uninterrupted run, corrupt checkpoints are
skipped, divergence keeps the last good checkpoint, and a failing multirun job is reported."""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_cfg, preempt_when_checkpointed
from sgrad.run.metrics import read_jsonl
from sgrad.run.record import DivergenceError, Preempted
from sgrad.run import train_and_evaluate


def _curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock rates, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _final_params(run_dir: Path):
    step = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    tree = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "default").absolute())
    return step, tree["params"]


def _assert_same_params(a, b):
    import jax
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cfg(idx_dir, *extra):
    return make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "mode=dni", "log.grad_probe_every=30", *extra)


@pytest.mark.slow
def test_preempted_run_resumes_exactly_in_the_same_run_dir(idx_dir, tmp_path):
    args = ("trainer.steps=400", "checkpoint.every=100", "trainer.eval_every=100")
    ref = train_and_evaluate(_cfg(idx_dir, *args), tmp_path / "ref")
    run = tmp_path / "run"
    preempt_when_checkpointed(run)
    with pytest.raises(Preempted) as stop:
        train_and_evaluate(_cfg(idx_dir, *args), run)
    assert 100 <= stop.value.step < 400
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    again = train_and_evaluate(_cfg(idx_dir, *args), run)
    assert again["step"] == 400 and again["test/accuracy"] == ref["test/accuracy"]
    assert _curve(run) == _curve(tmp_path / "ref")
    _assert_same_params(_final_params(run)[1], _final_params(tmp_path / "ref")[1])
    # TensorBoard's own reader sees each logged step once, and all of them.
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [r["step"] for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl") if "train/loss" in r]


def test_checkpoints_keep_the_newest_n(idx_dir, tmp_path):
    train_and_evaluate(_cfg(idx_dir, "trainer.steps=100", "checkpoint.every=20", "checkpoint.keep=2"), tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [80, 100]


@pytest.mark.slow
def test_resume_from_another_run_dir(idx_dir, tmp_path, caplog):
    ref = train_and_evaluate(_cfg(idx_dir, "trainer.steps=80", "checkpoint.every=40"), tmp_path / "ref")
    train_and_evaluate(_cfg(idx_dir, "trainer.steps=40", "checkpoint.every=40"), tmp_path / "a")
    with caplog.at_level(logging.WARNING):
        b = train_and_evaluate(_cfg(idx_dir, "trainer.steps=80", "checkpoint.every=40",
                                    f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert b["test/accuracy"] == ref["test/accuracy"]
    assert min(r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")) > 40
    # Orbax is asked for nothing it would warn about (read-only options on a restore).
    assert not [r for r in caplog.records if "read_only" in r.getMessage() or "read only" in r.getMessage()]
    with pytest.raises(ValueError, match="no readable checkpoint"):
        train_and_evaluate(_cfg(idx_dir, f"trainer.resume={tmp_path / 'nothing'}"), tmp_path / "c")


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(idx_dir, tmp_path, caplog):
    ref = train_and_evaluate(_cfg(idx_dir, "trainer.steps=100", "checkpoint.every=40"), tmp_path / "ref")
    run = tmp_path / "run"
    train_and_evaluate(_cfg(idx_dir, "trainer.steps=100", "checkpoint.every=40"), run)
    for f in (run / "checkpoints" / "100").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "default" in f.parts:
            f.write_bytes(b"\0garbage" * 4)
    with caplog.at_level(logging.WARNING, logger="sgrad"):
        again = train_and_evaluate(_cfg(idx_dir, "trainer.steps=100", "checkpoint.every=40"), run)
    assert any("checkpoint at step 100" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert again["test/accuracy"] == ref["test/accuracy"]
    assert _curve(run) == _curve(tmp_path / "ref")


DIVERGE = ("sg.optim.lr=1e12",)


@pytest.mark.slow
def test_divergence_names_the_last_good_checkpoint(idx_dir, tmp_path):
    good = tmp_path / "good"
    train_and_evaluate(_cfg(idx_dir, "trainer.steps=50", "checkpoint.every=50"), good)
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: non-finite .*SG model of interface.*"
                                              r"last good checkpoint \(step 50\) is in .*good/checkpoints"):
        train_and_evaluate(_cfg(idx_dir, "trainer.steps=300", "checkpoint.every=50", f"trainer.resume={good}",
                                *DIVERGE), run)
    assert sorted(p.name for p in (good / "checkpoints").iterdir() if p.name.isdigit()) == ["50"]
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


def test_divergence_before_any_checkpoint_says_there_is_none(idx_dir, tmp_path):
    with pytest.raises(DivergenceError, match=r"no checkpoint was saved before it \(checkpoint.every=50\)"):
        train_and_evaluate(_cfg(idx_dir, "trainer.steps=300", "checkpoint.every=50", "trainer.log_every=25",
                                *DIVERGE), tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert (tmp_path / "metrics.jsonl").read_text()


# --- real processes ----------------------------------------------------------------------------

SLOW_RUN = ["mode=dni", "model.width=64", "sg.width=128", "trainer.steps=300", "trainer.batch_size=32",
            "trainer.log_every=25", "trainer.progress=false", "checkpoint.every=100", "log.grad_probe_every=100",
            "trainer.eval_every=100", "trainer.eval_batch_size=128", "optim.lr=1e-3", "optim.schedule=constant",
            "sg.optim.lr=1e-3", "sg.optim.schedule=constant"]


def _cmd(idx_dir, run_dir, *extra):
    return [sys.executable, "-m", "sgrad.cli", "dataset=idx", f"dataset.dir={idx_dir}", *SLOW_RUN, *extra,
            f"hydra.run.dir={run_dir}"]


def _wait_for_checkpoint(proc, run_dir: Path, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if list((run_dir / "checkpoints").glob("*/commit_success.txt")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be interrupted: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, idx_dir):
    run = tmp_path_factory.mktemp("reference") / "run"
    res = subprocess.run(_cmd(idx_dir, run), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


@pytest.mark.slow
def test_killed_process_resumes_to_the_uninterrupted_result(idx_dir, tmp_path, reference_run):
    # SIGKILL leaves no chance to save: the run resumes from its last periodic checkpoint. (A SIGTERM saves
    # where it is: tests/test_loop.py, in every layout.)
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(idx_dir, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    interrupted_at = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert interrupted_at < 300
    res = subprocess.run(_cmd(idx_dir, run), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _curve(run) == _curve(reference_run)
    ref_step, ref_params = _final_params(reference_run)
    step, params = _final_params(run)
    assert step == ref_step == 300
    _assert_same_params(params, ref_params)


@pytest.mark.slow
def test_cli_divergence_message_and_exit_code(idx_dir, tmp_path):
    res = subprocess.run(_cmd(idx_dir, tmp_path / "run", "sg.optim.lr=1e12", "sg.optim.name=sgd"),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 3
    line = [l for l in res.stderr.splitlines() if l.startswith("sgrad-train:")]
    assert len(line) == 1 and "diverged at step" in line[0] and "SG model of interface" in line[0]


@pytest.mark.slow
def test_multirun_reports_the_failed_job_and_keeps_the_others(idx_dir, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sgrad.cli", "-m", "dataset=idx", f"dataset.dir={idx_dir}", *SLOW_RUN,
           "trainer.steps=100", "sg.optim.name=sgd", "sg.optim.lr=1e-3,1e12", f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "1 job(s) of the sweep" in res.stderr and "1: diverged" in res.stderr
    assert (sweep / "failed_jobs.txt").read_text().strip() == "1: diverged"
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    rep = subprocess.run([sys.executable, "scripts/report.py", str(sweep)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert rep.returncode == 0, rep.stderr
    assert "Not completed (excluded): 1" in (sweep / "report" / "table.md").read_text()
    wrote = [l.removeprefix("wrote ") for l in rep.stdout.splitlines() if l.startswith("wrote ")]
    names = {Path(w).name for w in wrote}
    assert {"curves.png", "provenance.md", "runs.csv", "table.md"} <= names <= {"curves.png", "provenance.md",
                                                                             "runs.csv", "table.md",
                                                                             "diagnostics.png"}
    assert all(Path(w).is_file() and Path(w).parent == sweep / "report" for w in wrote)


def test_multirun_says_why_a_job_could_not_run(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sgrad.cli", "-m", "+debug=tiny", "trainer.batch_size=-5,-6",
           f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    lines = (sweep / "failed_jobs.txt").read_text().splitlines()
    assert lines[0].startswith("0: failed: trainer.batch_size=-5 is not allowed") and "trainer.batch_size=-6" in lines[1]
    assert "no summary" not in res.stderr and "0: failed: trainer.batch_size=-5" in res.stderr
