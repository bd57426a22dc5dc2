"""A user's own modules (tests/residual_model.py: stem, one residual block, head) pipelined over 3 CPU devices in
one mode of each kind of stage (KINDS): equal to the same schedule in plain Python (and, for the forward-locked modes,
to the single-device step); then a pipelined run through `model=custom` and the run loop learns."""

import sys

import jax
import numpy as np
import optax

from conftest import device_data, make_cfg, max_diff
from residual_model import make_modules
from sgrad import decouple
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.models.synthetic import DenseSynthetic
from sgrad.models.synthetic_input import DenseInput
from sgrad.run import train_and_evaluate

assert jax.device_count() == 3
rng = np.random.default_rng(0)
B, SHAPE = 16, (6, 6, 1)
xs, ys, mean, std = device_data(rng, 128, SHAPE)
pre = lambda x: preprocess(x, mean, std)


# What a user's modules meet differs by the kind of stage, not by the mode within a kind (every mode's stage is
# checked against its schedule on the paper's networks: tests/test_pipeline.py): an SG model with a synthetic input
# and the label, an auxiliary classifier, and the forward-locked schedule.
KINDS = ("cdni_full", "dgl", "fr")
for mode in KINDS:
    # SGD: Adam divides by the root of tiny early gradients and so magnifies float rounding.
    net = decouple(make_modules(10, width=16, blocks=1), mode, input_shape=SHAPE, num_classes=10,
                   optimizer=optax.sgd(0.01), sg_model=lambda shape: DenseSynthetic(1, 32),
                   input_model=lambda shape: DenseInput(shape[0], 1, 32))
    fresh = lambda: net.init(jax.random.key(1), pre(xs[:B]), ys[:B])
    T = 10
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)
    pipe, state = build_pipeline(net.network, net.tx, fresh(), SHAPE, B)
    state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
    got = to_train_state(pipe, state)
    ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
    start = fresh()
    assert max_diff(got.params["modules"][0], start.params["modules"][0]) > 0, mode
    for part in ("params", "stats", "opt_state", "carry"):
        if jax.tree.leaves(getattr(got, part)):
            d = max_diff(getattr(got, part), getattr(ref, part))
            assert d < 1e-5, (mode, part, d)
    if pipe.stage.schedule == "locked":
        single, _ = make_chunk_runner(net.train_step, mean, std)(fresh(), xs, ys, idx, np.int32(T))
        assert max_diff(got.params, single.params) < 1e-5, mode
    assert np.isfinite(float(metrics["loss"]))
    print(mode, "ok")

data, scratch = sys.argv[1], sys.argv[2]
cfg = make_cfg("model=custom", "model._target_=residual_model.make_modules", "+model.args.blocks=1",
               "dataset.name=idx", f"dataset.dir={data}", "dataset.download=false", "parallel=pipeline", "mode=cdni",
               "sg.hidden_layers=0", "trainer.steps=150", "trainer.eval_every=150")
summary = train_and_evaluate(cfg, scratch)
assert summary["status"] == "completed" and summary["test/accuracy"] > 0.5, summary  # chance is 0.1
print("run ok")
