"""Truncated BPTT with a synthetic gradient for the future at each window boundary (Jaderberg et al. 2016, 3.1).

A window runs the core T steps from the carry s_0 to s_T (lax.scan). Backprop
is plain truncated BPTT: the window loss alone, the carry cut at the boundary.
DNI adds <ĝ, s_T> with ĝ = M(s_T) held constant, so the parameters also step
along the predicted gradient of everything after the window, and M learns the
bootstrapped target at s_0: the window loss's gradient at s_0 plus γ times the
VJP of ĝ through the window. Units as in dni.py: the objective is summed over
the batch (the carry cotangent is each sequence's own gradient); parameter
gradients are divided by the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from sgrad.core.dni import agreement, regression_grads
from sgrad.models.lstm import LSTMCore
from sgrad.models.synthetic import linear_layer, stacked
from sgrad.core.optim import Optimizers
from sgrad.core.step import UpdateRule
from sgrad.models.network import init_params

PyTree = Any
LN2 = 0.6931471805599453


@dataclasses.dataclass(frozen=True)
class RecurrentNet:
    core: LSTMCore
    sg_model: nn.Module | None   # M(s_T), where the mode puts one
    loss: str                     # "bits": sigmoid per output bit; "softmax": one class per step
    rule: Any                     # sgrad.modes.ModeRule: its `window` is the update (truncated BPTT, DNI)
    discount: float = 1.0         # γ on the bootstrapped part of M's target
    aux_weight: float = 1.0       # DNI + Aux: weight of the core's own SG prediction loss
    squash_cell: bool = False     # M sees tanh(c) instead of the raw, unbounded cell state (see sg_input)
    trace_lambda: float = 0.0     # λ of M's λ-return target (0: the one-window bootstrapped target)
    trace_windows: int = 0        # windows after the boundary the λ-return (or the oracle) reads
    oracle: bool = False          # the core steps along the true gradient of those windows instead of ĝ
    trace: str = "forward"        # how M learns beyond one window: "forward" (λ-return) or "accumulate" (BP(λ))


def window_label(net: RecurrentNet, y: jnp.ndarray, mask: jnp.ndarray, vocab: int) -> jnp.ndarray | None:
    """cDNI's conditioning at a boundary (None for a mode that does not condition): the masked targets of the
    window after it, flattened [B, T*O]."""
    def targets():
        target = y if net.loss == "bits" else jax.nn.one_hot(y.astype(jnp.int32), vocab)
        return (target * mask[..., None]).reshape(y.shape[0], -1)
    return net.rule.label(targets)


def flat_carry(carry) -> jnp.ndarray:
    return jnp.concatenate(carry, axis=-1)


def split_carry(s_BxS: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    c, h = jnp.split(s_BxS, 2, axis=-1)
    return c, h


def step_losses(kind: str, out: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-step loss in nats summed over output units, and the number of predicted units per step."""
    if kind == "bits":
        return optax.sigmoid_binary_cross_entropy(out, y).sum(-1), jnp.full(out.shape[:2], out.shape[-1])
    return optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32)), jnp.ones(out.shape[:2])


def window(net: RecurrentNet, params: PyTree, s0: jnp.ndarray, x, y, mask, resets):
    """((summed loss, aux predictions, s_T), metric sums) for one window from carry s0."""
    carry, out, aux = net.core.apply({"params": params}, split_carry(s0), x, resets)
    per_step, units = step_losses(net.loss, out, y)
    loss = jnp.sum(per_step * mask)
    if net.loss == "bits":
        wrong = jnp.sum((out > 0) != (y > 0.5), axis=-1)
    else:
        wrong = (jnp.argmax(out, -1) != y).astype(jnp.float32)
    sums = {"nats": loss, "units": jnp.sum(units * mask), "wrong": jnp.sum(wrong * mask)}
    return (loss, aux, flat_carry(carry)), sums


