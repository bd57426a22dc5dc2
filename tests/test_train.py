"""The loop: every mode and model learns on data the test writes, compiles once, and stops on NaN."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FASHION_DIR, device_data, make_cfg
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.run.metrics import read_jsonl
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.run.record import DivergenceError
from sgrad.core.step import create_state, make_train_step
from sgrad.run import train_and_evaluate


def _train(idx_dir, tmp_path, *overrides):
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "dataset.download=false", *overrides)
    return train_and_evaluate(cfg, tmp_path)


# The FCN learns in backprop, DNI, cDNI, DGL and DDG in the fast tier; complete unlocking, FR and the CNN runs are
# slow (their steps are checked against their rules in the fast tier: tests/test_dni.py, tests/test_decoupled.py,
# tests/test_fr.py). The CNN runs one mode of each kind of interface: an SG model, an auxiliary classifier, a delay.
_slow = lambda model, mode: pytest.param(model, mode, marks=pytest.mark.slow)
_cnn = lambda mode: _slow("cnn", mode)


@pytest.mark.parametrize("model, mode", [("fcn", mode) for mode in ("backprop", "dni", "cdni")]
                         + [_cnn("dni")]
                         + [_slow("fcn", "dni_full"), _slow("fcn", "cdni_full")]
                         + [("fcn", "dgl"), _cnn("dgl"), ("fcn", "ddg"), _cnn("ddg"), _slow("fcn", "fr")])
def test_every_mode_learns(idx_dir, tmp_path, mode, model):
    layers = 4 if model == "fcn" else 3
    summary = _train(idx_dir, tmp_path, f"mode={mode}", f"model.name={model}", f"model.layers={layers}",
                     "trainer.steps=300", "si.width=64",
                     "sg.hidden_layers=1" if mode.startswith("dni") else "sg.hidden_layers=0")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert summary["status"] == "completed" and summary["step"] == 300
    assert summary["test/accuracy"] > 0.5, summary  # chance is 0.1
    keys = set().union(*rows)
    if mode == "dgl":  # every module's auxiliary classifier learns too
        assert {"aux/loss/1", "aux/loss/2", "aux/accuracy/1", "aux/accuracy/2"} <= keys
        assert rows[-2]["aux/accuracy/2"] > 0.5 and rows[-2]["aux/loss/1"] < rows[0]["aux/loss/1"]
    elif mode in ("ddg", "fr"):
        assert {f"{mode}/cosine/1", f"{mode}/norm_ratio/1", f"{mode}/staleness/1"} <= keys
        probed = [r for r in rows if f"{mode}/staleness/1" in r][-1]
        k = layers  # one module per layer
        assert [probed[f"{mode}/staleness/{i}"] for i in range(1, k)] == [k - i for i in range(1, k)]
    elif mode != "backprop":
        assert {"sg/loss/1", "sg/loss/2", "sg/cosine/1", "sg/norm_ratio/2"} <= keys
        sg = [r["sg/loss/1"] for r in rows if "sg/loss/1" in r]
        assert all(v >= 0 for v in sg)


def test_run_dir_contents_and_epoch_evaluation(idx_dir, tmp_path):
    # 1024 examples / batch 32 = 32 steps per epoch; 70 steps -> evaluations at 32, 64 and 70.
    _train(idx_dir, tmp_path, "mode=dni", "trainer.steps=70", "log.grad_probe_every=20")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "test/accuracy" in r] == [32, 64, 70]
    assert [r["step"] for r in rows if "sg/cosine/1" in r] == [20, 40, 60, 70]
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == sorted(train_steps) and train_steps[-1] == 70
    assert all(r["watch/perf/steps_per_sec"] > 0 for r in rows if "watch/perf/steps_per_sec" in r)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == 70 and "test/error" in summary and "train/loss" in summary


def test_epochs_override_steps(idx_dir, tmp_path):
    summary = _train(idx_dir, tmp_path, "mode=backprop", "trainer.epochs=2", "trainer.steps=5")
    assert summary["step"] == 64


def test_chunks_compile_once(idx_dir, tmp_path, caplog):
    # Short final chunks, evaluation and probes in between must not trigger recompilation.
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            _train(idx_dir, tmp_path, "mode=dni", "trainer.steps=90", "log.grad_probe_every=15")
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r.getMessage()[:40] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert sum(m.startswith("Compiling jit(chunk)") for m in compiled) == 1, compiled
    assert sum(m.startswith("Compiling jit(evaluate)") for m in compiled) == 1, compiled


def test_divergence_stops_with_step_and_metric_and_keeps_logs(idx_dir, tmp_path):
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: non-finite .*loss"):
        _train(idx_dir, tmp_path, "mode=dni", "trainer.steps=200", "sg.optim.lr=1e9", "sg.optim.name=sgd",
               "sg.optim.momentum=0", "log.grad_probe_every=0")
    def strict(token):
        raise AssertionError(f"summary.json holds bare {token}, which is not JSON")
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=strict)
    assert summary["status"] == "diverged"
    # The loss that diverged is there, as null, and named.
    assert "train/loss" in summary["non_finite"] and summary["train/loss"] is None
    rows = read_jsonl(tmp_path / "metrics.jsonl")  # the log is kept and shows the non-finite values
    assert any(v is None for r in rows for v in r.values())


@pytest.mark.slow
def test_same_seed_same_metrics(idx_dir, tmp_path):
    a = _train(idx_dir, tmp_path / "a", "mode=cdni", "trainer.steps=60", "seed=3")
    b = _train(idx_dir, tmp_path / "b", "mode=cdni", "trainer.steps=60", "seed=3")
    assert a["train/loss"] == b["train/loss"] and a["test/accuracy"] == b["test/accuracy"]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in rows]
    assert strip(read_jsonl(tmp_path / "a" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    c = _train(idx_dir, tmp_path / "c", "mode=cdni", "trainer.steps=60", "seed=4")
    assert c["train/loss"] != a["train/loss"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_cdni_learns(tmp_path):
    cfg = make_cfg("dataset.name=fashion_mnist", "dataset.download=false", "mode=cdni", "model.layers=3",
                   "model.width=256", "sg.hidden_layers=0", "trainer.batch_size=256", "trainer.steps=200",
                   "trainer.log_every=50", "trainer.eval_batch_size=1000", "optim.lr=1e-3", "sg.optim.lr=1e-3")
    summary = train_and_evaluate(cfg, tmp_path)
    assert summary["test/accuracy"] > 0.75, summary  # chance is 0.1


def _tiny_runner_inputs(cfg, shape):
    """The step of cfg's mode, device data, 5 index rows of batch 16, and a fresh initial state per call."""
    net = build_network(cfg, shape, 10)
    rng = np.random.default_rng(0)
    xs, ys, mean, std = device_data(rng, 64, shape)
    params, stats = init_variables(net, jax.random.key(0), jnp.zeros((16, *shape)))
    tx = build_train_optimizer(cfg, 10)
    idx = rng.integers(0, 64, (5, 16)).astype(np.int32)
    # The runners donate the state: every run starts from its own copy.
    fresh = lambda: create_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx)
    return make_train_step(net, tx), xs, ys, mean, std, idx, fresh


