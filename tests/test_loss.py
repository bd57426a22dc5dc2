"""Any loss, any module convention (sgrad/models/loss.py, sgrad/models/network.py): a user's regression network with
dropout trains in every mode through the library, and the runner's `loss=` group and `model=custom` take it."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_cfg
from dropout_model import DeterministicBlock, TrainBlock, make_modules
from sgrad import RULES, decouple
from sgrad.config import ConfigError
from sgrad.core import delayed, dni
from sgrad.models.loss import cross_entropy, mse
from sgrad.models.network import apply, dropout_rng, init_variables
from sgrad.models.synthetic import DenseSynthetic
from sgrad.models.synthetic_input import DenseInput
from sgrad.run.build import build_decoupled, check

# The modes the library offers a feed-forward network; the slow tier runs the rest.
FAST = {"dni", "dgl"}  # cDNI's conditioning and DDG's replayed masks have fast tests of their own below


def _regression(n=64, d=6, out=3):
    """y = tanh(x W): a smooth target the test makes itself."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(d, out)).astype(np.float32))
    return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("mode", [m if m in FAST else pytest.param(m, marks=pytest.mark.slow) for m in sorted(RULES)])
def test_every_mode_trains_a_regression_network_with_dropout(mode):
    x, y = _regression()
    # Test-sized interface models (the paper's DNI SG model has 2 x 1024 hidden units).
    net = decouple(make_modules(3, width=32, rate=0.1), mode, input_shape=(6,), loss=mse,
                   optimizer=optax.adam(3e-3), sg_model=lambda shape: DenseSynthetic(1, 64),
                   input_model=lambda shape: DenseInput(shape[0], 1, 64))
    start = net.init(jax.random.key(0), x, y)
    step = jax.jit(net.train_step)
    state = start
    for _ in range(80):
        state, metrics = step(state, x, y)
    error = lambda s: float(jnp.mean((net.predict(s, x) - y) ** 2))
    assert error(state) < 0.7 * error(start), (mode, error(start), error(state))
    # A regression reports its loss, and no accuracy anywhere (DGL's heads included).
    assert "loss" in metrics and not any("accuracy" in k for k in metrics), sorted(metrics)
    for i, (a, b) in enumerate(zip(state.params["modules"], start.params["modules"])):
        assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))), (mode, i)
    # Inference is deterministic: dropout is off.
    np.testing.assert_array_equal(net.predict(state, x), net.predict(state, x))


def test_cdni_conditions_on_a_regression_target_as_given_and_dgl_heads_predict_the_output():
    x, y = _regression()
    cdni = decouple(make_modules(3, 16), "cdni", input_shape=(6,), loss=mse)
    params = cdni.init(jax.random.key(0), x, y).params
    # cDNI's (linear) SG model on [h, y]: 16 activations + the 3 target values in.
    assert [p["Dense_0"]["kernel"].shape for p in params["interface"]] == [(19, 16), (19, 16)]
    dgl = decouple(make_modules(3, 16), "dgl", input_shape=(6,), loss=mse)
    heads = dgl.network.interface_models
    state = dgl.init(jax.random.key(0), x, y)
    for head, q, s in zip(heads, state.params["interface"], state.stats["interface"]):
        out, _ = apply(head, q, s, (jnp.zeros((4, 16)), None), False)
        assert out.shape == (4, 3)


def test_classification_with_mse_reports_accuracy_and_integer_labels_are_one_hot():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    labels = jnp.array([0, 1])
    np.testing.assert_allclose(mse(logits, labels), [((2 - 1) ** 2) / 3, (1 + 1) / 3], rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, labels),
                               optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    # Token targets [B, T]: the mean over the tokens of each example.
    tokens = jnp.zeros((2, 4, 3)).at[:, :, 1].set(5.0)
    assert cross_entropy(tokens, jnp.ones((2, 4), jnp.int32)).shape == (2,)