def sg_input(s: jnp.ndarray, squash_cell: bool = False) -> jnp.ndarray:
    """What M sees of the state [c, h]: as it is, or with c squashed to tanh(c) (`squash_cell`).

    The cell state is unbounded, and the core steps along -ĝ at s_T: with a
    linear M of the raw c on a stream that never resets, a push that grows c
    grows ĝ with it, a loop that drove |c| to ~500 on text. Squashing c the way
    the LSTM's own output does keeps ĝ bounded whatever c does. Where episodes
    reset the state (Copy) the raw c is bounded anyway and tells M more: Copy
    at T=2 solved length 4 with it, 3 with tanh(c).
    """
    if not squash_cell:
        return s
    c, h = split_carry(s)
    return jnp.concatenate([jnp.tanh(c), h], axis=-1)


def sg_used(resets: jnp.ndarray) -> jnp.ndarray:
    """[B, 1]: 1 where ĝ at the boundary before a window is used, 0 where the window (`resets` [B, T]) starts a new
    sequence: the state is zeroed there, nothing after the boundary depends on it, and ĝ is 0 by construction. The
    core, M's regression, its refit and trace, and the probe all mask with it."""
    return 1.0 - resets[:, :1]


def synthetic_gradient(net: RecurrentNet, sg_params: PyTree, s: jnp.ndarray, label=None) -> jnp.ndarray:
    state = sg_input(jax.lax.stop_gradient(s), net.squash_cell)
    return net.sg_model.apply({"params": sg_params}, state, label, False)


def sg_features(net: RecurrentNet, s: jnp.ndarray, label=None) -> jnp.ndarray:
    """What M's first layer reads at the boundary s: its view of the state, and cDNI's label after it (as
    DenseSynthetic concatenates them). A least-squares M (sg.optim.name=rls) is fit on these."""
    state = sg_input(jax.lax.stop_gradient(s), net.squash_cell)
    return state if label is None else jnp.concatenate([state, label], axis=-1)


def dni_window(net: RecurrentNet, core_params: PyTree, predict: Callable, s0: jnp.ndarray, x, y, mask, resets,
               scale=1.0, beyond: Callable | None = None):
    """The decoupled window: (core grads, SG target at s0, s_T, metric sums).

    The core steps along d(window loss + <ĝ, s_T> [+ aux loss]) with ĝ =
    predict(s_T) held constant; the target for M at s0 is the window loss's
    gradient at s0 plus γ·VJP of ĝ through the window, the aux loss left out.
    `predict` is M, or in tests an oracle; the core applies `scale`·ĝ (sg.scale), the target uses ĝ unscaled.
    `beyond(s_T, ĝ)`, where given, is what the target carries back from s_T instead of ĝ (a λ-return).
    """
    batch = x.shape[0]
    fn = lambda p, s: window(net, p, s, x, y, mask, resets)
    (loss, aux, s_T), vjp, sums = jax.vjp(fn, core_params, s0, has_aux=True)
    g_T = jax.lax.stop_gradient(predict(s_T))
    d_aux = jnp.zeros_like(aux)
    if aux.shape[-1]:
        # Aux task: every step's head predicts the SG the window will receive at its end.
        err = aux - g_T[:, None, :]
        d_aux = net.aux_weight * 2.0 * err / aux.shape[1]
        sums["aux_loss"] = net.aux_weight * jnp.sum(err ** 2) / aux.shape[1]
    d_core, target = vjp((jnp.ones(()), d_aux, scale * g_T))
    if aux.shape[-1] or not isinstance(scale, float) or net.discount != scale or beyond is not None:
        # The target leaves out the aux loss and discounts ĝ (unscaled): a second backward pass.
        back = g_T if beyond is None else jax.lax.stop_gradient(beyond(s_T, g_T))
        _, target = vjp((jnp.ones(()), jnp.zeros_like(aux), net.discount * back))
    sums["sg_norm"] = jnp.sqrt(jnp.sum(g_T ** 2) / batch) * batch
    return jax.tree.map(lambda g: g / batch, d_core), target, s_T, sums


