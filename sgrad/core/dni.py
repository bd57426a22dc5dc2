"""The decoupled update rule of Jaderberg et al. 2016: modules, interfaces, synthetic gradients, SG targets.

A network is K modules f_1..f_K; interface i (i < K) sits after f_i and has an SG
model M_i. Gradients here are in *summed-loss units*: the cotangent at h is
B * dL/dh for the batch-mean loss L, so synthetic gradients do not depend on the
batch size. Module parameter gradients are returned in mean-loss units.

Everything is explicit VJPs, one per module, so no gradient can reach module i
from above except through the cotangent it is handed: M_i(h_i) in DNI, the
chain of true cotangents in backprop.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.models.loss import LossFn, cross_entropy, task_metrics, value_and_top_gradient
from sgrad.models.network import Network, apply

PyTree = Any


class Forward(NamedTuple):
    activations: tuple[jnp.ndarray, ...]  # h_1..h_K; h_K are the logits
    vjps: tuple[Any, ...]                  # vjp_i: cotangent at h_i -> (d params_i, d h_{i-1})
    stats: tuple[PyTree, ...]              # each module's updated batch-norm statistics


def forward(modules: Sequence[nn.Module], params: Sequence[PyTree], stats: Sequence[PyTree],
            x: jnp.ndarray, inputs: Sequence[jnp.ndarray] | None = None, rng: jax.Array | None = None,
            first: int = 0) -> Forward:
    """Training-mode forward pass that keeps each module's VJP for the local updates.

    With `inputs`, module i runs on inputs[i] instead of the previous module's output. `rng` is the step's
    dropout key (models.network.dropout_rng); modules[j] is the network's module first + j and draws from
    module_rng(rng, first + j), so a pipeline device running one module draws what the whole network would.
    """
    h, acts, vjps, new_stats = x, [], [], []
    for i, (f, p, s) in enumerate(zip(modules, params, stats)):
        if inputs is not None:
            h = inputs[i]
        module = partial(_module_train, f, s, module_rng(rng, first + i))
        h, vjp, s_new = jax.vjp(module, p, h, has_aux=True)
        acts.append(h)
        vjps.append(vjp)
        new_stats.append(s_new)
    return Forward(tuple(acts), tuple(vjps), tuple(new_stats))


def module_rng(rng: jax.Array | None, i: int) -> jax.Array | None:
    return None if rng is None else jax.random.fold_in(rng, i)


def _module_train(module, stats, rng, params, h):
    return apply(module, params, stats, (h,), True, rng)


def loss_and_top_gradient(outputs: jnp.ndarray, y: jnp.ndarray, loss: LossFn = cross_entropy
                          ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The batch-mean loss (a network's: net.loss) and its gradient at the outputs in summed-loss units."""
    return value_and_top_gradient(loss, outputs, y)


def _scale(tree: PyTree, factor) -> PyTree:
    return jax.tree.map(lambda g: g * factor, tree)


def backprop_chain(fwd: Forward, top_gradient: jnp.ndarray) -> tuple[tuple[PyTree, ...], tuple[jnp.ndarray, ...]]:
    """Plain backprop through the module VJPs.

    Returns each module's parameter gradient (mean-loss units) and the true
    gradient at every interface h_1..h_{K-1} (summed-loss units).
    """
    batch = top_gradient.shape[0]
    k = len(fwd.vjps)
    grads: list[PyTree] = [None] * k
    interface: list[jnp.ndarray] = [None] * (k - 1)
    cot = top_gradient
    for i in reversed(range(k)):
        d_params, cot = fwd.vjps[i](cot)
        grads[i] = _scale(d_params, 1.0 / batch)
        if i > 0:
            interface[i - 1] = cot
    return tuple(grads), tuple(interface)


