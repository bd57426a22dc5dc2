"""Recurrent DNI: the copy tasks, truncated BPTT, the boundary synthetic gradient and its bootstrapped target."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_cfg
from sgrad.modes import RULES
from sgrad.config import ConfigError
from sgrad.run.build import check
from sgrad.data.errors import DatasetError
from sgrad.data.text import TextStream, load_char_corpus
from sgrad.models.lstm import LSTMCore
from sgrad.core.recurrent import (RecurrentNet, RecurrentState, dni_window, future_gradient_probe, future_gradients,
                                  init_trace, make_recurrent_step, synthetic_gradient, window, window_grads, window_label)
from sgrad.core.dni import agreement, regression_grads
from sgrad.core.least_squares import forgetting_least_squares
from sgrad.core.optim import Optimizers
from sgrad.models.synthetic import DenseSynthetic
from sgrad.data.copy import CopyTask, copy_episode, repeat_copy_episode
from sgrad.run import train_and_evaluate
from sgrad.run.metrics import read_jsonl


def test_copy_episode_target_is_the_input():
    x, y, mask = copy_episode(np.random.default_rng(0), 5, 8)
    assert x.shape == (11, 9) and y.shape == (11, 8) and mask.shape == (11,)
    np.testing.assert_array_equal(y[6:], x[:5, :8])
    assert x[5, 8] == 1 and x[:, 8].sum() == 1 and not x[6:].any()
    np.testing.assert_array_equal(mask, [0] * 6 + [1] * 5)


@pytest.mark.parametrize("repeats", [1, 3])
def test_repeat_copy_episode_repeats_the_input(repeats):
    x, y, mask = repeat_copy_episode(np.random.default_rng(1), 4, repeats, 8, max_repeats=5)
    assert len(x) == 4 + 1 + repeats * 4 + 1 and x.shape[1] == 10 and y.shape[1] == 9
    np.testing.assert_array_equal(y[5:5 + 4 * repeats, :8], np.tile(x[:4, :8], (repeats, 1)))
    assert x[4, 9] == pytest.approx(repeats / 5) and y[-1, 8] == 1 and y[:, 8].sum() == 1
    assert mask[:5].sum() == 0 and mask[5:].all()


def test_stream_chunks_are_windows_of_episodes_and_reproducible():
    task = CopyTask("copy", 8, batch=3, window=4, seed=0, start_length=2)
    c = task.chunk(0, 5)
    assert c.x.shape == (5, 3, 4, 9) and c.y.shape == (5, 3, 4, 8) and c.resets.shape == (5, 3, 4)
    flat = lambda a: np.swapaxes(a, 0, 1).reshape(3, 20, *a.shape[3:])
    # Episodes of length 2N+1 = 5 laid end to end: a reset every 5 steps.
    np.testing.assert_array_equal(np.nonzero(flat(c.resets)[0])[0], [0, 5, 10, 15])
    np.testing.assert_array_equal(flat(c.y)[0, 3:5], flat(c.x)[0, 0:2, :8])
    np.testing.assert_array_equal(task.chunk(0, 5).x, c.x)
    assert not np.array_equal(task.chunk(5, 5).x, c.x)
    assert task.observe(0.1) and task.level == 3 and task.solved == 2
    assert not task.observe(0.5) and task.level == 3


def _setup(length=8, hidden=6, batch=3, aux=False):
    core = LSTMCore(hidden, 4, aux=aux)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 2, (batch, length, 5)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, (batch, length, 4)).astype(np.float32))
    mask = jnp.ones((batch, length))
    # A reset mid-way (row 0) and none at the start, so the gradient reaches s0 in the other rows.
    resets = jnp.zeros((batch, length)).at[0, 5].set(1.0)
    s0 = jnp.asarray(rng.normal(0, 0.5, (batch, 2 * hidden)).astype(np.float32))
    net = RecurrentNet(core, None, "bits", RULES["backprop"])
    params = core.init(jax.random.key(0), (s0[:, :hidden], s0[:, hidden:]), x, resets)["params"]
    return net, params, s0, (x, y, mask, resets)


def _slice(data, a, b):
    return tuple(d[:, a:b] for d in data)


def _full_bptt_loss(net, params, s0, data):
    """Sum of the loss over one-step windows, the carry chained with its gradient: BPTT written out by hand."""
    total, s = 0.0, s0
    for t in range(data[0].shape[1]):
        (loss, _, s), _ = window(net, params, s, *_slice(data, t, t + 1))
        total = total + loss
    return total


def _close(a, b, tol=1e-5):
    return all(np.allclose(x, y, atol=tol, rtol=1e-4) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_oracle_synthetic_gradient_recovers_full_bptt_and_the_target_is_bootstrapped():
    net, params, s0, data = _setup()
    batch = s0.shape[0]
    full_loss = lambda p, s: _full_bptt_loss(net, p, s, data)
    full = jax.tree.map(lambda g: g / batch, jax.grad(full_loss)(params, s0))
    (_, _, s4), _ = window(net, params, s0, *_slice(data, 0, 4))
    # The true gradient of all loss after the boundary w.r.t. the state there.
    future = jax.grad(lambda s: window(net, params, s, *_slice(data, 4, 8))[0][0])(s4)
    g1, target, _, _ = dni_window(net, params, lambda s: future, s0, *_slice(data, 0, 4))
    g2, _, _, _, _ = window_grads(net, {"core": params, "sg": ()}, s4, *_slice(data, 4, 8))
    assert _close(jax.tree.map(jnp.add, g1, g2), full)
    # Truncation really cuts: without ĝ, the two windows of 4 do not give the full gradient.
    cut, _, _, _, _ = window_grads(net, {"core": params, "sg": ()}, s0, *_slice(data, 0, 4))
    assert not _close(jax.tree.map(jnp.add, cut, g2), full)
    # M's target at s0 = d(window loss)/ds0 + VJP of ĝ through the window: with the oracle, the full gradient.
    np.testing.assert_allclose(target, jax.grad(full_loss, argnums=1)(params, s0), atol=1e-5)
    # With a discount only the bootstrapped part shrinks.
    _, target0, _, _ = dni_window(RecurrentNet(net.core, None, "bits", RULES["dni"], discount=0.0), params, lambda s: future,
                                  s0, *_slice(data, 0, 4))
    own = jax.grad(lambda s: window(net, params, s, *_slice(data, 0, 4))[0][0])(s0)
    np.testing.assert_allclose(target0, own, atol=1e-6)
    assert not np.allclose(target0, target, atol=1e-4)


def _windows(data, size):
    """[B, L, ...] -> [L/size, B, size, ...]: a stream cut into windows, as a chunk holds it."""
    return tuple(jnp.swapaxes(d.reshape(d.shape[0], -1, size, *d.shape[2:]), 0, 1) for d in data)


@pytest.mark.slow  # a diagnostic, not the update rule: 8 s of compiling
def test_the_probe_compares_sg_with_full_bptt_from_every_boundary_it_counts():
    net, params, s0, data = _setup()
    net = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["dni"], discount=0.5)
    states, grads = future_gradients(net, params, s0, *_windows(data, 2))
    s = s0
    for k in range(3):
        def rest(v, k=k):
            # Windows k..3 chained by hand, window j weighted by γ^(j-k); row 0 restarts at step 5 (window 2).
            total = 0.0
            for j in range(k, 4):
                (loss, _, v), _ = window(net, params, v, *_slice(data, 2 * j, 2 * j + 2))
                total = total + 0.5 ** (j - k) * loss
            return total
        np.testing.assert_allclose(states[k], s, atol=1e-6)
        if k:  # the boundaries the probe counts
            np.testing.assert_allclose(grads[k], jax.grad(rest)(s), atol=1e-5)
        (_, _, s), _ = window(net, params, s, *_slice(data, 2 * k, 2 * k + 2))
    # M = the identity: ĝ is the state itself; the probe counts boundaries 1 and 2 of 4 (each followed by at least
    # half the stream), ĝ silenced where the window after the boundary starts with a reset (none here).
    sg = {"Dense_0": {"kernel": jnp.eye(s0.shape[1]), "bias": jnp.zeros(s0.shape[1])}}
    got = future_gradient_probe(net, {"core": params, "sg": sg}, s0, *_windows(data, 2))
    want = agreement(states[1:3], grads[1:3])
    np.testing.assert_allclose((got["sg/cosine"], got["sg/norm_ratio"]), want, rtol=1e-5)
    resets = _windows(data, 2)[3].at[1, 1, 0].set(1.0)  # row 1 starts a new sequence right after boundary 1
    silenced = future_gradient_probe(net, {"core": params, "sg": sg}, s0, *_windows(data, 2)[:3], resets)
    states_r, grads_r = future_gradients(net, params, s0, *_windows(data, 2)[:3], resets)
    assert not np.asarray(grads_r[1, 1]).any()  # nothing after the reset depends on the state before it
    want = agreement(states_r[1:3].at[0, 1].set(0.0), grads_r[1:3])
    np.testing.assert_allclose((silenced["sg/cosine"], silenced["sg/norm_ratio"]), want, rtol=1e-5)


@pytest.mark.slow  # λ-return targets, an opt-in setting
def test_the_lambda_return_target_is_the_recursion_written_out_by_hand(lam=0.6):
    # Windows of 2 steps: window 0 trains, windows 1-2 are read by the λ-return (trace_windows=2), window 3 only
    # says whether the boundary before it continues. Row 0 restarts at step 5 (inside window 2).
    net, params, s0, data = _setup()
    dni_net = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["dni"], discount=0.9,
                           trace_lambda=lam, trace_windows=2)
    sg = jax.tree.map(lambda w: 0.1 * jax.random.normal(jax.random.key(3), w.shape),
                      dni_net.sg_model.init(jax.random.key(1), s0, None, False)["params"])
    windows = _windows(data, 2)
    first = tuple(w[0] for w in windows)
    ahead = tuple(w[1:] for w in windows)
    following = (windows[1][1], windows[2][1], windows[3][1])
    p = {"core": params, "sg": sg}
    g_core, d_sg, _, _, _ = window_grads(dni_net, p, s0, *first, following, 1.0, ahead)
    # M regresses toward the target written out by hand: its gradient is that regression's.
    want = _lambda_target_by_hand(dni_net, params, sg, s0, data, lam)
    pred, vjp = jax.vjp(lambda q: dni_net.sg_model.apply({"params": q}, s0, None, False), sg)
    (want_sg,) = vjp(2.0 * (pred - want) / s0.shape[0])
    assert _close(d_sg, want_sg, tol=1e-5)
    # The core's own update does not change with λ.
    one_window = RecurrentNet(dni_net.core, dni_net.sg_model, "bits", RULES["dni"], discount=0.9)
    assert _close(g_core, window_grads(one_window, p, s0, *first, following)[0], tol=0)


def _lambda_return_by_hand(net, params, sg, s1, data, lam):
    """G^λ at the boundary before window 1, from windows 1 and 2 chained one at a time, ĝ after window 2."""
    m = lambda s: net.sg_model.apply({"params": sg}, s, None, False)
    keep = lambda j: 1.0 - data[3][:, 2 * j][:, None]   # ĝ is 0 before a window that starts a new sequence
    step = lambda j, s: window(net, params, s, *_slice(data, 2 * j, 2 * j + 2))[0]
    s2 = step(1, s1)[2]
    s3 = step(2, s2)[2]
    g3 = keep(3) * m(s3)
    g2 = jax.grad(lambda s: step(2, s)[0] + 0.9 * jnp.vdot(g3, step(2, s)[2]))(s2)
    mix = (1 - lam) * keep(2) * m(s2) + lam * g2
    return jax.grad(lambda s: step(1, s)[0] + 0.9 * jnp.vdot(mix, step(1, s)[2]))(s1)


def _lambda_target_by_hand(net, params, sg, s0, data, lam):
    m = lambda s: net.sg_model.apply({"params": sg}, s, None, False)
    step = lambda s: window(net, params, s, *_slice(data, 0, 2))[0]
    s1 = step(s0)[2]
    keep = 1.0 - data[3][:, 2][:, None]
    mix = (1 - lam) * keep * m(s1) + lam * _lambda_return_by_hand(net, params, sg, s1, data, lam)
    return jax.grad(lambda s: step(s)[0] + 0.9 * jnp.vdot(mix, step(s)[2]))(s0)


@pytest.mark.slow  # its forward view, written out by hand, runs op by op: 12 s
def test_accumulate_bp_lambda_sums_to_the_forward_view_update_written_out_by_hand(lam=0.7, gamma=0.9):
    # Four windows of 2 steps and a fifth that only follows the fourth; row 0 restarts inside window 2, row 1 at
    # the start of window 2 (ĝ before it is 0, and nothing after it depends on the states before it).
    net, params, s0, data = _setup(length=10)
    data = (*data[:3], data[3].at[1, 4].set(1.0))
    acc = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["dni"], discount=gamma,
                       trace_lambda=lam, trace="accumulate")
    sg = jax.tree.map(lambda w: 0.1 * jax.random.normal(jax.random.key(3), w.shape),
                      acc.sg_model.init(jax.random.key(1), s0, None, False)["params"])
    p, windows = {"core": params, "sg": sg}, _windows(data, 2)
    at = lambda k: tuple(w[k] for w in windows)
    trace = init_trace(acc, sg, 3)
    total, s, firsts = None, s0, []
    for k in range(4):  # θ held fixed: BP(λ)'s online updates summed over the stream
        _, d_sg, s, trace, _ = window_grads(acc, p, s, *at(k), at(k + 1)[1:], 1.0, None, trace)
        total = d_sg if total is None else jax.tree.map(jnp.add, total, d_sg)
        firsts.append(d_sg)
    # The forward view, from n-window returns chained by hand: G^λ_k = (1-λ) Σ_n λ^(n-1) G^(n)_k + λ^(N-1) G^(N)_k,
    # ĝ bootstrapping after window 3, each boundary's ĝ masked where the window after it restarts.
    keep = lambda k: 1.0 - windows[3][k][:, :1]
    m = lambda q, s, k: keep(k) * acc.sg_model.apply({"params": q}, s, None, False)
    states = [s0]
    for k in range(4):
        states.append(window(net, params, states[-1], *at(k))[0][2])

    def n_window_return(k, n):
        def ahead(s):
            loss = 0.0
            for i in range(n):
                (l, _, s), _ = window(net, params, s, *at(k + i))
                loss = loss + gamma ** i * l
            return loss + gamma ** n * jnp.vdot(m(sg, states[k + n], k + n), s)
        return jax.grad(ahead)(states[k])

    def forward_loss(q):
        loss = 0.0
        for k in range(4):
            left = 4 - k
            g = sum((1 - lam) * lam ** (n - 1) * n_window_return(k, n) for n in range(1, left))
            g = g + lam ** (left - 1) * n_window_return(k, left)
            loss = loss + jnp.sum((m(q, states[k], k) - g) ** 2) / s0.shape[0]
        return loss
    want = jax.grad(forward_loss)(sg)
    assert _close(total, want, tol=1e-5)
    # The first window's update (an empty trace) is the paper's one-window regression; the later ones are not.
    paper = RecurrentNet(net.core, acc.sg_model, "bits", RULES["dni"], discount=gamma)
    assert _close(firsts[0], window_grads(paper, p, s0, *at(0), at(1)[1:])[1], tol=1e-6)
    _, second, _, _, _ = window_grads(paper, p, states[1], *at(1), at(2)[1:])
    assert not _close(firsts[1], second, tol=1e-4)


@pytest.mark.slow  # sg.oracle, a diagnostic
def test_the_oracle_steps_the_core_along_the_true_gradient_of_the_windows_ahead():
    net, params, s0, data = _setup()
    onet = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["dni"], trace_windows=2,
                        oracle=True)
    sg = onet.sg_model.init(jax.random.key(1), s0, None, False)["params"]
    sg = jax.tree.map(lambda w: 0.1 * jax.random.normal(jax.random.key(2), w.shape), sg)  # M is not what steps
    ahead = tuple(jnp.stack([d[:, 2:4], d[:, 4:6], d[:, 6:8]]) for d in data)  # 2 windows read, 1 after them
    following = tuple(d[:, 2:4] for d in data[1:])
    got, _, _, _, _ = window_grads(onet, {"core": params, "sg": sg}, s0, *_slice(data, 0, 2), following, 1.0, ahead)

    def loss(p0):  # the first window's parameters, the two windows after it at fixed parameters (BPTT by hand)
        (l0, _, s), _ = window(net, p0, s0, *_slice(data, 0, 2))
        (l1, _, s), _ = window(net, params, s, *_slice(data, 2, 4))
        (l2, _, _), _ = window(net, params, s, *_slice(data, 4, 6))
        return l0 + l1 + l2
    want = jax.tree.map(lambda g: g / s0.shape[0], jax.grad(loss)(params))
    assert _close(got, want)
    g_bp, _, _, _, _ = window_grads(net, {"core": params, "sg": ()}, s0, *_slice(data, 0, 2))
    assert not _close(got, g_bp)  # the windows ahead did reach it


def test_zero_initialised_sg_gives_the_truncated_bptt_update_first():
    net, params, s0, data = _setup()
    dni_net = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["dni"])
    sg = dni_net.sg_model.init(jax.random.key(1), s0, None, False)["params"]
    g_bp, _, _, _, _ = window_grads(net, {"core": params, "sg": ()}, s0, *_slice(data, 0, 4))
    g_dni, d_sg, _, _, _ = window_grads(dni_net, {"core": params, "sg": sg}, s0, *_slice(data, 0, 4))
    assert _close(g_dni, g_bp, tol=0)
    assert any(np.abs(np.asarray(v)).max() > 0 for v in jax.tree.leaves(d_sg))  # but M already learns


def test_least_squares_m_is_the_forgetting_ridge_fit_of_every_target_so_far(forget=0.7, ridge=0.05):
    model = DenseSynthetic(0, 1, batch_norm=False)
    rng = np.random.default_rng(3)
    xs = [jnp.asarray(rng.normal(size=(16, 5)).astype(np.float32)) for _ in range(4)]
    ys = [jnp.asarray(rng.normal(size=(16, 5)).astype(np.float32)) for _ in range(4)]
    params = model.init(jax.random.key(0), xs[0], None, False)["params"]
    tx = forgetting_least_squares(forget, ridge)
    state = tx.init(params)
    for t, (x, y) in enumerate(zip(xs, ys)):
        pred, vjp = jax.vjp(lambda q: model.apply({"params": q}, x, None, False), params)
        (grads,), _ = regression_grads([pred], [vjp], [y])
        updates, state = tx.update(grads, state, params, inputs=x)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        # The weighted ridge regression on windows 0..t written out: window k weighted forget^(t-k), mean over rows.
        a = ridge * np.eye(6)
        c = np.zeros((6, 5))
        for k in range(t + 1):
            xk = np.concatenate([np.asarray(xs[k], np.float64), np.ones((16, 1))], 1)
            a += forget ** (t - k) * xk.T @ xk / 16
            c += forget ** (t - k) * xk.T @ np.asarray(ys[k], np.float64) / 16
        w = np.linalg.solve(a, c)
        np.testing.assert_allclose(params["Dense_0"]["kernel"], w[:-1], atol=2e-4)
        np.testing.assert_allclose(params["Dense_0"]["bias"], w[-1], atol=2e-4)


@pytest.mark.slow  # one real step of sg.optim.name=rls; its fit is the fast test above
def test_a_least_squares_m_fits_its_target_at_the_carry_and_label_it_read(mode="cdni"):
    net, params, s0, data = _setup(batch=32, hidden=3)
    # Rows 0-5 start a new sequence with this window: ĝ at their s0 is never used, and M fits nothing there.
    starts = np.arange(32) < 6
    data = (*data[:3], data[3].at[:6, 0].set(1.0))
    rnet = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES[mode])
    label = None if mode == "dni" else jnp.zeros((32, 4 * 4))
    sg = rnet.sg_model.init(jax.random.key(1), s0, label, False)["params"]
    sg = jax.tree.map(lambda w: 0.1 * jax.random.normal(jax.random.key(2), w.shape), sg)
    p = {"core": params, "sg": sg}
    tx = Optimizers(optax.sgd(0.0), forgetting_least_squares(1.0, 1e-6))
    state = RecurrentState(jnp.zeros((), jnp.int32), p, {"core": tx.modules.init(params), "sg": tx.sg.init(sg)}, s0)
    first, rest = _slice(data, 0, 4), _slice(data, 4, 8)
    following = (rest[1], rest[2], jnp.zeros_like(rest[3]))
    # M's target at s0 with ĝ(s_T) from M as it was before the step.
    g_T = synthetic_gradient(rnet, sg, window(rnet, params, s0, *first)[0][2], window_label(rnet, *following[:2], 4))
    _, target, _, _ = dni_window(rnet, params, lambda s: g_T, s0, *first)
    assert not np.asarray(target)[starts].any() and np.asarray(target)[~starts].any()
    new, _ = make_recurrent_step(rnet, tx)(state, *first, following)
    # One window, no forgetting, a negligible ridge: M is the least-squares fit of the targets on what it read, over
    # the rows it uses (a fit over all rows would also bend toward the zero targets of the new sequences).
    feats = [np.asarray(s0)] + ([] if mode == "dni" else [np.asarray(window_label(rnet, first[1], first[2], 4))])
    x = np.concatenate(feats + [np.ones((32, 1))], 1).astype(np.float64)[~starts]
    w = np.linalg.lstsq(x, np.asarray(target, np.float64)[~starts], rcond=None)[0]
    fit = new.params["sg"]["Dense_0"]
    np.testing.assert_allclose(fit["kernel"], w[:-1], atol=2e-3)
    np.testing.assert_allclose(fit["bias"], w[-1], atol=2e-3)
    # A gradient-trained M: what the new sequences' rows held before the reset changes nothing it learns.
    _, d_sg, _, _, _ = window_grads(rnet, p, s0, *first, following)
    _, d_moved, _, _, _ = window_grads(rnet, p, s0.at[:6].add(1.0), *first, following)
    assert _close(d_sg, d_moved) and optax.global_norm(d_sg) > 0


def test_cdni_conditions_on_the_next_window_and_a_reset_silences_the_sg():
    net, params, s0, data = _setup()
    cnet = RecurrentNet(net.core, DenseSynthetic(0, 1, batch_norm=False), "bits", RULES["cdni"])
    label = jnp.zeros((s0.shape[0], 4 * 4))
    sg = cnet.sg_model.init(jax.random.key(1), s0, label, False)["params"]
    # Give M a non-zero output layer, so that what it sees matters.
    sg = jax.tree.map(lambda w: 0.1 * jax.random.normal(jax.random.key(2), w.shape), sg)
    p = {"core": params, "sg": sg}
    first, rest = _slice(data, 0, 4), _slice(data, 4, 8)
    following = (rest[1], rest[2], jnp.zeros_like(rest[3]))
    g_a, _, _, _, _ = window_grads(cnet, p, s0, *first, following)
    g_b, _, _, _, _ = window_grads(cnet, p, s0, *first, (1.0 - rest[1], rest[2], following[2]))
    assert not _close(g_a, g_b)  # other targets after the boundary, another synthetic gradient
    reset = (rest[1], rest[2], jnp.ones_like(rest[3]))
    g_reset, _, _, _, _ = window_grads(cnet, p, s0, *first, reset)
    g_bptt, _, _, _, _ = window_grads(net, {"core": params, "sg": ()}, s0, *first)
    assert _close(g_reset, g_bptt)  # the state is zeroed after the boundary: the future gradient is exactly 0


def test_aux_head_is_trained_toward_the_boundary_gradient():
    net, params, s0, data = _setup(aux=True)
    g = jnp.ones_like(s0)
    with_aux, _, _, sums = dni_window(net, params, lambda s: g, s0, *_slice(data, 0, 4))
    without, _, _, _ = dni_window(RecurrentNet(net.core, None, "bits", RULES["dni"], aux_weight=0.0), params, lambda s: g, s0,
                                  *_slice(data, 0, 4))
    assert sums["aux_loss"] > 0
    # Only the aux head and the shared LSTM see the aux loss; the readout does not.
    assert not _close(with_aux["Dense_1"], without["Dense_1"]) and _close(with_aux["Dense_0"], without["Dense_0"])


def _copy_cfg(tmp_path, mode, *extra):
    return make_cfg("model.name=lstm", "dataset.name=copy", f"mode={mode}", "model.hidden=32",
                    "trainer.bptt=3", "trainer.batch_size=32", "trainer.log_every=50", "trainer.steps=600",
                    "optim.lr=1e-2", "sg.optim.lr=1e-3", "sg.hidden_layers=0", "checkpoint.every=0",
                    "log.grad_probe_every=300", "dataset.curriculum_threshold=0.3", *extra)


@pytest.mark.parametrize("mode, extra", [("backprop", []), ("dni", []), ("dni", ["sg.aux=true"]), ("cdni", [])])
def test_copy_task_learns(tmp_path, mode, extra):
    summary = train_and_evaluate(_copy_cfg(tmp_path, mode, *extra), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Chance is 1 bit per bit; the curriculum moves only once a length is solved.
    assert summary["status"] == "completed" and summary["max_length_solved"] >= 1, summary
    best = min(r["train/error_per_bit"] for r in rows if "train/error_per_bit" in r)
    assert best < 0.3 and rows[0]["train/error_per_bit"] > 1.5 * best
    if mode != "backprop":
        assert [r["step"] for r in rows if "sg/cosine" in r] == [300, 600]
        assert all(r["sg/loss"] >= 0 for r in rows if "sg/loss" in r)


@pytest.mark.slow  # an opt-in setting's learning run; its update is the fast equivalence test's
def test_accumulate_bp_lambda_learns_copy_and_refuses_a_trace_beyond_memory(tmp_path):
    summary = train_and_evaluate(_copy_cfg(tmp_path, "dni", "sg.trace=accumulate", "sg.trace_lambda=0.9",
                                           "model.hidden=16"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "completed" and summary["max_length_solved"] >= 1, summary
    assert summary["sg_trace"] == "accumulate" and summary["trace_lambda"] == 0.9
    best = min(r["train/error_per_bit"] for r in rows if "train/error_per_bit" in r)
    assert best < 0.3 and rows[0]["train/error_per_bit"] > 1.5 * best
    assert all(np.isfinite(r["sg/loss"]) and r["sg/loss"] >= 0 for r in rows if "sg/loss" in r)
    # The paper's 256 units: 64 x 512 x (512 x 513) floats, 34 GiB.
    from sgrad.run.sequence import SequenceTask
    with pytest.raises(ConfigError, match=r"model.hidden=256 .*accumulate.* GiB here"):
        SequenceTask(make_cfg("model.name=lstm", "dataset.name=copy", "mode=dni", "trainer.bptt=2",
                              "trainer.batch_size=64", "sg.hidden_layers=0", "sg.trace=accumulate",
                              "sg.trace_lambda=0.9"))


def _write_ptb(folder, text_lines):
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in text_lines.items():
        (folder / f"ptb.char.{split}.txt").write_text("\n".join(" ".join(line.replace(" ", "_")) for line in lines))


@pytest.mark.slow
def test_char_corpus_and_a_short_run(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog"]
    make = lambda n: [" ".join(rng.choice(words, 6)) for _ in range(n)]
    _write_ptb(tmp_path / "ptb", {"train": make(300), "valid": make(40), "test": make(40)})
    corpus = load_char_corpus(str(tmp_path / "ptb"))
    assert set(corpus["vocab"]) == set("thecasonmdg_") | {"\n"}
    stream = TextStream(corpus, batch=4, window=5)
    c = stream.chunk(0, 2)
    assert c.x.shape == (2, 4, 5, len(corpus["vocab"])) and c.y.shape == (2, 4, 5)
    np.testing.assert_array_equal(c.x[0, :, 1:].argmax(-1), c.y[0, :, :-1])
    cfg = make_cfg("model.name=lstm", "dataset.name=ptb_char", f"dataset.dir={tmp_path / 'ptb'}", "mode=dni",
                   "model.hidden=32", "trainer.bptt=5", "trainer.batch_size=16", "trainer.steps=200",
                   "trainer.log_every=50", "optim.lr=1e-2", "sg.hidden_layers=0", "checkpoint.every=0",
                   "sg.discount=0.9")
    summary = train_and_evaluate(cfg, tmp_path / "run")
    # A uniform guess costs log2(13) = 3.7 bits per character; this text is far more predictable.
    assert summary["valid/bpc"] < 1.5 and summary["test/bpc"] < 1.5, summary


def test_missing_char_corpus_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*no pinned checksum.*dataset.checksum=sha256"):
        load_char_corpus(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="downloading is off.*simple-examples.tgz"):
        load_char_corpus(str(tmp_path / "nowhere"), download=False)


def _archive(tmp_path):
    import hashlib
    import tarfile
    _write_ptb(tmp_path / "src" / "simple-examples" / "data",
               {"train": ["a cat sat"] * 20, "valid": ["a cat"] * 3, "test": ["cat sat"] * 3})
    archive = tmp_path / "simple-examples.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "simple-examples", arcname="./simple-examples")
    return archive, "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()


def test_char_corpus_download_verifies_the_checksum_and_caches(tmp_path):
    archive, checksum = _archive(tmp_path)
    cache = tmp_path / "cache"
    corpus = load_char_corpus(str(cache), checksum=checksum, url=archive.as_uri(), progress=False)
    assert {"train", "valid", "test"} <= set(corpus) and (cache / "ptb.char.train.txt").is_file()
    archive.unlink()  # now served from the cache
    assert np.array_equal(load_char_corpus(str(cache))["train"], corpus["train"])
    bad = "sha256:" + "0" * 64
    archive2, _ = _archive(tmp_path / "again")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_char_corpus(str(tmp_path / "cache2"), checksum=bad, url=archive2.as_uri(), progress=False)
    assert not (tmp_path / "cache2" / "ptb.char.train.txt").exists()


@pytest.mark.parametrize("overrides, key", [
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=0"], "trainer.bptt"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "mode=dni_full"], "mode"),
    (["model.name=lstm", "dataset.name=two_timescale", "trainer.bptt=4", "mode=cdni"], "mode"),
    (["model.name=lstm", "dataset.name=mnist", "trainer.bptt=4", "dataset.pixels_per_step=0"],
     "dataset.pixels_per_step"),
    (["model.name=fcn", "trainer.bptt=4"], "trainer.bptt"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace_lambda=1.5"], "sg.trace_lambda"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace_lambda=0.5", "sg.trace_windows=0"],
     "sg.trace_windows"),
    (["model.name=fcn", "sg.trace_lambda=0.5"], "sg.trace_lambda"),
    (["model.name=fcn", "sg.oracle=true"], "sg.oracle"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.oracle=true", "mode=backprop"], "sg.oracle"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "optim.name=rls"], "optim.name"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.optim.name=rls", "sg.hidden_layers=1"],
     "sg.optim.name"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.optim.name=rls", "mode=backprop",
      "sg.hidden_layers=0"], "sg.optim.name"),
    (["model.name=fcn", "sg.optim.name=rls", "sg.hidden_layers=0"], "sg.optim.name"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.optim.name=rls", "sg.hidden_layers=0",
      "sg.optim.forget=0"], "sg.optim.forget"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace=accumulate", "mode=backprop"], "sg.trace"),
    (["model.name=fcn", "sg.trace=accumulate"], "sg.trace"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace=accumulate", "sg.optim.name=rls",
      "sg.hidden_layers=0"], "sg.optim.name"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace=accumulate", "sg.oracle=true"],
     "sg.oracle"),
    (["model.name=lstm", "dataset.name=copy", "trainer.bptt=4", "sg.trace=accumulate", "sg.hidden_layers=1"],
     "sg.hidden_layers"),
])
def test_recurrent_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        check(make_cfg(*overrides))


@pytest.mark.slow
def test_report_tables_the_longest_length_per_window(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    for mode, t in (("backprop", 2), ("dni", 2), ("dni", 3)):
        train_and_evaluate(_copy_cfg(tmp_path, mode, "trainer.steps=100", f"trainer.bptt={t}"), tmp_path / f"{mode}{t}")
    res = subprocess.run([sys.executable, "scripts/report_recurrent.py", str(tmp_path), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "r" / "table.md").read_text().splitlines()
    assert "| | T=2 | T=3 |" in table
    dni_row = next(line for line in table if line.startswith("| DNI |"))
    solved = json.loads((tmp_path / "dni3" / "summary.json").read_text())["max_length_solved"]
    assert dni_row.endswith(f"| {solved} |")
    assert next(line for line in table if line.startswith("| backprop")).endswith("| – |")
    assert (tmp_path / "r" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "r" / "runs.csv").read_text().splitlines()) == 4


def echo_corpus(blocks: int, block: int, symbols: int, seed: int) -> np.ndarray:
    """A never-resetting character stream of random blocks each followed by its copy: the second half of a
    block is predictable only from characters up to 2*block-1 steps back."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.tile(rng.integers(0, symbols, block), 2) for _ in range(blocks)]).astype(np.int32)


