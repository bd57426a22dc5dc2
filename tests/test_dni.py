"""The decoupled update rule itself: oracle equivalence, SG targets, zero init, label use, no leaks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import MODELS, composed_loss, make_cfg, randomized_interface
from sgrad.core import dni
from sgrad.models.network import apply
from sgrad.models.network import init_variables
from sgrad.run.build import build_network, build_train_optimizer
from sgrad.core.step import create_state, make_train_step

B, SIDE, CLASSES = 16, 6, 5


def _setup(mode="dni", *extra, seed=0, randomize_sg=False, model="fcn"):
    cfg = make_cfg(f"mode={mode}", f"model.name={model}", "model.layers=4", "model.width=12",
                   "sg.width=16", "sg.hidden_layers=1", *extra)
    shape = (SIDE, SIDE, 1)
    net = build_network(cfg, shape, CLASSES)
    kx, ky, kp, ks = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (B, *shape))
    y = jax.random.randint(ky, (B,), 0, CLASSES)
    params, stats = init_variables(net, kp, x)
    if randomize_sg:
        params = randomized_interface(params, ks)
    return cfg, net, params, stats, x, y


_full_loss = composed_loss


def _true_interface_grads(net, params, stats, x, y):
    """B * dL/dh_i for every interface, by jax.grad through the whole network."""
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    eps = [jnp.zeros_like(h) for h in fwd.activations[:-1]]
    g = jax.grad(lambda e: _full_loss(net, params["modules"], stats, x, y, e))(eps)
    return [gi * B for gi in g]


def _allclose(a, b, **kw):
    kw = {"rtol": 1e-4, "atol": 1e-6, **kw}
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), a, b)


@pytest.mark.parametrize("model", MODELS)
def test_oracle_synthetic_gradient_gives_the_backprop_update(model):
    _, net, params, stats, x, y = _setup(model=model)
    oracle = _true_interface_grads(net, params, stats, x, y)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    grads, targets = dni.decoupled_module_grads(fwd, oracle, top)
    expected = jax.grad(lambda p: _full_loss(net, p, stats, x, y))(params["modules"])
    _allclose(grads, expected)
    # With an oracle, every bootstrapped target is itself the true gradient at that interface.
    _allclose(targets, tuple(oracle))
    # And the update differs from backprop as soon as the SG is not the oracle.
    grads_wrong, _ = dni.decoupled_module_grads(fwd, [g * 0.5 for g in oracle], top)
    assert not np.allclose(jax.tree.leaves(grads_wrong[0])[0], jax.tree.leaves(expected[0])[0])


def test_backprop_mode_is_the_full_chain_gradient():
    _, net, params, stats, x, y = _setup(mode="backprop")
    grads, _, metrics = dni.backprop_grads(net, params, stats, x, y)
    expected = jax.grad(lambda p: _full_loss(net, p, stats, x, y))(params["modules"])
    _allclose(grads["modules"], expected)
    assert grads["interface"] == ()
    np.testing.assert_allclose(metrics["loss"], _full_loss(net, params["modules"], stats, x, y), rtol=1e-6)


@pytest.mark.parametrize("mode", ["dni", "cdni"])
def test_sg_target_is_the_vjp_of_the_module_above_at_its_own_synthetic_gradient(mode):
    _, net, params, stats, x, y = _setup(mode=mode, randomize_sg=True)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    pred = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y)
    _, targets = dni.decoupled_module_grads(fwd, pred.gradients, top)
    k = len(net.modules)
    hs = fwd.activations
    for i in range(k - 1):  # target of M_{i+1} (0-based i): VJP of module i+1 w.r.t. its input h_i
        f, p, s = net.modules[i + 1], params["modules"][i + 1], stats["modules"][i + 1]
        _, vjp = jax.vjp(lambda h: apply(f, p, s, (h,), True)[0], hs[i])
        cot = pred.gradients[i + 1] if i + 1 < k - 1 else top
        (expected,) = vjp(cot)
        _allclose(targets[i], expected)
        assert float(jnp.abs(expected).sum()) > 0


def test_sg_models_regress_their_targets():
    _, net, params, stats, x, y = _setup(randomize_sg=True)
    grads, _, metrics = dni.dni_grads(net, params, stats, x, y)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    pred = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y)
    _, targets = dni.decoupled_module_grads(fwd, pred.gradients, top)
    for i, (model, q, s) in enumerate(zip(net.interface_models, params["interface"], stats["interface"])):
        h = fwd.activations[i]

        def loss(q):
            g = apply(model, q, s, (h, None), True)[0]
            return jnp.sum((g - targets[i]) ** 2) / B
        _allclose(grads["interface"][i], jax.grad(loss)(q))
        np.testing.assert_allclose(metrics[f"sg/loss/{i + 1}"], loss(q), rtol=1e-5)


def test_zero_initialised_sg_gives_zero_first_updates_below_it():
    cfg, net, params, stats, x, y = _setup()
    tx = build_train_optimizer(cfg, 100)
    state = create_state(params, stats, tx)
    grads, _, _ = dni.dni_grads(net, params, stats, x, y)
    for g in grads["modules"][:-1]:
        assert all(float(jnp.abs(l).max()) == 0.0 for l in jax.tree.leaves(g))
    new, _ = jax.jit(make_train_step(net, tx))(state, x, y)
    for before, after in zip(params["modules"][:-1], new.params["modules"][:-1]):
        _allclose(after, before, rtol=0, atol=0)
    changed = lambda a, b: any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert changed(params["modules"][-1], new.params["modules"][-1])  # the top module sees the true gradient
    # Bootstrapping: only the top SG model has a non-zero target at step one (the true gradient's VJP);
    # the targets of the SG models below are VJPs of still-zero synthetic gradients.
    assert changed(params["interface"][-1], new.params["interface"][-1])
    assert not any(changed(a, b) for a, b in zip(params["interface"][:-1], new.params["interface"][:-1]))


def test_cdni_uses_the_label_and_dni_does_not():
    for mode, should_depend in (("cdni", True), ("dni", False)):
        _, net, params, stats, x, y = _setup(mode=mode, randomize_sg=True)
        fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
        a = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y).gradients
        b = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, (y + 1) % CLASSES).gradients
        differs = any(not np.allclose(u, v) for u, v in zip(a, b))
        assert differs == should_depend, mode


@pytest.mark.slow  # the conv SG model (fcn: the fast tier's test above)
def test_cdni_conv_sg_uses_the_label():
    _, net, params, stats, x, y = _setup(mode="cdni", model="cnn", randomize_sg=True)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    a = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y).gradients
    b = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, (y + 1) % CLASSES).gradients
    assert all(u.ndim == 4 for u in a)
    assert not np.allclose(a[0], b[0])


def test_no_gradient_leaks_across_an_interface():
    _, net, params, stats, x, y = _setup(randomize_sg=True)
    base, _, _ = dni.dni_grads(net, params, stats, x, y)
    # Change everything above module 1 and the labels: module 1 may only feel M_1(h_1).
    noisy = jax.tree.map(lambda p: p + 0.5, params["modules"][1:])
    altered = {**params, "modules": (params["modules"][0], *noisy)}
    other, _, _ = dni.dni_grads(net, altered, stats, x, (y + 2) % CLASSES)
    _allclose(other["modules"][0], base["modules"][0], rtol=0, atol=0)
    # ...whereas backprop's first-module gradient does depend on what is above.
    bp, _, _ = dni.backprop_grads(net, params, stats, x, y)
    bp2, _, _ = dni.backprop_grads(net, altered, stats, x, (y + 2) % CLASSES)
    assert not np.allclose(jax.tree.leaves(bp["modules"][0])[0], jax.tree.leaves(bp2["modules"][0])[0])
    # Every non-top module's update is fixed by its own SG model: changing M_2 leaves module 1 alone.
    sg2 = (params["interface"][0], jax.tree.map(lambda p: p * 2.0, params["interface"][1]), *params["interface"][2:])
    third, _, _ = dni.dni_grads(net, {**params, "interface": sg2}, stats, x, y)
    _allclose(third["modules"][0], base["modules"][0], rtol=0, atol=0)
    assert not np.allclose(jax.tree.leaves(third["modules"][1])[0], jax.tree.leaves(base["modules"][1])[0])


def test_sg_scale_scales_the_update_but_not_the_target():
    _, net, params, stats, x, y = _setup(randomize_sg=True)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    pred = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y)
    g1, t1 = dni.decoupled_module_grads(fwd, pred.gradients, top, 1.0)
    g3, t3 = dni.decoupled_module_grads(fwd, pred.gradients, top, 0.25)
    _allclose(t1, t3)
    _allclose(jax.tree.map(lambda g: g * 0.25, g1[:-1]), g3[:-1])
    _allclose(g1[-1], g3[-1])


def test_dni_every_groups_layers_into_modules():
    cfg = make_cfg("model.layers=5", "model.dni_every=2")
    net = build_network(cfg, (SIDE, SIDE, 1), CLASSES)
    assert [len(m.layers) for m in net.modules] == [2, 2, 1]
    assert len(net.interface_models) == 2


def test_probe_compares_synthetic_with_true_gradients():
    _, net, params, stats, x, y = _setup(randomize_sg=True)
    out = dni.probe_synthetic_gradients(net, params, stats, x, y)
    true = _true_interface_grads(net, params, stats, x, y)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    pred = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y).gradients
    for i, (g_hat, g) in enumerate(zip(pred, true), start=1):
        a, b = np.ravel(g_hat), np.ravel(g)
        cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        np.testing.assert_allclose(out[f"sg/cosine/{i}"], cos, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out[f"sg/norm_ratio/{i}"], np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_complete_unlocking_trains_modules_on_synthetic_inputs(model):
    _, net, params, stats, x, y = _setup(mode="cdni_full", model=model, randomize_sg=True)
    assert len(net.input_models) == len(net.modules) - 1
    grads, _, metrics = dni.dni_grads(net, params, stats, x, y)
    si = dni.predict_inputs(net, params["si"], stats["si"], x)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x, (x, *si.values))
    # Each input model regresses the activation the module below produced (a constant for it).
    for i, (m, q, s) in enumerate(zip(net.input_models, params["si"], stats["si"])):
        target = fwd.activations[i]

        def loss(q):
            return jnp.sum((apply(m, q, s, (x,), True)[0] - target) ** 2) / B
        _allclose(grads["si"][i], jax.grad(loss)(q))
        np.testing.assert_allclose(metrics[f"si/loss/{i + 2}"], loss(q), rtol=1e-5)
    # Module 2 runs on Î_2, so it does not depend on module 1 in either direction.
    altered = {**params, "modules": (jax.tree.map(lambda p: p + 0.5, params["modules"][0]), *params["modules"][1:])}
    other, _, _ = dni.dni_grads(net, altered, stats, x, y)
    _allclose(other["modules"][1], grads["modules"][1], rtol=0, atol=0)
    assert not np.allclose(jax.tree.leaves(other["si"][0])[0], jax.tree.leaves(grads["si"][0])[0])