def decoupled_module_grads(fwd: Forward, synthetic: Sequence[jnp.ndarray], top_gradient: jnp.ndarray,
                           sg_scale: float = 1.0, lam=0.0) -> tuple[tuple[PyTree, ...], tuple[jnp.ndarray, ...]]:
    """The decoupled update: module i < K steps along VJP_{f_i}(ĝ_i), module K along the true gradient.

    Also returns the SG targets δ_i = VJP of f_{i+1} w.r.t. its input at the
    cotangent f_{i+1} itself used (ĝ_{i+1}, or the true gradient for the last
    module): the bootstrapped target of M_i. `sg_scale` scales the synthetic
    part of the update only, never the target, so M_i keeps regressing the
    unscaled gradient.

    `lam` gives BP(λ) (supplement A): module i uses λ·(cotangent backpropagated
    from module i+1) + (1-λ)·ĝ_i, so λ=1 is backprop and λ=0 is DNI. A static 0
    keeps the modules independent of each other, as update unlocking needs.
    """
    k = len(fwd.vjps)
    if len(synthetic) != k - 1:
        raise ValueError(f"{k} modules need {k - 1} synthetic gradients, got {len(synthetic)}")
    batch = top_gradient.shape[0]
    unlocked = isinstance(lam, (int, float)) and lam == 0
    grads: list[PyTree] = [None] * k
    input_cots: list[jnp.ndarray] = [None] * k
    for i in reversed(range(k)):
        if i == k - 1:
            cot = update = top_gradient
        elif unlocked:
            cot = synthetic[i]
            update = cot if sg_scale == 1.0 else sg_scale * cot
        else:
            above = lam * input_cots[i + 1]
            cot = above + (1.0 - lam) * synthetic[i]
            update = cot if sg_scale == 1.0 else above + (1.0 - lam) * sg_scale * synthetic[i]
        d_params, input_cots[i] = fwd.vjps[i](cot)
        if update is not cot:
            d_params, _ = fwd.vjps[i](update)
        grads[i] = _scale(d_params, 1.0 / batch)
    return tuple(grads), tuple(input_cots[1:])


class Synthetic(NamedTuple):
    gradients: tuple[jnp.ndarray, ...]  # ĝ_1..ĝ_{K-1}, summed-loss units
    vjps: tuple[Any, ...]               # vjp_i: cotangent at ĝ_i -> d sg_params_i
    stats: tuple[PyTree, ...]


def _param_vjps(fns: Sequence[Any], params: Sequence[PyTree]):
    """Run each fn(params_i) -> (output, new_stats), keeping its VJP w.r.t. params_i (the model's own)."""
    outs, vjps, stats = [], [], []
    for fn, q in zip(fns, params):
        out, vjp, s_new = jax.vjp(fn, q, has_aux=True)
        outs.append(out)
        vjps.append(vjp)
        stats.append(s_new)
    return tuple(outs), tuple(vjps), tuple(stats)


def predict_synthetic(net: Network, sg_params: Sequence[PyTree], sg_stats: Sequence[PyTree],
                      activations: Sequence[jnp.ndarray], labels: jnp.ndarray) -> Synthetic:
    """ĝ_i = M_i(h_i[, one-hot y]) for every interface, keeping the VJPs for the SG regression."""
    onehot = net.interface_label(labels)
    fns = [partial(_sg_train, model, s, jax.lax.stop_gradient(h), onehot)
           for model, s, h in zip(net.interface_models, sg_stats, activations[:-1])]
    return Synthetic(*_param_vjps(fns, sg_params))


def _sg_train(model, stats, h, label, params):
    return apply(model, params, stats, (h, label), True)


def sg_regression(pred: Synthetic, targets: Sequence[jnp.ndarray]) -> tuple[tuple[PyTree, ...], tuple[jnp.ndarray, ...]]:
    """Gradients of mean_b ||M_i(h_i) - sg(δ_i)||² w.r.t. each SG model's parameters, and the losses."""
    # The target is a constant for M_i: bootstrapping must not train f_{i+1} or M_{i+1} through it.
    return regression_grads(pred.gradients, pred.vjps, targets)


def regression_grads(outputs: Sequence[jnp.ndarray], vjps: Sequence[Any], targets: Sequence[jnp.ndarray]
                     ) -> tuple[tuple[PyTree, ...], tuple[jnp.ndarray, ...]]:
    """Gradients of mean_b ||output - sg(target)||² through each output's parameter VJP, and the losses."""
    grads, losses = [], []
    for out, vjp, target in zip(outputs, vjps, targets):
        err = out - jax.lax.stop_gradient(target)
        batch = err.shape[0]
        losses.append(jnp.sum(err ** 2) / batch)
        (d_params,) = vjp(2.0 * err / batch)
        grads.append(d_params)
    return tuple(grads), tuple(losses)


class SyntheticInputs(NamedTuple):
    values: tuple[jnp.ndarray, ...]  # Î_2..Î_K, the predicted inputs of modules 2..K
    vjps: tuple[Any, ...]
    stats: tuple[PyTree, ...]


