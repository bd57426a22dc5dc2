"""scripts/sg_ceiling.py: the best agreement any affine (or small MLP) SG model could reach with the true future
gradient at a trained LSTM (the numbers: results/rnn/sg_ceiling.md)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "sg_ceiling.py"
spec = importlib.util.spec_from_file_location("sg_ceiling", SCRIPT)
ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ceiling)


def test_the_fits_find_a_map_that_exists_and_none_where_there_is_none():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2000, 12)).astype(np.float32)
    w, b = rng.normal(size=(12, 6)), rng.normal(size=6)
    truth = feats @ w + b
    got = ceiling.fit_cosines(feats, np.zeros_like(truth), truth, mlp_steps=1500)
    assert got["linear"] > 0.999 and got["linear_in"] > 0.999
    assert got["mlp"] > 0.9
    noise = rng.normal(size=truth.shape)  # nothing in the features predicts it
    got = ceiling.fit_cosines(feats, np.zeros_like(noise), noise, mlp_steps=300)
    assert abs(got["linear"]) < 0.1 and got["linear_in"] < 0.2


def test_no_affine_model_beats_the_in_sample_fit():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1000, 8))
    truth = np.tanh(feats @ rng.normal(size=(8, 4))) + rng.normal(size=(1000, 4))
    for seed in range(5):
        w = np.random.default_rng(seed).normal(size=(8, 4))
        own = feats @ w + 0.1 * seed
        got = ceiling.fit_cosines(feats, own, truth, mlp_steps=10)
        assert got["own_in"] <= got["linear_in"] + 1e-4
    # The run's M is the one that fits, scaled: the same cosine as the fit.
    fitted = ceiling.least_squares(feats[:500], truth[:500], feats[:500], ridge=0.0)
    got = ceiling.fit_cosines(feats, np.concatenate([3 * fitted, fitted]), truth, mlp_steps=10)
    assert got["own_in"] == pytest.approx(got["linear_in"], abs=1e-3)


@pytest.mark.slow
def test_it_reads_a_trained_runs_checkpoint_and_reports_every_cosine(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "sgrad.cli", "+exp=copy_cdni", "trainer.bptt=2", "trainer.steps=200",
                    "trainer.log_every=100", "checkpoint.every=100", "model.hidden=16", "log.grad_probe_every=0",
                    f"hydra.run.dir={run}"], check=True, capture_output=True, timeout=300)
    out = tmp_path / "ceiling.md"
    res = subprocess.run([sys.executable, str(SCRIPT), str(run), "--streams", "2", "--mlp-steps", "20",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = out.read_text().splitlines()[-1].split("|")
    assert row[1].strip() == "run" and row[3].strip() == "200"
    cosines = [float(c.split()[0]) for c in row[7:10]]
    assert all(-1 <= c <= 1 for c in cosines)
