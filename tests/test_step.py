"""Update rules on top of the decoupled step: BP(λ), SG warm-up and sporadic (stochastic) updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_cfg
from sgrad.core import dni
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.core.step import UpdateRule, create_state, make_train_step

B, CLASSES = 16, 5


def _setup(mode="dni", *extra, randomize_sg=True):
    cfg = make_cfg(f"mode={mode}", "model.layers=4", "model.width=12", "sg.width=16", "sg.hidden_layers=1",
                   "optim.name=sgd", "optim.momentum=0", "optim.lr=0.1", "sg.optim.name=sgd",
                   "sg.optim.momentum=0", "sg.optim.lr=0.1", *extra)
    net = build_network(cfg, (6, 6, 1), CLASSES)
    kx, ky, kp, ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (B, 6, 6, 1))
    y = jax.random.randint(ky, (B,), 0, CLASSES)
    params, stats = init_variables(net, kp, x)
    if randomize_sg and params["interface"]:
        leaves, tree = jax.tree.flatten(params["interface"])
        keys = jax.random.split(ks, len(leaves))
        params = {**params,
                  "interface": jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])}
    tx = build_train_optimizer(cfg, 100)
    return cfg, net, tx, create_state(params, stats, tx), x, y


def _close(a, b, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **{"rtol": 1e-5,
                                                                                            "atol": 1e-7, **kw}), a, b)


def _changed(a, b):
    return any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_lambda_one_is_the_backprop_update_and_lambda_zero_the_dni_update():
    _, net, _, state, x, y = _setup()
    p, s = state.params, state.stats
    fwd = dni.forward(net.modules, p["modules"], s["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    pred = dni.predict_synthetic(net, p["interface"], s["interface"], fwd.activations, y)
    bp, true_grads = dni.backprop_chain(fwd, top)
    g1, t1 = dni.decoupled_module_grads(fwd, pred.gradients, top, lam=jnp.float32(1.0))
    _close(g1, bp)
    _close(t1, true_grads)  # with λ=1 every SG model regresses the true gradient
    g0, t0 = dni.decoupled_module_grads(fwd, pred.gradients, top, lam=jnp.float32(0.0))
    d0, dt0 = dni.decoupled_module_grads(fwd, pred.gradients, top)
    _close(g0, d0, rtol=0, atol=0)
    _close(t0, dt0, rtol=0, atol=0)
    gh, _ = dni.decoupled_module_grads(fwd, pred.gradients, top, lam=jnp.float32(0.5))
    mix = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, bp[-2], d0[-2])  # the module under the top one
    _close(gh[-2], mix)


def test_lambda_one_step_equals_the_backprop_step():
    _, net, tx, state, x, y = _setup("dni", "sg.lambda_=1.0")
    new, _ = make_train_step(net, tx, UpdateRule(lam=1.0))(state, x, y)
    _, bnet, btx, bstate, _, _ = _setup("backprop")
    bnew, _ = make_train_step(bnet, btx)(bstate, x, y)
    _close(new.params["modules"], bnew.params["modules"])


def test_lambda_is_annealed_and_logged():
    rule = UpdateRule(lam=1.0, lam_final=0.0, lam_steps=10)
    np.testing.assert_allclose([rule.lam_at(jnp.int32(s)) for s in (0, 5, 10, 20)], [1.0, 0.5, 0.0, 0.0])
    assert UpdateRule().lam_at(jnp.int32(3)) == 0.0  # static: the plain DNI step stays unlocked
    _, net, tx, state, x, y = _setup()
    _, metrics = make_train_step(net, tx, rule)(state, x, y)
    assert float(metrics["sg/lambda"]) == 1.0


def test_warmup_trains_sg_models_on_true_gradients_and_leaves_modules_alone():
    _, net, tx, state, x, y = _setup()
    rule = UpdateRule(warmup_steps=3)
    step = jax.jit(make_train_step(net, tx, rule))
    s = state
    for _ in range(3):
        s, _ = step(s, x, y)
    _close(s.params["modules"], state.params["modules"], rtol=0, atol=0)
    assert all(_changed(a, b) for a, b in zip(s.params["interface"], state.params["interface"]))
    # During warm-up the SG gradients are those of regressing the true gradient.
    fwd = dni.forward(net.modules, state.params["modules"], state.stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    _, true_grads = dni.backprop_chain(fwd, top)
    pred = dni.predict_synthetic(net, state.params["interface"], state.stats["interface"], fwd.activations, y)
    expected, _ = dni.sg_regression(pred, true_grads)
    grads, _, _ = dni.dni_grads(net, state.params, state.stats, x, y, 1.0, rule.lam_at(jnp.int32(0)))
    _close(grads["interface"], expected)
    s, _ = step(s, x, y)  # after warm-up the modules move
    assert _changed(s.params["modules"][0], state.params["modules"][0])


@pytest.mark.parametrize("mode", ["dni", "backprop"])
def test_update_prob_zero_freezes_and_one_is_the_plain_step(mode):
    _, net, tx, state, x, y = _setup(mode)
    frozen, _ = make_train_step(net, tx, UpdateRule(update_prob=0.0))(state, x, y)
    _close(frozen.params, state.params, rtol=0, atol=0)
    _close(frozen.opt_state, state.opt_state, rtol=0, atol=0)
    plain, _ = make_train_step(net, tx)(state, x, y)
    always, _ = make_train_step(net, tx, UpdateRule(update_prob=1.0))(state, x, y)
    _close(always.params, plain.params, rtol=0, atol=0)


def test_sporadic_updates_skip_modules_independently():
    _, net, tx, state, x, y = _setup()
    step = jax.jit(make_train_step(net, tx, UpdateRule(update_prob=0.5, seed=1)))
    moved = np.zeros((40, len(net.modules)), bool)
    s = state
    for t in range(40):
        s2, _ = step(s, x, y)
        moved[t] = [_changed(a, b) for a, b in zip(s.params["modules"], s2.params["modules"])]
        s = s2
    rate = moved.mean(0)
    assert np.all((rate > 0.2) & (rate < 0.8)), rate
    assert len({tuple(r) for r in moved}) > 4  # modules are not all skipped together