def window_grads(net: RecurrentNet, params: PyTree, s0: jnp.ndarray, x, y, mask, resets, following=None,
                 scale=1.0, ahead=None, trace=()):
    """The mode's window update (`net.rule.window`): (core grads, SG grads, s_T, M's trace, metric sums).

    `params` = {"core": ..., "sg": ...}. `following` = (y, mask, resets) of the
    next window: where it starts with a reset the state is zeroed, so nothing
    after the boundary depends on s_T and ĝ is exactly 0 there; cDNI also
    conditions ĝ on its targets. The carry leaves a window with stop_gradient
    semantics: nothing differentiates across a boundary except through ĝ.
    `scale` multiplies the ĝ the core applies (sg.scale; 0 during the SG warm-up). `ahead` = (x, y, mask,
    resets) of the net.trace_windows + 1 windows after this one, for M's λ-return target (lambda_return).
    `trace` is M's eligibility trace at s0 with sg.trace=accumulate (init_trace; () otherwise), returned decayed
    to s_T (accumulate_sg_grads).
    """
    return net.rule.window(net, params, s0, x, y, mask, resets, following, scale, ahead, trace)


def bptt_window_grads(net: RecurrentNet, params: PyTree, s0: jnp.ndarray, x, y, mask, resets, following=None,
                      scale=1.0, ahead=None, trace=()):
    """Truncated BPTT: the window loss alone, nothing from after the boundary (no SG grads)."""
    batch = x.shape[0]
    fn = lambda p: window(net, p, s0, x, y, mask, resets)
    (_, aux, s_T), vjp, sums = jax.vjp(fn, params["core"], has_aux=True)
    (d_core,) = vjp((jnp.ones(()), jnp.zeros_like(aux), jnp.zeros_like(s_T)))
    return jax.tree.map(lambda g: g / batch, d_core), (), s_T, trace, sums


def lambda_return(net: RecurrentNet, core_params: PyTree, predict: Callable, s: jnp.ndarray, ahead) -> jnp.ndarray:
    """G^λ at the boundary s: the λ-return of the true gradient over the windows `ahead` that follow it.

    ahead = (x, y, mask, resets), [n + 1, B, T, ...]: the n windows read and
    the one after them (only its first-step reset and, for cDNI, its targets
    are used). predict(s_j, y_j, mask_j, resets_j) is ĝ at the boundary before
    window j. With G_j at the boundary before ahead window j:
        G_j = d(window j's loss)/ds_j + γ Jᵀ [(1-λ) ĝ(s_j+1) + λ G_j+1],
    and after the last window read, ĝ alone: λ = 1 is the n windows' true
    gradient, bootstrapped by ĝ beyond them. This is the truncated λ-return of
    TD learning (Sutton & Barto, 12.3) for gradients: the forward view of
    Pemberton & Costa's BP(λ) (TMLR 2024), computed from windows the chunk
    already holds instead of n windows late.
    """
    n = ahead[0].shape[0] - 1
    read = tuple(a[:n] for a in ahead)
    states, last = _carries(net, core_params, s, read)
    after = jnp.concatenate([states[1:], last[None]], 0)  # the boundary after each window read
    g_hat = jax.vmap(predict)(after, *(a[1:] for a in ahead[1:]))
    return _returns(net, core_params, states, read, g_hat, net.trace_lambda, g_hat[-1])[0]


def true_future(net: RecurrentNet, core_params: PyTree, s: jnp.ndarray, ahead) -> jnp.ndarray:
    """The true gradient at the boundary s of the loss of the n windows `ahead` read (see lambda_return),
    nothing after them: what a perfect M would give when the future ends there (sg.oracle)."""
    n = ahead[0].shape[0] - 1
    return future_gradients(net, core_params, s, *(a[:n] for a in ahead))[1][0]


