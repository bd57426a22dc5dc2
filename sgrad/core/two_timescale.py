"""Two networks on two clocks (Jaderberg et al. 2016, multi-network experiment): A ticks every step, B every T.

A (an LSTM) reads a stream of bits and has its own loss: repeat the previous
input. Every T steps B (another LSTM) reads only A's hidden state and must say
how many ones A saw in those T steps, so it needs A to count. B's gradient at
A's state is what would teach A that, but B ticks on its own clock; with the
DNI, a model M at A's output predicts it (ĝ = M(h_A)), A applies ĝ at once, and
M learns from the gradients B actually sends. What A steps along at its output is
the mode's `link` (sgrad/modes/): M's prediction times sg.scale (dni; scale 0 is
the same system with the DNI cut, A never hears from B), or B's true gradient
(backprop: A waits for B, the locked upper bound).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from sgrad.core.dni import agreement, regression_grads
from sgrad.models.lstm import LSTMCore
from sgrad.core.optim import Optimizers
from sgrad.core.step import UpdateRule
from sgrad.core.recurrent import flat_carry, split_carry

PyTree = Any


def stream(rng: np.random.Generator, batch: int, steps: int, period: int, bits: int = 1):
    """Random bits [steps, B, T, bits], A's targets (the previous input), B's targets (ones per window)."""
    x = rng.integers(0, 2, (steps, batch, period, bits)).astype(np.float32)
    previous = np.concatenate([np.zeros_like(x[:, :, :1]), x[:, :, :-1]], axis=2)
    # The first step of a window repeats the last input of the window before, which this window cannot see.
    previous[1:, :, 0] = x[:-1, :, -1]
    count = x.sum(axis=(2, 3)).astype(np.int32)
    return x, previous, count


@dataclasses.dataclass(frozen=True)
class TwoClockNet:
    a: LSTMCore            # outputs: A's own prediction
    b: LSTMCore            # one step per tick; outputs: count classes 0..T*bits
    sg_model: nn.Module    # M: h_A -> predicted dL_B/dh_A (it learns in every mode, so its fit is always logged)
    rule: Any              # sgrad.modes.ModeRule: its `link` is what A steps along at its output


@struct.dataclass
class TwoClockState:
    step: jnp.ndarray
    params: PyTree        # {"a", "b", "sg"}
    opt_state: PyTree
    carry_a: jnp.ndarray  # [B, 2H_A]
    carry_b: jnp.ndarray  # [B, 2H_B]


def init_two_clock(net: TwoClockNet, key, batch: int, bits: int, tx: Optimizers) -> TwoClockState:
    ha, hb = net.a.hidden, net.b.hidden
    ka, kb, ks = jax.random.split(key, 3)
    sa, sb = jnp.zeros((batch, 2 * ha)), jnp.zeros((batch, 2 * hb))
    pa = net.a.init(ka, split_carry(sa), jnp.zeros((batch, 1, bits)), jnp.zeros((batch, 1)))["params"]
    pb = net.b.init(kb, split_carry(sb), jnp.zeros((batch, 1, ha)), jnp.zeros((batch, 1)))["params"]
    ps = net.sg_model.init(ks, jnp.zeros((batch, ha)), None, False)["params"]
    params = {"a": pa, "b": pb, "sg": ps}
    opt = {"a": tx.modules.init(pa), "b": tx.modules.init(pb), "sg": tx.sg.init(ps)}
    return TwoClockState(jnp.zeros((), jnp.int32), params, opt, sa, sb)


def two_clock_grads(net: TwoClockNet, params: PyTree, carry_a, carry_b, x, y_a, y_b, scale: float = 1.0):
    """Gradients of A (own loss + the link at its last state), B and M, the new carries and metric sums;
    `scale` is sg.scale."""
    batch, period = x.shape[0], x.shape[1]
    no_reset = jnp.zeros(x.shape[:2])

    def run_a(pa, s):
        c, out, _ = net.a.apply({"params": pa}, split_carry(s), x, no_reset)
        loss = optax.sigmoid_binary_cross_entropy(out, y_a).sum()
        return (loss, flat_carry(c)), ((out > 0) == (y_a > 0.5)).mean()

    (loss_a, s_a), vjp_a, acc_a = jax.vjp(run_a, params["a"], carry_a, has_aux=True)
    h_a = s_a[:, net.a.hidden:]

    def run_b(pb, h):
        c, logits, _ = net.b.apply({"params": pb}, split_carry(carry_b), h[:, None, :], jnp.zeros((batch, 1)))
        logits = logits[:, 0]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_b).sum()
        return loss, (flat_carry(c), jnp.mean(jnp.argmax(logits, -1) == y_b))

    (loss_b, (s_b, acc_b)), (d_b, g_h) = jax.value_and_grad(run_b, argnums=(0, 1), has_aux=True)(
        params["b"], jax.lax.stop_gradient(h_a))
    pred, vjp_sg = jax.vjp(lambda q: net.sg_model.apply({"params": q}, jax.lax.stop_gradient(h_a), None, False),
                           params["sg"])
    # Under DNI A never sees g_h: M regresses it, and A steps along M's prediction (the mode's link).
    link = net.rule.link(pred, g_h, scale)
    cot_s = jnp.concatenate([jnp.zeros_like(link), link], axis=-1)
    d_a, _ = vjp_a((jnp.ones(()), cot_s))
    (d_sg,), (sg_loss,) = regression_grads([pred], [vjp_sg], [g_h])
    cosine, _ = agreement(pred, g_h)
    scale = lambda tree: jax.tree.map(lambda g: g / batch, tree)
    metrics = {"a/loss": loss_a / (batch * period), "a/accuracy": acc_a, "b/loss": loss_b / batch,
               "b/accuracy": acc_b, "sg/loss": sg_loss, "sg/cosine": cosine}
    return {"a": scale(d_a), "b": scale(d_b), "sg": d_sg}, s_a, s_b, metrics


def make_two_clock_step(net: TwoClockNet, tx: Optimizers, settings: UpdateRule = UpdateRule()):
    def step(state: TwoClockState, x, y_a, y_b):
        grads, s_a, s_b, metrics = two_clock_grads(net, state.params, state.carry_a, state.carry_b, x, y_a, y_b,
                                                   settings.sg_scale)
        params, opt = {}, {}
        for name, t in (("a", tx.modules), ("b", tx.modules), ("sg", tx.sg)):
            updates, opt[name] = t.update(grads[name], state.opt_state[name], state.params[name])
            params[name] = optax.apply_updates(state.params[name], updates)
        carry = jax.lax.stop_gradient
        return TwoClockState(state.step + 1, params, opt, carry(s_a), carry(s_b)), metrics
    return step