@pytest.mark.slow
def test_dni_learns_a_predictable_future_gradient_on_a_stream_and_beats_short_bptt(tmp_path):
    # The failure this guards against: on a stream that never resets (text), the bootstrapped SG ran away
    # (|ĝ| ~ 1e5 here with sg.discount=0.9) and DNI did worse than truncated BPTT.
    corpus = {"train": echo_corpus(4000, 5, 4, 0), "valid": echo_corpus(300, 5, 4, 1),
              "test": echo_corpus(300, 5, 4, 2), "vocab": np.array(list("abcd"))}
    results = {}
    for mode in ("backprop", "dni"):
        cfg = make_cfg("model.name=lstm", "dataset.name=text", f"mode={mode}", "model.hidden=64", "trainer.bptt=2",
                       "trainer.batch_size=32", "trainer.log_every=100", "trainer.steps=2000",
                       "trainer.eval_every=2000", "optim.lr=3e-3", "sg.optim.lr=1e-3", "sg.hidden_layers=0",
                       "sg.discount=0.5", "checkpoint.every=0", "log.grad_probe_every=200")
        results[mode] = train_and_evaluate(cfg, tmp_path / mode, text=corpus)
    cosines = [r["sg/cosine"] for r in read_jsonl(tmp_path / "dni" / "metrics.jsonl") if "sg/cosine" in r]
    # Chance is 2 bits; remembering the block gives 1.
    assert results["dni"]["valid/bpc"] < results["backprop"]["valid/bpc"] - 0.03, results
    assert np.mean(cosines) > 0.02, cosines