def _carries(net: RecurrentNet, core_params: PyTree, s: jnp.ndarray, windows) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(the carry entering each window [W, B, 2H], the carry after the last) through windows [W, B, T, ...]."""
    def forward(state, inp):
        (_, _, after), _ = window(net, core_params, state, *inp)
        return after, state

    last, states = jax.lax.scan(forward, s, windows)
    return states, last


def _returns(net: RecurrentNet, core_params: PyTree, states: jnp.ndarray, windows, g_hat: jnp.ndarray, lam,
             g_end: jnp.ndarray) -> jnp.ndarray:
    """G_j at the carry entering each window j, last window first (one backward sweep):
    G_j = d(window j's loss)/ds_j + γ Jᵀ [(1-λ) g_hat_j + λ G_j+1], with G after the last window = g_end;
    g_hat_j is ĝ at the boundary after window j."""
    def backward(g_next, inp):
        state, hat, *data = inp
        (_, aux, _), vjp, _ = jax.vjp(lambda v: window(net, core_params, v, *data), state, has_aux=True)
        (g,) = vjp((jnp.ones(()), jnp.zeros_like(aux), net.discount * ((1.0 - lam) * hat + lam * g_next)))
        return g, g

    _, grads = jax.lax.scan(backward, g_end, (states, g_hat, *windows), reverse=True)
    return grads


def dni_window_grads(net: RecurrentNet, params: PyTree, s0: jnp.ndarray, x, y, mask, resets, following=None,
                     scale=1.0, ahead=None, trace=()):
    """The DNI window (dni_window) with ĝ = M(s_T), and M's regression toward its bootstrapped target at s0:
    one window's (the paper's), or with `net.trace_lambda` > 0 the λ-return over the windows `ahead` (see
    lambda_return; ahead[0] is the window after this one); with net.trace = "accumulate", BP(λ)'s update from
    the eligibility `trace` instead (accumulate_sg_grads)."""
    batch = x.shape[0]
    vocab = net.core.outputs

    def at(s, y_next, mask_next, resets_next):
        # ĝ at a boundary, given the window after it: 0 where that window starts a new sequence (nothing after
        # the boundary depends on the state), conditioned on its targets in cDNI.
        label = window_label(net, y_next, mask_next, vocab)
        return sg_used(resets_next) * synthetic_gradient(net, params["sg"], s, label)

    if net.oracle:
        # A perfect M over the windows ahead: how far DNI could go were ĝ right (M still learns as set).
        predict = lambda s: true_future(net, params["core"], s, ahead)
    elif following is None:
        predict = lambda s: synthetic_gradient(net, params["sg"], s, None)
    else:
        predict = lambda s: at(s, *following)
    beyond = None
    if net.trace_lambda > 0 and net.trace == "forward":
        beyond = lambda s_T, g_T: (1.0 - net.trace_lambda) * g_T + net.trace_lambda * lambda_return(
            net, params["core"], at, s_T, ahead)
    d_core, target, s_T, sums = dni_window(net, params["core"], predict, s0, x, y, mask, resets, scale, beyond)
    if net.trace == "accumulate":
        d_sg, trace, sums["sg_loss"] = accumulate_sg_grads(net, params, at, trace, s0, x, y, mask, resets, target)
        return d_core, d_sg, s_T, trace, sums
    # M learns only where its ĝ is used (sg_used): elsewhere its target, 0, would pull the fit toward 0 on states
    # that never use it.
    label = window_label(net, y, mask, vocab)
    keep = sg_used(resets)
    pred, sg_vjp = jax.vjp(lambda q: keep * synthetic_gradient(net, q, s0, label), params["sg"])
    (d_sg,), (sg_loss,) = regression_grads([pred], [sg_vjp], [keep * target])
    sums["sg_loss"] = sg_loss * batch
    return d_core, d_sg, s_T, trace, sums


def accumulate_sg_grads(net: RecurrentNet, params: PyTree, at: Callable, trace: jnp.ndarray, s0: jnp.ndarray,
                        x, y, mask, resets, target: jnp.ndarray) -> tuple[PyTree, jnp.ndarray, jnp.ndarray]:
    """Accumulate BP(λ) (Pemberton & Costa, TMLR 2024): M's gradient at the boundary s0 from its eligibility
    trace, and the trace carried to s_T. Returns (M's grads, trace at s_T, summed squared TD error).

    With ĝ_k = M(s_k) at boundary k (masked as `at` masks it), J_k = ds_k/ds_k-1
    (one window, per sequence) and the one-window TD error
        δ_k = target_k - ĝ_k,   target_k = d(window loss)/ds_k + γ J_k+1ᵀ ĝ_k+1,
    the λ-return's error is G^λ_k - ĝ_k = Σ_j (γλ)^j J_k+1ᵀ…J_k+jᵀ δ_k+j, so the
    forward view's update Σ_k (dĝ_k/dθ)ᵀ (ĝ_k - G^λ_k) regroups by δ into
        Σ_k -E_kᵀ δ_k,   E_k = γλ J_k E_k-1 + dĝ_k/dθ,
    a trace per sequence for each output of M and each of its parameters. The
    sum of these updates over a stream equals the forward view's when θ stays
    fixed (the test checks it); training changes θ between windows, which is
    BP(λ)'s online approximation. Units as regression_grads: 2·mean over the batch.

    M is linear, ĝ = keep·[x, 1] W̃ (x = sg_features, W̃ [d+1, 2H]), so dĝ_m/dW̃_ij
    = keep·x̃_i·[m = j]: the trace, kept flat as [B, 2H, (d+1)·2H], gains that
    diagonal in place, and both products with it are matmuls (an einsum over
    it ran 15x slower on CPU).
    """
    batch, n = s0.shape
    name = linear_layer(params["sg"], "sg.trace=accumulate traces")
    w = stacked(params["sg"][name])
    keep = sg_used(resets)
    feats = sg_features(net, s0, window_label(net, y, mask, net.core.outputs))
    x_tilde = keep * jnp.concatenate([feats, jnp.ones_like(feats[:, :1])], axis=-1)  # [B, d+1]
    units = jnp.arange(n)
    elig = trace.reshape(batch, n, w.shape[0], n).at[:, units, :, units].add(x_tilde[None]).reshape(trace.shape)
    delta = jax.lax.stop_gradient(target) - at(s0, y, mask, resets)
    grad = (-2.0 / batch) * (delta.reshape(1, -1) @ elig.reshape(batch * n, -1)).reshape(w.shape)
    # Carry the trace across this window: J = ds_T/ds0 per sequence, one JVP per state unit.
    _, push = jax.linearize(lambda s: window(net, params["core"], s, x, y, mask, resets)[0][2], s0)
    basis = jnp.broadcast_to(jnp.eye(n, dtype=s0.dtype)[:, None, :], (n, batch, n))
    jac = jax.vmap(push, out_axes=-1)(basis)  # [B, out, in]
    trace = (net.discount * net.trace_lambda) * jnp.matmul(jac, elig)
    grads = {name: {"kernel": grad[:-1], "bias": grad[-1]}}
    return grads, jax.lax.stop_gradient(trace), jnp.sum(delta ** 2)


def init_trace(net: RecurrentNet, sg_params: PyTree, batch: int) -> jnp.ndarray | tuple:
    """M's eligibility trace at the first boundary (zeros [B, 2H, (d+1)·2H]; accumulate_sg_grads), or () unless
    net.trace = accumulate."""
    if net.trace != "accumulate":
        return ()
    w = stacked(sg_params[linear_layer(sg_params, "sg.trace=accumulate traces")])
    return jnp.zeros((batch, w.shape[1], w.size), w.dtype)


@struct.dataclass
class RecurrentState:
    step: jnp.ndarray
    params: PyTree      # {"core": ..., "sg": ... or ()}
    opt_state: PyTree
    carry: jnp.ndarray  # [B, 2H] the stream's state at the next window boundary
    trace: PyTree = ()  # M's eligibility trace at that boundary (sg.trace=accumulate: init_trace)


def init_recurrent(net: RecurrentNet, key: jax.Array, batch: int, input_dim: int, tx: Optimizers,
                   window_len: int = 1) -> RecurrentState:
    hidden = net.core.hidden
    s0 = jnp.zeros((batch, 2 * hidden))
    k1, k2 = jax.random.split(key)
    x = jnp.zeros((batch, 1, input_dim))
    core = net.core.init(k1, split_carry(s0), x, jnp.zeros((batch, 1)))["params"]
    label = net.rule.label(lambda: jnp.zeros((batch, window_len * net.core.outputs)))
    sg = init_params(net.sg_model, k2, s0, label)
    params = {"core": core, "sg": sg}
    opt = {"core": tx.modules.init(core), "sg": tx.sg.init(sg)}
    return RecurrentState(jnp.zeros((), jnp.int32), params, opt, s0, init_trace(net, sg, batch))


def make_recurrent_step(net: RecurrentNet, tx: Optimizers, settings: UpdateRule = UpdateRule()):
    """step(state, x, y, mask, resets, following) -> (state, metric sums): one window, both updates at once.

    `following` = (y, mask, resets) of the next window and `ahead` the windows M's λ-return reads (see
    window_grads); `settings` gives sg.scale and the SG warm-up.
    """
    def step(state: RecurrentState, x, y, mask, resets, following, ahead=None):
        # During the SG warm-up no update uses ĝ: the core trains as truncated BPTT while M learns its targets.
        scale = (settings.sg_scale if not settings.warmup_steps
                 else jnp.where(state.step < settings.warmup_steps, 0.0, settings.sg_scale).astype(jnp.float32))
        d_core, d_sg, s_T, trace, sums = window_grads(net, state.params, state.carry, x, y, mask, resets,
                                                      following, scale, ahead, state.trace)
        updates, core_opt = tx.modules.update(d_core, state.opt_state["core"], state.params["core"])
        # M's regression reads the carry this window started from (a least-squares M needs what it read), on the
        # rows it fits (sg_used).
        inputs = sg_features(net, state.carry, window_label(net, y, mask, net.core.outputs))
        sg_updates, sg_opt = tx.sg.update(d_sg, state.opt_state["sg"], state.params["sg"], inputs=inputs,
                                          rows=sg_used(resets)[:, 0])
        params = {"core": optax.apply_updates(state.params["core"], updates),
                  "sg": optax.apply_updates(state.params["sg"], sg_updates)}
        opt = {"core": core_opt, "sg": sg_opt}
        sums["grad_norm"] = optax.global_norm(d_core)
        return RecurrentState(state.step + 1, params, opt, jax.lax.stop_gradient(s_T), trace), sums
    return step


def future_gradients(net: RecurrentNet, core_params: PyTree, s0: jnp.ndarray, x, y, mask, resets
                     ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(states, gradients), each [W, B, 2H], over a stream of windows [W, B, T, ...] from the carry s0.

    states[k] is the carry entering window k, and gradients[k] the true
    gradient there of the loss from window k to the end of the stream, window
    j weighted by γ^(j-k): the quantity ĝ(states[k]) stands for. One forward
    pass and one backward pass through every window (full BPTT), as a λ-return
    with λ = 1.
    """
    windows = (x, y, mask, resets)
    states, _ = _carries(net, core_params, s0, windows)
    # λ = 1: the true gradient all the way, nothing after the stream.
    return states, _returns(net, core_params, states, windows, jnp.zeros_like(states), 1.0, jnp.zeros_like(s0))