def test_a_loss_that_is_not_per_example_is_refused_with_its_shape():
    x, y = _regression()
    net = decouple(make_modules(3, 16), "backprop", input_shape=(6,), loss=lambda o, t: jnp.mean((o - t) ** 2))
    with pytest.raises(ValueError, match=re.escape("returned shape () for a batch of 64")):
        net.train_step(net.init(jax.random.key(0), x, y), x, y)


def test_modules_get_their_training_flag_by_name():
    x = jnp.ones((8, 6))
    seq = nn.Sequential([nn.Dense(4), nn.relu])
    net = decouple([TrainBlock(16, 0.5), DeterministicBlock(16, 0.5), seq], "dni", input_shape=(6,), loss=mse)
    params, stats = init_variables(net.network, jax.random.key(0), x)
    # A flag-less module's parameters are its own (no wrapper around it).
    assert set(params["modules"][2]) == {"layers_0"}
    h = jnp.ones((8, 16))
    for module, p in zip(net.network.modules[1:2], params["modules"][1:2]):
        train_a, _ = apply(module, p, {}, (h,), True, jax.random.key(1))
        train_b, _ = apply(module, p, {}, (h,), True, jax.random.key(2))
        test, _ = apply(module, p, {}, (h,), False)
        # Training drops (different keys, different masks) and scales the rest by 1 / (1 - rate); inference
        # does neither: `deterministic = not train`.
        assert not np.allclose(train_a, train_b)
        dropped = (train_a == 0) & (test != 0)
        assert 0.3 < float(dropped.sum() / (test != 0).sum()) < 0.7
        np.testing.assert_allclose(jnp.where(dropped, 0, 2 * test), train_a, rtol=1e-5)
        np.testing.assert_array_equal(test, apply(module, p, {}, (h,), False)[0])


def test_dropout_masks_are_a_function_of_seed_and_step_and_a_delayed_update_replays_them():
    x, y = _regression()
    net = decouple(make_modules(3, 16, 0.5), "ddg", input_shape=(6,), loss=mse).network
    params, stats = init_variables(net, jax.random.key(0), x)
    run = lambda step: dni.forward(net.modules, params["modules"], stats["modules"], x,
                                   rng=dropout_rng(7, step)).activations[0]
    np.testing.assert_array_equal(run(3), run(3))
    assert not np.allclose(run(3), run(4))
    # DDG/FR recompute module j's forward pass on a stashed input: with the step's key they drop what it dropped.
    stash = delayed.init_stashes(net, params, stats, x, y, keep_weights=True)[0]
    stash = stash._replace(h=stash.h.at[0].set(x), step=stash.step.at[0].set(3),
                           params=jax.tree.map(lambda a, p: a.at[0].set(p), stash.params, params["modules"][0]),
                           cotangent=jnp.ones((64, 16)))
    got, _ = delayed.delayed_vjp(net.modules[0], stats["modules"][0], stash, 0, params["modules"][0],
                                 delayed.dropout_at(7, 0))
    fwd = dni.forward(net.modules[:1], params["modules"][:1], stats["modules"][:1], x, rng=dropout_rng(7, 3))
    want, _ = fwd.vjps[0](jnp.ones((64, 16)))
    jax.tree.map(np.testing.assert_allclose, got, want)