@pytest.mark.slow  # a CNN: its convolutions compile slowly (the FCN's chunk: the fast tier's chunk tests)
@pytest.mark.parametrize("library", ["eigen", "ynnpack"])
def test_a_conv_networks_compiled_chunk_equals_its_steps_one_by_one(library, monkeypatch):
    # The chunk's loop compiles the convolutions' gradients (sgrad/models/convolution.py) with the library the
    # run measured faster (sgrad/devices/conv_library.py); both give the plain step's results.
    monkeypatch.setenv("SGRAD_CPU_CONV", library)
    cfg = make_cfg("mode=cdni", "model.name=cnn", "model.layers=3", "sg.hidden_layers=0")
    step, xs, ys, mean, std, idx, fresh = _tiny_runner_inputs(cfg, (8, 8, 1))
    s1, m1 = make_chunk_runner(step, mean, std)(fresh(), xs, ys, idx, np.int32(4))
    s2, losses = fresh(), []
    for i in range(4):
        s2, m = jax.jit(step)(s2, preprocess(xs[idx[i]], mean, std), ys[idx[i]])
        losses.append(m["loss"])
    assert int(s1.step) == int(s2.step) == 4
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m1["loss"], np.mean(losses), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 3])
def test_chunk_reports_mean_metrics_and_the_last_steps_norms(n):
    # The loop skips the norm diagnostics on all but a chunk's last step (they are a fifth of a small step).
    # SGD: Adam divides by the root of tiny early SG gradients and so magnifies float rounding.
    cfg = make_cfg("mode=dni", "model.layers=3", "model.width=16", "sg.hidden_layers=0", "optim.name=sgd",
                   "sg.optim.name=sgd")
    step, xs, ys, mean, std, idx, fresh = _tiny_runner_inputs(cfg, (6, 6, 1))
    state, per_step = fresh(), []
    for i in range(n):
        state, m = jax.jit(step)(state, preprocess(xs[idx[i]], mean, std), ys[idx[i]])
        per_step.append(m)
    s, m = make_chunk_runner(step, mean, std)(fresh(), xs, ys, idx, np.int32(n))
    assert int(s.step) == n
    np.testing.assert_allclose(m["loss"], np.mean([p["loss"] for p in per_step]), rtol=1e-5)
    np.testing.assert_allclose(m["sg/loss/1"], np.mean([p["sg/loss/1"] for p in per_step]), rtol=1e-5)
    for k in ("watch/norm/grad_modules", "watch/norm/grad_sg", "watch/norm/update_modules", "watch/norm/params_modules"):
        np.testing.assert_allclose(m[k], per_step[-1][k], rtol=1e-5)
    if n > 1:
        assert not np.isclose(m["watch/norm/params_modules"], per_step[0]["watch/norm/params_modules"], rtol=1e-7)