FORTUNES = Path("/usr/share/games/fortunes")


@pytest.mark.slow
@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed")
def test_dni_on_real_text_is_no_worse_than_truncated_bptt(tmp_path):
    # Before the fix, DNI on text ended a full bit per character above truncated BPTT.
    from sgrad.config.compose import compose_config
    bpc = {}
    for exp in ("ptb_char_backprop", "ptb_char_dni"):
        cfg = compose_config(f"+exp={exp}", "dataset=text", f"dataset.dir={FORTUNES}", "model.hidden=64",
                             "trainer.batch_size=64", "trainer.steps=800", "trainer.eval_every=800",
                             "sg.warmup_steps=100", "log.grad_probe_every=0", "trainer.progress=false")
        summary = train_and_evaluate(cfg, tmp_path / exp)
        assert summary["status"] == "completed"
        bpc[exp] = summary["valid/bpc"]
    assert bpc["ptb_char_backprop"] < 4.0, bpc  # it learned (uniform over ~110 symbols is 6.8 bits)
    assert bpc["ptb_char_dni"] <= bpc["ptb_char_backprop"] + 0.05, bpc


def test_the_probe_table_lists_every_probe_and_the_late_mean(tmp_path):
    import argparse

    import recurrent_probe
    args = argparse.Namespace(windows=1500, bptt=2, seed=0)
    text = recurrent_probe.table([
        {"name": "preset", "overrides": [], "cosine": [0.1, -0.2, 0.4], "solved": 3, "commit": "abc", "cpu": "x"},
        {"name": "λ", "overrides": ["sg.trace_lambda=0.9"], "cosine": [0.3, 0.5], "solved": 4, "commit": "abc",
         "cpu": "x"}], args)
    assert "| setting | overrides | sg/cosine at window 500 | 1000 | 1500 | mean, second half | solved |" in text
    assert "| preset | – | +0.10 | -0.20 | +0.40 | +0.10 | 3 |" in text  # mean of -0.2 and 0.4
    assert "| λ | sg.trace_lambda=0.9 | +0.30 | +0.50 | | +0.50 | 4 |" in text
    assert "Commit(s) abc" in text