def test_a_module_that_does_not_fit_the_one_before_is_one_line_naming_both():
    class Needs5(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.Dense(2)(h.reshape(h.shape[0], 5))

    with pytest.raises(ValueError) as err:
        decouple([TrainBlock(8), Needs5()], "dni", input_shape=(6,), loss=mse)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("module 2 (Needs5) failed on module 1 (TrainBlock)'s output of shape (8,)")


def test_a_head_of_the_wrong_width_for_num_classes_is_refused():
    with pytest.raises(ValueError, match=re.escape("num_classes=10 but the last module (Sequential) outputs 7")):
        decouple(make_modules(7, 16), "dni", input_shape=(6,), num_classes=10)


def test_runner_loss_group_and_its_errors():
    check(make_cfg("loss=mse"))
    net = build_decoupled(make_cfg("loss=mse", "model=custom", "model._target_=dropout_model.make_modules"),
                          (28, 28, 1), 10, 100).network
    assert net.loss is mse and [type(m).__name__ for m in net.modules] == ["TrainBlock", "DeterministicBlock",
                                                                            "Sequential"]
    with pytest.raises(ConfigError, match=re.escape("loss._target_=None is not allowed: loss._target_ must be the "
                                                    "import path of a function (outputs, y)")):
        check(make_cfg("loss=custom"))
    with pytest.raises(ConfigError, match=re.escape("loss._target_=no_such.loss could not be imported")):
        check(make_cfg("loss=custom", "loss._target_=no_such.loss"))
    with pytest.raises(ConfigError, match=re.escape("loss='mse' is not allowed: loss must be cross_entropy for "
                                                    "dataset.name=copy")):
        check(make_cfg("loss=mse", "+exp=copy_dni"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dni", "dgl"])
def test_a_custom_dropout_model_trains_with_mse_through_the_run_loop(idx_dir, tmp_path, mode):
    from sgrad.run import train_and_evaluate
    cfg = make_cfg("model=custom", "model._target_=dropout_model.make_modules", "+model.args.width=64",
                   "loss=mse", "dataset.name=idx", f"dataset.dir={idx_dir}", "dataset.download=false",
                   f"mode={mode}", "trainer.steps=200", "trainer.eval_every=200", "optim.lr=3e-3")
    summary = train_and_evaluate(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["test/accuracy"] > 0.5, summary  # chance is 0.1


def test_ddg_takes_int64_labels_without_a_dtype_warning():
    import warnings
    x = jnp.ones((8, 6))
    y = np.zeros(8, np.int64)
    net = decouple(make_modules(10, 16), "ddg", input_shape=(6,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = net.init(jax.random.key(0), x, y)
    assert state.carry[0].y.dtype == jnp.int32


def test_check_finite_reports_divergence_and_keeps_the_last_good_state():
    x, y = _regression()
    net = decouple(make_modules(3, 16), "dni", input_shape=(6,), loss=mse, optimizer=optax.sgd(1e6),
                   check_finite=True)
    step = jax.jit(net.train_step)
    state = net.init(jax.random.key(0), x, y)
    for _ in range(20):
        new, metrics = step(state, x, y)
        if not bool(metrics["finite"]):
            break
        state = new
    else:
        pytest.fail("an SGD step of 1e6 did not diverge")
    # The step that went non-finite handed back the state it was given, every leaf finite.
    jax.tree.map(np.testing.assert_array_equal, new, state)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(new.params))


@pytest.mark.slow
def test_a_custom_dropout_model_with_mse_runs_through_sgrad_train(idx_dir, tmp_path):
    import json
    from sgrad.run import train_and_evaluate
    # Every mode's step with dropout: test_every_mode_trains_a_regression_network_with_dropout; here the run loop,
    # in the modes whose dropout keys differ (a synthetic input's, a stash replayed later, a replay at new weights).
    for mode in ("backprop", "dni_full", "ddg", "fr"):
        cfg = make_cfg("model=custom", "model._target_=dropout_model.make_modules", "+model.args.width=16",
                       "loss=mse", "dataset.name=idx", f"dataset.dir={idx_dir}", "dataset.download=false",
                       f"mode={mode}", "si.width=32", "trainer.steps=20", "trainer.log_every=10",
                       "trainer.eval_every=20", "trainer.batch_size=32", "log.grad_probe_every=10")
        summary = train_and_evaluate(cfg, tmp_path / mode)
        assert summary["status"] == "completed" and summary["loss"] == "mse", (mode, summary)
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        assert len(losses) == 2 and all(np.isfinite(losses)), (mode, losses)
