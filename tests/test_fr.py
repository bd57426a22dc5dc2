"""mode=fr (Features Replay, Huo, Gu and Huang 2018) at the algorithm level, against the paper's schedule written
out independently here: module k replays its input of K-k steps ago at its *current* weights and back-propagates
the cotangent that module k+1 sent back last step."""

import jax
import numpy as np
import pytest

from conftest import make_cfg, sgd_states
from sgrad.core import dni
from sgrad.models import LayerGroup
from sgrad.models.network import Network, apply, init_variables
from sgrad.modes import RULES
from sgrad.run.build import build_network

B, SIDE, CLASSES, LR = 16, 6, 5, 0.05


def _setup(layers=4, model="fcn"):
    cfg = make_cfg("mode=fr", f"model.name={model}", f"model.layers={layers}", "model.width=12")
    net = build_network(cfg, (SIDE, SIDE, 1), CLASSES)
    x = jax.random.normal(jax.random.key(0), (B, SIDE, SIDE, 1))
    params, stats = init_variables(net, jax.random.key(2), x)
    return net, params, stats


def _batches(n, seed=1):
    keys = jax.random.split(jax.random.key(seed), 2 * n)
    return [(jax.random.normal(keys[2 * t], (B, SIDE, SIDE, 1)), jax.random.randint(keys[2 * t + 1], (B,), 0, CLASSES))
            for t in range(n)]


def _run(net, params, stats, batches, lr=LR):
    return sgd_states(net, params, stats, batches, lr)


def _reference(net, params, stats, batches, lr=LR):
    """Features Replay as the paper states it, in plain Python: module parameters after every step."""
    k = len(net.modules)
    w = list(params["modules"])
    inputs = {}       # (step, module) -> the module's input in that step's forward pass
    sent = {}         # (step, module) -> cotangent module j sent down at that step (for module j-1's output)
    history = [tuple(w)]
    for t, (x, y) in enumerate(batches):
        h = x
        for j in range(k):
            inputs[t, j] = h
            h, _ = apply(net.modules[j], w[j], stats["modules"][j], (h,), True)
        _, top = dni.loss_and_top_gradient(h, y)
        new = list(w)
        for j in reversed(range(k)):
            d = k - 1 - j
            if j == k - 1:
                cot, old = top, t
            elif t - d >= 0:
                cot, old = sent[t - 1, j + 1], t - d  # what module j+1 computed last step, for minibatch t-d
            else:
                continue  # nothing has come back to module j yet
            replay = lambda p, h, j=j: apply(net.modules[j], p, stats["modules"][j], (h,), True)[0]
            _, vjp = jax.vjp(replay, w[j], inputs[old, j])  # current weights w[j], the old input
            g, down = vjp(cot)
            sent[t, j] = down
            new[j] = jax.tree.map(lambda p, g: p - lr * g / B, w[j], g)
        w = new
        history.append(tuple(w))
    return history


def _close(a, b, **kw):
    kw = {"rtol": 2e-3, "atol": 2e-5, **kw}
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), a, b)


def _differs(a, b):
    return any(not np.allclose(u, v, rtol=1e-3, atol=1e-5) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("model", ["fcn", pytest.param("cnn", marks=pytest.mark.slow)])  # the same schedule
def test_fr_follows_the_papers_schedule_step_by_step(model):
    net, params, stats = _setup(layers=4 if model == "fcn" else 3, model=model)
    batches = _batches(7)
    states = _run(net, params, stats, batches)
    reference = _reference(net, params, stats, batches)
    for t in range(len(batches) + 1):
        _close(states[t].params["modules"], reference[t])
    assert _differs(states[-1].params["modules"][0], params["modules"][0]), "the lowest module must have learned"


def test_fr_replays_at_current_weights_where_ddg_uses_stashed_ones():
    net, params, stats = _setup()
    batches = _batches(6)
    fr = _run(net, params, stats, batches)[-1].params["modules"]
    ddg = Network(net.modules, (), CLASSES, RULES["ddg"])
    stashed = _run(ddg, params, stats, batches)[-1].params["modules"]
    assert _differs(fr[0], stashed[0])
    # With weights that never move the two are one rule.
    frozen = [_run(n, params, stats, batches, lr=0.0)[-1] for n in (net, ddg)]
    _close(frozen[0].carry[0].cotangent, frozen[1].carry[0].cotangent, rtol=1e-5, atol=1e-6)


def test_fr_with_one_module_is_backprop():
    net, params, stats = _setup(layers=3)
    one = Network((LayerGroup(tuple(layer for m in net.modules for layer in m.layers)),), (), CLASSES, RULES["fr"])
    x = _batches(1)[0][0]
    p1, s1 = init_variables(one, jax.random.key(3), x)
    batches = _batches(3)
    ours = _run(one, p1, s1, batches)[-1]
    backprop = _run(Network(one.modules, (), CLASSES, RULES["backprop"]), p1, s1, batches)[-1]
    _close(ours.params, backprop.params, rtol=1e-5, atol=1e-7)


def test_fr_probe_reads_staleness_and_agrees_at_unchanged_weights():
    net, params, stats = _setup()
    k = len(net.modules)
    state = _run(net, params, stats, _batches(5), lr=0.0)[-1]
    probe = RULES["fr"].probe(net, state, None, None)
    for i in range(1, k):
        assert probe[f"fr/staleness/{i}"] == k - i
        np.testing.assert_allclose(probe[f"fr/cosine/{i}"], 1.0, rtol=1e-4)
    assert "ddg/cosine/1" not in probe
    assert RULES["fr"].probe_ready("fr/cosine/1", k - 1, k) and not RULES["fr"].probe_ready("fr/cosine/1", k - 2, k)