def test_the_recurrent_report_names_lambda_returns_and_averages_seeds():
    import report_recurrent
    assert report_recurrent.variant({"mode": "dni", "aux": True, "trace_lambda": 0.9}) == "DNI + aux, λ-return λ=0.9"
    assert (report_recurrent.variant({"mode": "dni", "trace_lambda": 0.9, "sg_trace": "accumulate"})
            == "DNI, accumulate BP(λ) λ=0.9")
    assert report_recurrent.variant({"mode": "dni", "aux": False, "trace_lambda": 0.0}) == "DNI"
    assert report_recurrent.variant({"mode": "cdni", "aux": False, "trace_lambda": 0.9, "sg_optim": "rls"}) == \
        "cDNI, M by least squares, λ-return λ=0.9"
    assert report_recurrent.variant({"mode": "dni", "aux": False, "trace_lambda": 0.0, "oracle": True}) == \
        "DNI, oracle ĝ (true gradient of the windows ahead)"
    assert report_recurrent.solved_cell(["3", "5", "4"]) == "3, 5, 4 (mean 4.0)"
    assert report_recurrent.variant({"mode": "dni", "aux": False, "trace_lambda": 0.0, "oracle": True}) == \
        "DNI, oracle ĝ (true gradient of the windows ahead)"
    assert report_recurrent.solved_cell(["3", "2 (diverged)"]) == "3, 2 (diverged)"
    assert report_recurrent.bpc_cell([(2.5, 2.6)]) == "2.500 / 2.600"
    assert report_recurrent.bpc_cell([(2.0, 3.0), (2.2, 3.0), (2.4, 3.0)]) == \
        "2.200 ± 0.163 / 3.000 ± 0.000 (3 seeds)"