def future_gradient_probe(net: RecurrentNet, params: PyTree, s0: jnp.ndarray, x, y, mask, resets
                          ) -> dict[str, jnp.ndarray]:
    """Cosine and norm ratio of ĝ against the true future gradient, over the window boundaries of a stream.

    The windows x etc. are [W, B, T, ...], the stream's continuation from the
    carry s0 (the state training reaches: M is only ever trained on carried
    states). Boundaries 1..W/2 count, each followed by at least W/2 windows of
    loss: every phase of a sequence (an episode's input and output parts, say)
    where it falls on a boundary, not one phase alone. For episodes, the caller
    makes W/2 windows cover the longest episode, so the gradient counted is the
    episode's whole future. Both vectors are flattened over the counted
    boundaries and the batch.
    """
    states, g_true = future_gradients(net, params["core"], s0, x, y, mask, resets)
    vocab = net.core.outputs

    def predict(s, yk, mk, rk):
        # ĝ is 0 where the window after the boundary starts a new sequence, as in training.
        return sg_used(rk) * synthetic_gradient(net, params["sg"], s, window_label(net, yk, mk, vocab))

    counted = slice(1, x.shape[0] // 2 + 1)
    g_hat = jax.vmap(predict)(states[counted], y[counted], mask[counted], resets[counted])
    cosine, ratio = agreement(g_hat, g_true[counted])
    return {"sg/cosine": cosine, "sg/norm_ratio": ratio}
