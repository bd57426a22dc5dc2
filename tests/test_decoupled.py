"""The other decoupling rules at the algorithm level: Decoupled Greedy Learning (mode=dgl) and delayed-gradient
Decoupled Parallel Backpropagation (mode=ddg)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import MODELS, make_cfg, sgd_states
from sgrad.core import delayed, dni, greedy
from sgrad.core.optim import Optimizers
from sgrad.core.step import create_state, make_train_step
from sgrad.models import LayerGroup
from sgrad.models.network import Network, apply, init_variables
from sgrad.modes import RULES
from sgrad.run.build import build_network

B, SIDE, CLASSES = 16, 6, 5


def _setup(mode, model="fcn", layers=4, seed=0):
    cfg = make_cfg(f"mode={mode}", f"model.name={model}", f"model.layers={layers}", "model.width=12",
                   "aux.hidden_layers=1", "aux.width=8")
    net = build_network(cfg, (SIDE, SIDE, 1), CLASSES)
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (B, SIDE, SIDE, 1))
    y = jax.random.randint(ky, (B,), 0, CLASSES)
    params, stats = init_variables(net, kp, x)
    return net, params, stats, x, y


def _batches(n, seed=1):
    keys = jax.random.split(jax.random.key(seed), 2 * n)
    return [(jax.random.normal(keys[2 * t], (B, SIDE, SIDE, 1)), jax.random.randint(keys[2 * t + 1], (B,), 0, CLASSES))
            for t in range(n)]


def _close(a, b, **kw):
    kw = {"rtol": 1e-4, "atol": 1e-6, **kw}
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), a, b)


def _differs(a, b):
    return any(not np.allclose(u, v, rtol=1e-4, atol=1e-6) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _perturb(tree, key, scale=0.5):
    leaves, struct = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(struct, [l + scale * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


# --- Decoupled Greedy Learning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_dgl_nothing_above_a_module_changes_its_update(model):
    net, params, stats, x, y = _setup("dgl", model, layers=4)
    base, _, _ = greedy.dgl_grads(net, params, stats, x, y)
    for i in range(len(net.modules) - 1):
        above = dict(params)
        above["modules"] = params["modules"][:i + 1] + tuple(_perturb(p, jax.random.key(i)) for p in
                                                             params["modules"][i + 1:])
        above["interface"] = params["interface"][:i + 1] + tuple(_perturb(q, jax.random.key(9 + i)) for q in params["interface"][i + 1:])
        grads, _, _ = greedy.dgl_grads(net, above, stats, x, y)
        _close(grads["modules"][:i + 1], base["modules"][:i + 1])
        _close(grads["interface"][:i + 1], base["interface"][:i + 1])
        # ... while the perturbation reaches the modules it touched.
        assert _differs(grads["modules"][i + 1:], base["modules"][i + 1:])


def test_dgl_top_module_update_is_backprops_and_modules_follow_their_own_head():
    net, params, stats, x, y = _setup("dgl")
    grads, _, metrics = greedy.dgl_grads(net, params, stats, x, y)
    bp, _, _ = dni.backprop_grads(net, params, stats, x, y)
    _close(grads["modules"][-1], bp["modules"][-1])
    assert _differs(grads["modules"][0], bp["modules"][0])
    # Module 1 with its head is plain backprop of the head's loss through module 1 alone.
    def local(p, q):
        h, _ = apply(net.modules[0], p, stats["modules"][0], (x,), True)
        logits, _ = apply(net.interface_models[0], q, stats["interface"][0], (h, None), True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, (g_module, g_head) = jax.value_and_grad(local, argnums=(0, 1))(params["modules"][0], params["interface"][0])
    _close(grads["modules"][0], g_module)
    _close(grads["interface"][0], g_head)
    np.testing.assert_allclose(metrics["aux/loss/1"], loss, rtol=1e-5)


def test_dgl_with_one_module_is_backprop():
    net, params, stats, x, y = _setup("dgl", layers=3)
    one = Network((LayerGroup(tuple(layer for m in net.modules for layer in m.layers)),), (), CLASSES, net.rule)
    p1, s1 = init_variables(one, jax.random.key(3), x)
    tx = Optimizers(optax.sgd(0.1), optax.sgd(0.1))
    state = create_state(p1, s1, tx)
    ours = backprop = state
    for xb, yb in _batches(3):
        ours, _ = make_train_step(one, tx)(ours, xb, yb)
        backprop, _ = make_train_step(Network(one.modules, (), CLASSES, RULES["backprop"]), tx)(backprop, xb, yb)
    _close(ours.params, backprop.params)
    assert _differs(ours.params, state.params)


def test_aux_head_pools_conv_activations_to_a_grid():
    from sgrad.models.auxiliary import adaptive_average_pool
    h = jnp.arange(2 * 5 * 7 * 3, dtype=jnp.float32).reshape(2, 5, 7, 3)
    out = adaptive_average_pool(h, 2)
    assert out.shape == (2, 2, 2, 3)
    # torch's AdaptiveAvgPool2d cells for 5 -> 2 rows are [0, 3) and [2, 5).
    np.testing.assert_allclose(out[:, 0, 1], h[:, 0:3, 3:7].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(out[:, 1, 0], h[:, 2:5, 0:4].mean(axis=(1, 2)), rtol=1e-6)


# --- Delayed gradients (DDG) -------------------------------------------------------------------------------------

def _ddg_run(net, params, stats, batches, lr=0.05):
    """Run the DDG step with plain SGD; the states before every step."""
    return sgd_states(net, params, stats, batches, lr)


@pytest.mark.parametrize("model", MODELS)
def test_ddg_module_k_applies_the_true_gradient_of_the_minibatch_fed_k_steps_ago_at_that_steps_weights(model):
    net, params, stats, x, y = _setup("ddg", model, layers=4)
    k, lr, batches = len(net.modules), 0.05, _batches(7)
    states = _ddg_run(net, params, stats, batches, lr)
    for t in range(len(batches)):
        for j in range(k):
            moved = jax.tree.map(lambda a, b: (a - b) / -lr, states[t + 1].params["modules"][j],
                                 states[t].params["modules"][j])
            d = k - 1 - j  # module j + 1 of K: delay K - (j + 1)
            if t < d:  # nothing has come back to it yet
                assert not _differs(moved, jax.tree.map(jnp.zeros_like, moved))
                continue
            old = states[t - d]
            true, _, _ = dni.backprop_grads(net, old.params, old.stats, *batches[t - d])
            _close(moved, true["modules"][j], rtol=2e-3, atol=2e-5)
            if d > 0:  # the rule is exact: the current weights, or the neighbouring minibatch, are not it
                now, _, _ = dni.backprop_grads(net, states[t].params, states[t].stats, *batches[t - d])
                assert _differs(moved, now["modules"][j])
                if t - d + 1 < len(batches):
                    wrong, _, _ = dni.backprop_grads(net, old.params, old.stats, *batches[t - d + 1])
                    assert _differs(moved, wrong["modules"][j])


def test_ddg_with_no_delay_is_backprop():
    """One module: K - k = 0 for every module, and DDG's step is backprop's."""
    net, params, stats, x, y = _setup("ddg", layers=3)
    one = Network((LayerGroup(tuple(layer for m in net.modules for layer in m.layers)),), (), CLASSES, net.rule)
    p1, s1 = init_variables(one, jax.random.key(3), x)
    batches = _batches(3)
    ours = _ddg_run(one, p1, s1, batches)[-1]
    tx = Optimizers(optax.sgd(0.05), optax.sgd(0.05))
    backprop = create_state(p1, s1, tx)
    for xb, yb in batches:
        backprop, _ = make_train_step(Network(one.modules, (), CLASSES, RULES["backprop"]), tx)(backprop, xb, yb)
    _close(ours.params, backprop.params)


def test_ddg_probe_reads_staleness_from_the_stash_and_matches_at_unchanged_weights():
    net, params, stats, x, y = _setup("ddg", layers=4)
    k = len(net.modules)
    # Learning rate 0: weights never change, so the delayed update is the current true gradient (cosine 1).
    states = _ddg_run(net, params, stats, _batches(5), lr=0.0)
    probe = delayed.probe_delayed(net, states[-1].params, states[-1].stats, states[-1].carry, states[-1].step)
    for i in range(1, k):
        assert probe[f"ddg/staleness/{i}"] == k - i
        np.testing.assert_allclose(probe[f"ddg/cosine/{i}"], 1.0, rtol=1e-4)
        np.testing.assert_allclose(probe[f"ddg/norm_ratio/{i}"], 1.0, rtol=1e-3)
    moving = _ddg_run(net, params, stats, _batches(5), lr=0.5)[-1]
    probe = delayed.probe_delayed(net, moving.params, moving.stats, moving.carry, moving.step)
    assert probe["ddg/cosine/1"] < 1.0 - 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dgl", "ddg"])
def test_a_run_stopped_and_resumed_equals_one_that_was_not(mode, idx_dir, tmp_path):
    """Checkpoints hold everything the mode carries (DDG: the stashes and the cotangents in flight)."""
    from sgrad.run import train_and_evaluate
    from sgrad.run.metrics import read_jsonl
    base = ["dataset.name=idx", f"dataset.dir={idx_dir}", f"mode={mode}", "trainer.log_every=10",
            "checkpoint.every=20", "log.grad_probe_every=20", "trainer.eval_every=40"]
    curve = lambda d: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")}
                       for r in read_jsonl(d / "metrics.jsonl")]
    train_and_evaluate(make_cfg(*base, "trainer.steps=40"), tmp_path / "whole")
    train_and_evaluate(make_cfg(*base, "trainer.steps=20"), tmp_path / "parts")  # stops at a checkpoint
    summary = train_and_evaluate(make_cfg(*base, "trainer.steps=40"), tmp_path / "parts")  # resumes it
    assert summary["step"] == 40
    # The shorter first run also evaluated at its end (step 20); everything else is the same.
    parts = [r for r in curve(tmp_path / "parts") if not (r["step"] == 20 and "test/error" in r)]
    assert parts == curve(tmp_path / "whole")