def predict_inputs(net: Network, si_params: Sequence[PyTree], si_stats: Sequence[PyTree],
                   x: jnp.ndarray) -> SyntheticInputs:
    """Î_i = I_i(x) for modules 2..K, keeping the VJPs for their regression onto the real activations."""
    fns = [partial(_si_train, model, s, x) for model, s in zip(net.input_models, si_stats)]
    return SyntheticInputs(*_param_vjps(fns, si_params))


def _si_train(model, stats, x, params):
    return apply(model, params, stats, (x,), True)


def agreement(estimate, truth) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(cosine, norm ratio) of an estimated gradient against the true one, both flattened whole: the paper's
    diagnostic for ĝ, and the same question for a delayed gradient."""
    a, b = estimate.reshape(-1), truth.reshape(-1)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    return jnp.dot(a, b) / jnp.maximum(na * nb, 1e-12), na / jnp.maximum(nb, 1e-12)


def backprop_grads(net: Network, params: PyTree, stats: PyTree, x: jnp.ndarray, labels: jnp.ndarray,
                   rng: jax.Array | None = None):
    """Full-chain gradient of the batch-mean loss; returns (grads, new_stats, metrics)."""
    fwd = forward(net.modules, params["modules"], stats["modules"], x, rng=rng)
    loss, top = loss_and_top_gradient(fwd.activations[-1], labels, net.loss)
    module_grads, _ = backprop_chain(fwd, top)
    grads = {"modules": module_grads, "interface": (), "si": ()}
    new_stats = {"modules": fwd.stats, "interface": (), "si": ()}
    return grads, new_stats, task_metrics(loss, fwd.activations[-1], labels)


def dni_grads(net: Network, params: PyTree, stats: PyTree, x: jnp.ndarray, labels: jnp.ndarray,
              sg_scale: float = 1.0, lam=0.0, rng: jax.Array | None = None):
    """Decoupled gradients for modules, SG models (and synthetic input models); (grads, new_stats, metrics).

    With input models (complete unlocking) module i > 1 runs on Î_i = I_i(x), and
    I_i regresses the activation module i-1 produced; the SG targets are then
    VJPs at the synthetic inputs, as the module above really used them.
    """
    si = predict_inputs(net, params["si"], stats["si"], x) if net.input_models else None
    inputs = (x, *si.values) if si else None
    fwd = forward(net.modules, params["modules"], stats["modules"], x, inputs, rng)
    loss, top = loss_and_top_gradient(fwd.activations[-1], labels, net.loss)
    pred = predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, labels)
    module_grads, targets = decoupled_module_grads(fwd, pred.gradients, top, sg_scale, lam)
    sg_grads, sg_losses = sg_regression(pred, targets)
    si_grads, si_losses = regression_grads(si.values, si.vjps, fwd.activations[:-1]) if si else ((), ())
    grads = {"modules": module_grads, "interface": sg_grads, "si": si_grads}
    new_stats = {"modules": fwd.stats, "interface": pred.stats, "si": si.stats if si else ()}
    metrics = task_metrics(loss, fwd.activations[-1], labels)
    for i, si_loss in enumerate(si_losses, start=2):
        metrics[f"si/loss/{i}"] = si_loss
    for i, (sg_loss, g_hat) in enumerate(zip(sg_losses, pred.gradients), start=1):
        metrics[f"sg/loss/{i}"] = sg_loss
        metrics[f"sg/norm/{i}"] = jnp.sqrt(jnp.sum(g_hat ** 2) / g_hat.shape[0])
    return grads, new_stats, metrics


def probe_synthetic_gradients(net: Network, params: PyTree, stats: PyTree, x: jnp.ndarray,
                              labels: jnp.ndarray, rng: jax.Array | None = None) -> dict[str, jnp.ndarray]:
    """Cosine and norm ratio between ĝ_i and the true backprop gradient at h_i (the paper's diagnostic)."""
    fwd = forward(net.modules, params["modules"], stats["modules"], x, rng=rng)
    _, top = loss_and_top_gradient(fwd.activations[-1], labels, net.loss)
    _, true_grads = backprop_chain(fwd, top)
    pred = predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, labels)
    out = {}
    for i, (g_hat, g) in enumerate(zip(pred.gradients, true_grads), start=1):
        out[f"sg/cosine/{i}"], out[f"sg/norm_ratio/{i}"] = agreement(g_hat, g)
    return out


def predict(net: Network, params: PyTree, stats: PyTree, x: jnp.ndarray) -> jnp.ndarray:
    """Inference-mode logits (batch norm uses running statistics)."""
    h = x
    for f, p, s in zip(net.modules, params["modules"], stats["modules"]):
        h, _ = apply(f, p, s, (h,), False)
    return h
