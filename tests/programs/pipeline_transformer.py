"""A character Transformer (model=transformer, token inputs, [B, T, D] activations) pipelined over 2 CPU devices
in cDNI (an SG model on every token position, with its label): equal to the same schedule run in plain Python.
The locked schedule (DDG, FR) and data parallelism do not look inside a module: their equality tests are on the
FCN, the CNN and a dropout model (tests/programs/pipeline_dgl_ddg.py, tests/test_parallel.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import make_cfg
from sgrad.core.step import init_state
from sgrad.devices.chunk import preprocess
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer

assert jax.device_count() == 2
rng = np.random.default_rng(0)
B, T, V = 8, 8, 9
xs = rng.integers(0, V, (64, T)).astype(np.int32)
ys = rng.integers(0, V, (64, T)).astype(np.int32)
mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
pre = lambda x: preprocess(x, mean, std)
sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]


def max_diff(a, b):
    """The largest difference, relative to each leaf's scale (batch-norm variances run to tens)."""
    return max(float(jnp.max(jnp.abs(x - y)) / (1.0 + jnp.max(jnp.abs(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def setup(mode, *extra):
    cfg = make_cfg("dataset=text", "model=transformer", f"mode={mode}", "model.layers=2", "model.width=16",
                   "model.heads=2", f"model.context={T}", "sg.width=16", "sg.hidden_layers=1", *sgd, *extra)
    net = build_network(cfg, (T,), V)
    params, stats = init_variables(net, jax.random.key(1), jnp.asarray(xs[:B]), jnp.asarray(ys[:B]))
    tx = build_train_optimizer(cfg, 100)

    def fresh():  # the runners donate the state: every run starts from its own copy
        return init_state(net, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx, xs[:B], ys[:B])
    return net, tx, fresh


steps = 8
idx = rng.integers(0, 64, (steps, B)).astype(np.int32)
# What is the Transformer's own here is an SG model on every token position and its label: cDNI. DNI's stage is
# cDNI's without the label (tests/programs/pipeline_equality.py covers both on the FCN); DGL's is cDNI's unlocked
# one with a head in place of an SG model, and the locked schedule of DDG and FR does not look inside a module
# (tests/programs/pipeline_dgl_ddg.py covers them on the FCN, the CNN and a dropout model;
# tests/test_transformer.py DGL's heads on token positions).
for mode in ("cdni",):
    net, tx, fresh = setup(mode)
    pipe, state = build_pipeline(net, tx, fresh(), (T,), B)
    state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(steps))
    got = to_train_state(pipe, state)
    ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
    assert max_diff(got.params["modules"][0], fresh().params["modules"][0]) > 0, mode
    for part in ("params", "stats", "opt_state", "carry"):
        if jax.tree.leaves(getattr(got, part)):
            d = max_diff(getattr(got, part), getattr(ref, part))
            assert d < 1e-5, (mode, part, d)
    assert np.isfinite(float(metrics["loss"]))
    print(mode, "ok")
