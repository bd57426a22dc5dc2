"""mode=dgl, ddg and fr with parallel=pipeline on K CPU devices (argv[1]): each equals the same schedule run
sequentially in plain Python, and the single-device step (DGL drained to one minibatch in flight; DDG and FR
as they run, since their forward pass is locked). With three devices FR also runs a user's network with dropout
(tests/dropout_model.py): the masks of a step are the same on the devices as in the one-device step."""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import device_data, make_cfg, max_diff, program_setup
from sgrad.core.step import init_state, make_train_step
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential
from sgrad.models.network import init_variables

K = int(sys.argv[1])
assert jax.device_count() == K
rng = np.random.default_rng(0)
B = 16
sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]


def setup(mode, model, shape):
    cfg = make_cfg(f"mode={mode}", f"model.name={model}", f"model.layers={K}", "model.width=16",
                   "aux.hidden_layers=1", "aux.width=16", *sgd)
    return program_setup(cfg, shape, B, rng)


def moved(a, b):
    return all(max_diff(x, y) > 0 for x, y in zip(list(a["modules"]) + list(a["interface"]), list(b["modules"]) + list(b["interface"])))


# Conv stages at two devices, FCN stages at three (CI time): three devices hold every role two do (the bottom
# sending up, the top sending back) and a middle stage besides. DDG and FR share the locked schedule: DDG runs it
# at two devices, FR at three.
cases = [("dgl", "fcn", (6, 6, 1)), ("dgl", "cnn", (8, 8, 1)), ("ddg", "cnn", (8, 8, 1)), ("fr", "fcn", (6, 6, 1))]
for mode, model, shape in [c for c in cases if (c[1] == "cnn") == (K == 2)]:
    net, tx, fresh, xs, ys, pre, (mean, std) = setup(mode, model, shape)
    T = 3 * K + 4
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)
    pipe, state = build_pipeline(net, tx, fresh(), shape, B)
    state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
    got = to_train_state(pipe, state)
    ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
    assert int(got.step) == int(ref.step) == T
    assert moved(got.params, fresh().params), "every module (and head) must have been updated"
    for part in ("params", "stats", "opt_state", "carry"):
        d = max_diff(getattr(got, part), getattr(ref, part)) if jax.tree.leaves(getattr(got, part)) else 0.0
        assert d < 1e-5, (mode, model, part, d)
    assert np.isfinite(float(metrics["loss"]))
    if mode == "dgl":
        assert f"aux/loss/{K - 1}" in metrics and "sg/loss/1" not in metrics
        # One minibatch in flight at a time: device i sees minibatch m at tick mK + i, after the last finished.
        drained = np.zeros((T * K, B), np.int32)
        drained[::K] = idx
        pipe, state = build_pipeline(net, tx, fresh(), shape, B)
        state, _ = make_pipeline_runner(pipe, pre, jax.devices(), feed_every=K)(state, xs, ys, drained,
                                                                               np.int32(len(drained)))
        got = to_train_state(pipe, state)
    single, _ = make_chunk_runner(make_train_step(net, tx), mean, std)(fresh(), xs, ys, idx, np.int32(T))
    for part in ("params", "stats", "opt_state", "carry"):
        if jax.tree.leaves(getattr(single, part)):
            d = max_diff(getattr(got, part), getattr(single, part))
            assert d < 1e-5, (mode, model, "single", part, d)
    print(mode, model, "ok")


if K == 3:
    import optax
    from dropout_model import make_modules
    from sgrad import decouple
    from sgrad.core.step import UpdateRule
    shape = (6, 6, 1)
    xs, ys, mean, std = device_data(rng, 128, shape)
    pre = lambda x: preprocess(x, mean, std).reshape(x.shape[0], -1)
    # FR's replay: a module's mask is drawn again after the ticks between its forward pass and its update (DDG's
    # stash holds what it needs; its dropout step: tests/test_loss.py).
    for mode in ("fr",):
        lib = decouple(make_modules(10, 16, 0.3), mode, input_shape=(36,), optimizer=optax.sgd(0.01),
                       settings=UpdateRule(seed=5))
        net, tx = lib.network, lib.tx
        params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, 36)))
        fresh = lambda: init_state(net, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx,
                                   pre(xs[:B]), ys[:B])
        T = 10
        idx = rng.integers(0, 128, (T, B)).astype(np.int32)
        pipe, state = build_pipeline(net, tx, fresh(), (36,), B, UpdateRule(seed=5))
        state, _ = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
        got = to_train_state(pipe, state)
        ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
        single = fresh()
        for t in range(T):
            single, _ = jax.jit(lib.train_step)(single, pre(xs[idx[t]]), ys[idx[t]])
        assert moved(got.params, fresh().params)
        for part in ("params", "carry"):  # (plain SGD keeps no optimizer state)
            assert max_diff(getattr(got, part), getattr(ref, part)) < 1e-5, (mode, "dropout", part)
            assert max_diff(getattr(got, part), getattr(single, part)) < 1e-5, (mode, "dropout single", part)
        # The masks matter: another seed gives other parameters.
        other = fresh()
        for t in range(T):
            other, _ = jax.jit(decouple(make_modules(10, 16, 0.3), mode, input_shape=(36,),
                                        optimizer=optax.sgd(0.01), settings=UpdateRule(seed=6)).train_step)(
                other, pre(xs[idx[t]]), ys[idx[t]])
        assert max_diff(other.params, single.params) > 1e-4
        print(mode, "dropout ok")
