"""Two networks on two clocks: the DNI link hands A what B's gradient would, and A learns B's task only with it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_cfg
from sgrad.modes import RULES
from sgrad.models.lstm import LSTMCore
from sgrad.run.build import build_train_optimizer
from sgrad.core.recurrent import split_carry
from sgrad.models.synthetic import DenseSynthetic
from sgrad.run import train_and_evaluate
from sgrad.core.two_timescale import TwoClockNet, init_two_clock, stream, two_clock_grads


class Oracle:
    """M whose prediction is its parameter."""

    def apply(self, variables, h, label, train):
        return variables["params"]["g"] + 0.0 * h


def test_stream_targets():
    x, prev, count = stream(np.random.default_rng(0), batch=3, steps=4, period=5)
    assert x.shape == (4, 3, 5, 1) and count.shape == (4, 3)
    np.testing.assert_array_equal(count, x.sum(axis=(2, 3)))
    np.testing.assert_array_equal(prev[:, :, 1:], x[:, :, :-1])
    np.testing.assert_array_equal(prev[1:, :, 0], x[:-1, :, -1])


def _setup():
    a, b = LSTMCore(6, 1), LSTMCore(5, 5)
    net = TwoClockNet(a, b, DenseSynthetic(0, 1, batch_norm=False), RULES["dni"])
    cfg = make_cfg()
    state = init_two_clock(net, jax.random.key(0), 3, 1, build_train_optimizer(cfg, 10))
    x, ya, yb = (jnp.asarray(v[0]) for v in stream(np.random.default_rng(1), 3, 1, 4))
    carry_a = jnp.asarray(np.random.default_rng(2).normal(0, 0.5, (3, 12)).astype(np.float32))
    return net, state, carry_a, x, ya, yb


def _losses(net, pa, pb, carry_a, carry_b, x, ya, yb):
    """A's own loss and B's loss through A's last state, written directly (the locked, backprop system)."""
    c, out, _ = net.a.apply({"params": pa}, split_carry(carry_a), x, jnp.zeros(x.shape[:2]))
    loss_a = optax.sigmoid_binary_cross_entropy(out, ya).sum()
    _, logits, _ = net.b.apply({"params": pb}, split_carry(carry_b), c[1][:, None, :], jnp.zeros((x.shape[0], 1)))
    return loss_a, optax.softmax_cross_entropy_with_integer_labels(logits[:, 0], yb).sum()


def _close(a, b):
    return all(np.allclose(u, v, atol=1e-6, rtol=1e-4) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # 9 s of compiling, with every gradient compiled whole (op by op the LSTMs' scans took 10 s)
def test_oracle_link_equals_backprop_through_b_and_a_cut_link_leaves_a_alone():
    net, state, carry_a, x, ya, yb = _setup()
    p = state.params
    args = (carry_a, state.carry_b, x, ya, yb)
    full = jax.jit(jax.grad(lambda pa: sum(_losses(net, pa, p["b"], *args))))(p["a"])
    own = jax.jit(jax.grad(lambda pa: _losses(net, pa, p["b"], *args)[0]))(p["a"])
    scale = lambda t: jax.tree.map(lambda g: g / 3, t)
    grads_of = lambda net, params, scale=1.0: jax.jit(lambda q: two_clock_grads(net, q, *args, scale=scale))(params)
    locked, _, _, _ = grads_of(TwoClockNet(net.a, net.b, net.sg_model, RULES["backprop"]), p)
    assert _close(locked["a"], scale(full))
    # The true gradient at A's state, then an M that predicts exactly it: same update, and nothing left to regress.
    g_h = jax.jit(jax.grad(lambda h: _b_loss(net, p["b"], state.carry_b, h, yb)))(
        _a_state(net, p["a"], carry_a, x))
    oracle = TwoClockNet(net.a, net.b, Oracle(), RULES["dni"])
    grads, _, _, m = grads_of(oracle, {**p, "sg": {"g": g_h}})
    assert _close(grads["a"], scale(full)) and float(m["sg/loss"]) < 1e-10
    cut, _, _, _ = grads_of(oracle, {**p, "sg": {"g": g_h}}, scale=0.0)
    assert _close(cut["a"], scale(own)) and not _close(cut["a"], grads["a"])


def _a_state(net, pa, carry_a, x):
    c, _, _ = net.a.apply({"params": pa}, split_carry(carry_a), x, jnp.zeros(x.shape[:2]))
    return c[1]


def _b_loss(net, pb, carry_b, h, yb):
    _, logits, _ = net.b.apply({"params": pb}, split_carry(carry_b), h[:, None, :], jnp.zeros((h.shape[0], 1)))
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, 0], yb).sum()


@pytest.mark.slow  # a learning run of both networks (the oracle test above checks the link itself)
def test_b_learns_to_count_only_through_the_dni(tmp_path):
    acc = {}
    for scale in (1.0, 0.0):
        cfg = make_cfg("model.name=lstm", "dataset.name=two_timescale", "dataset.bits=1", "mode=dni",
                       "model.hidden=32", "trainer.bptt=6", "trainer.batch_size=64", "trainer.steps=1500",
                       "trainer.log_every=100", "optim.lr=3e-3", "sg.optim.lr=1e-3", "sg.hidden_layers=0",
                       f"sg.scale={scale}", "checkpoint.every=0")
        acc[scale] = train_and_evaluate(cfg, tmp_path / str(scale))["b/accuracy"]
    # Chance (always the most likely count of 6 fair bits) is 0.31.
    assert acc[1.0] > 0.6 and acc[1.0] > acc[0.0] + 0.15, acc
