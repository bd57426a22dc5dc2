"""parallel=pipeline with replicas: K modules x D copies on K*D CPU devices (argv[1] = K, argv[2] = D) equal the
plain schedule on the whole batch (the copies' gradients averaged), in an unlocked and a DGL pipeline."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import device_data, make_cfg, max_diff
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.core.step import create_state
from sgrad.devices.chunk import preprocess

K, D = int(sys.argv[1]), int(sys.argv[2])
assert jax.device_count() == K * D
rng = np.random.default_rng(0)
B, shape = 16, (6, 6, 1)
xs, ys, mean, std = device_data(rng, 128, shape)
pre = lambda x: preprocess(x, mean, std)


# No batch norm: with it each copy normalises by its own share of the batch, which the whole-batch schedule
# does not. SGD as in pipeline_equality.py (Adam magnifies float rounding of tiny early SG gradients).
sgd = ["optim.name=sgd", "optim.lr=0.05", "sg.optim.name=sgd", "sg.optim.lr=0.05", "model.batch_norm=false",
       "sg.batch_norm=false", "aux.batch_norm=false"]
for mode in ("cdni", "dgl"):
    cfg = make_cfg(f"mode={mode}", f"model.layers={K}", "model.width=16", "sg.hidden_layers=1", "sg.width=32",
                   *sgd)
    net = build_network(cfg, shape, 10)
    params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, *shape)))
    tx = build_train_optimizer(cfg, 100)
    fresh = lambda: create_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx)
    T = 3 * K + 4
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)
    pipe, state = build_pipeline(net, tx, fresh(), shape, B, replicas=D)
    state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
    got = to_train_state(pipe, state)
    whole, _ = build_pipeline(net, tx, fresh(), shape, B)
    ref = run_sequential(whole, fresh(), xs, ys, idx, pre)
    start = fresh()
    assert int(got.step) == T and max_diff(got.params, start.params) > 1e-3
    d = max_diff(got.params, ref.params)
    assert d < 1e-5, (mode, d)
    assert max_diff(got.opt_state, ref.opt_state) < 1e-5
    assert np.isfinite(float(metrics["loss"]))
    print(mode, "ok")

# Through the runner a user gets: `sgrad-train parallel=pipeline replicas=D` learns (argv[3]: IDX data, argv[4]:
# a scratch dir).
if len(sys.argv) > 3:
    import json
    from sgrad.run import train_and_evaluate
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={sys.argv[3]}", "dataset.download=false", "parallel=pipeline",
                   f"replicas={D}", "mode=cdni", f"model.layers={K}", "sg.hidden_layers=0", "trainer.steps=150",
                   "trainer.eval_every=150")
    out = train_and_evaluate(cfg, sys.argv[4])
    print(json.dumps({"status": out["status"], "accuracy": out["test/accuracy"]}))
