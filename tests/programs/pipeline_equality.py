"""parallel=pipeline on K CPU devices (argv[1]) equals the sequential schedule and, drained, the single-device step."""

import sys

import jax
import numpy as np

from conftest import make_cfg, max_diff, program_setup
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.core.step import make_train_step
from sgrad.devices.chunk import make_chunk_runner

K = int(sys.argv[1])
assert jax.device_count() == K
rng = np.random.default_rng(0)
B = 16

def setup(*overrides, shape=(6, 6, 1)):
    cfg = make_cfg(f"model.layers={K}", "model.width=16", "sg.hidden_layers=1", "sg.width=32", *overrides)
    return program_setup(cfg, shape, B, rng)

def moved(a, b):
    # Every module, SG model and synthetic input model changed somewhere.
    models = lambda p: list(p["modules"]) + list(p["interface"]) + list(p["si"])
    return all(max_diff(x, y) > 0 for x, y in zip(models(a), models(b)))

# 1. Pipelined (shard_map, ppermute, state in slots) == the same schedule in plain Python.
# SGD, because Adam divides by the root of tiny early SG gradients and so magnifies float rounding.
sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]
# Each case at one device count (CI time): 2 has only first and last stages, 4 has middle ones too (and cDNI with
# synthetic inputs sends every kind of message a middle stage can).
cases = {2: [("cdni", "fcn", (6, 6, 1)), ("dni", "cnn", (8, 8, 1))],
         4: [("cdni_full", "fcn", (6, 6, 1))]}[K]
for mode, model, shape in cases:
    net, tx, fresh, xs, ys, pre, _ = setup(f"mode={mode}", f"model.name={model}", "si.width=32", *sgd,
                                           shape=shape)
    T = 3 * K + 4  # fill, steady state with every SG target arriving, several times over
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)
    pipe, state = build_pipeline(net, tx, fresh(), shape, B)
    run = make_pipeline_runner(pipe, pre, jax.devices())
    state, metrics = run(state, xs, ys, idx, np.int32(T))
    got = to_train_state(pipe, state)
    ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
    start = fresh()
    assert int(got.step) == int(ref.step) == T
    assert moved(got.params, start.params), "every module and SG model must have been updated"
    d = max_diff(got.params, ref.params)
    assert d < 1e-5, (mode, model, d)
    assert max_diff(got.stats, ref.stats) < 1e-5 and max_diff(got.opt_state, ref.opt_state) < 1e-5
    assert np.isfinite(float(metrics["loss"])) and f"sg/loss/{K - 1}" in metrics
    print("sequential", mode, model, "ok")

# 2. Staleness 0: feed every K+1 ticks (2 with synthetic inputs), so each minibatch finishes, SG and
# synthetic-input targets included, before the next.
for mode in {2: ("dni", "dni_full"), 4: ("cdni",)}[K]:
    net, tx, fresh, xs, ys, pre, (mean, std) = setup(f"mode={mode}", "si.width=32")
    period = 2 if mode.endswith("_full") else K + 1
    n = K + 2  # SG models bootstrap from the top down: the lowest needs K-1 steps to get a target
    idx = rng.integers(0, 128, (n, B)).astype(np.int32)
    drained = np.zeros((n * period, B), np.int32)
    drained[::period] = idx
    pipe, state = build_pipeline(net, tx, fresh(), (6, 6, 1), B)
    run = make_pipeline_runner(pipe, pre, jax.devices(), feed_every=period)
    state, _ = run(state, xs, ys, drained, np.int32(len(drained)))
    got = to_train_state(pipe, state)
    single, _ = make_chunk_runner(make_train_step(net, tx), mean, std)(fresh(), xs, ys, idx, np.int32(n))
    assert moved(got.params, fresh().params)
    for part in ("params", "stats", "opt_state"):
        d = max_diff(getattr(got, part), getattr(single, part))
        assert d < 1e-6, (mode, part, d)
    print("drained", mode, "ok")
