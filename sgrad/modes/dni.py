"""mode=dni, cdni, dni_full, cdni_full: module i < K steps along ĝ_i = M_i(h_i [, y]) at once (Jaderberg et al.
2016); the `_full` modes also run module i > 1 on a synthetic input Î_i = I_i(x) (complete unlocking, sec. 3.3).
The update rule itself is sgrad/core/dni.py; this file says how the rest of sgrad uses it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgrad.core import dni, recurrent
from sgrad.core.step import masked_update
from sgrad.models.network import apply, dropout_rng
from sgrad.modes.rule import ModeRule, Stage
from sgrad.modes.stage import SLOT, keep_if, no_metrics, run_module, slot_means, step_module, task_loss, task_means


def _grads(net, state, x, y, settings):
    lam = settings.lam_at(state.step)
    grads, stats, metrics = dni.dni_grads(net, state.params, state.stats, x, y, settings.sg_scale, lam,
                                          dropout_rng(settings.seed, state.step))
    if not isinstance(lam, float):
        metrics["sg/lambda"] = lam
    return grads, stats, state.carry, metrics


def _module_active(net, step, settings, active):
    """During `sg.warmup_steps` the SG models learn the true gradients (λ = 1) and the modules wait."""
    if not settings.warmup_steps:
        return active
    warm = step < settings.warmup_steps
    return [jnp.logical_and(a, ~warm) for a in active]


def _probe(net, state, x, y, settings=None):
    rng = dropout_rng(settings.seed, state.step) if settings else None
    return dni.probe_synthetic_gradients(net, state.params, state.stats, x, y, rng)


def stage(pipe, i: int, tree: dict, t):
    """Device i's unlocked tick (sgrad/modes/stage.py): first M_i regresses its output from an earlier tick
    (t.past_h) toward the SG target that just arrived (and, with synthetic inputs, I_i regresses the activation
    module i-1 sent for last tick's input t.past_x); then module i takes the decoupled step on (h_in, y_in), on
    Î_i = I_i(h_in) when it has an input model (h_in is then the network input). All of it uses the parameters
    from before this tick, as the single-device step does, so with one minibatch in flight at a time the
    pipeline is exactly that step."""
    net, last = pipe.net, i == pipe.k - 1
    new, metrics = dict(tree), no_metrics()
    if not last:
        model = net.interface_models[i]
        # sg_share: device i+1 regresses its copy of M_i on the last shared_rows rows; the pipeline sums the two
        # gradients and applies them on both devices.
        rows = pipe.batch - pipe.shared_rows
        g_sg, sg_loss = regression(pipe, model, tree["interface"], tree["interface_stats"], t.past_h[:rows],
                                   t.past_y[:rows], t.target[:rows])
        if pipe.shared_rows:
            new["sg_grad"] = g_sg
        else:
            new["interface"], new["interface_opt"], _ = masked_update(pipe.tx.sg, g_sg, tree["interface_opt"],
                                                                      tree["interface"], t.target_ok)
        metrics[SLOT["sg_loss"]] = jnp.where(t.target_ok, sg_loss, 0.0)
        metrics[SLOT["sg_valid"]] = t.target_ok.astype(jnp.float32)
    h_in = t.h_in
    if pipe.rule.synthetic_inputs and i > 0:
        si_model = net.input_models[i - 1]
        si_out = lambda q, x: apply(si_model, q, tree["si_stats"], (x,), True)
        pred, vjp = jax.vjp(lambda q: si_out(q, t.past_x)[0], tree["si"])
        (g_si,), (si_loss,) = dni.regression_grads([pred], [vjp], [t.si_target])
        new["si"], new["si_opt"], _ = masked_update(pipe.tx.sg, g_si, tree["si_opt"], tree["si"], t.si_target_ok)
        metrics[SLOT["si_loss"]] = jnp.where(t.si_target_ok, si_loss, 0.0)
        metrics[SLOT["si_valid"]] = t.si_target_ok.astype(jnp.float32)
        h_in, si_stats = si_out(tree["si"], h_in)
        new["si_stats"] = keep_if(t.ok_in, si_stats, tree["si_stats"])
    fwd = run_module(pipe, i, tree, h_in, t.rng)
    h = fwd.activations[0]
    if last:
        cot, factor = task_loss(pipe, h, t.y_in, t.ok_in, metrics), 1.0 / pipe.batch
    else:
        cot, sg_stats = apply(model, tree["interface"], tree["interface_stats"], (h, net.interface_label(t.y_in)), True)
        new["interface_stats"] = keep_if(t.ok_in, sg_stats, tree["interface_stats"])
        # The VJP is linear in the cotangent: scaling the update leaves the SG target (d_in) unscaled.
        factor = pipe.settings.sg_scale / pipe.batch
        metrics[SLOT["sg_norm"]] = jnp.where(t.ok_in, jnp.sqrt(jnp.sum(cot ** 2) / pipe.batch), 0.0)
    new, d_in = step_module(pipe, tree, new, fwd, cot, factor, t.ok_in, metrics)
    new["module_stats"] = keep_if(t.ok_in, fwd.stats[0], tree["module_stats"])
    return new, h, d_in, jnp.stack(metrics)


def regression(pipe, model, params, stats, h, y, target):
    """M's regression gradient on these rows of a minibatch, as their share of the whole batch's mean-loss
    gradient, and the rows' mean loss. Only the output is used: the running BN statistics were updated when ĝ
    was predicted."""
    pred, vjp = jax.vjp(lambda q: apply(model, q, stats, (h, pipe.net.interface_label(y)), True)[0], params)
    (grads,), (loss,) = dni.regression_grads([pred], [vjp], [target])
    if h.shape[0] != pipe.batch:
        grads = jax.tree.map(lambda g: g * (h.shape[0] / pipe.batch), grads)
    return grads, loss


def peer(pipe, i: int, tree: dict, h, y, target):
    """sg_share: device i's share of M_{i-1}'s regression, on its copy of M_{i-1}: the last rows of the activation
    it received last tick, toward the SG target it made for them."""
    return regression(pipe, pipe.net.interface_models[i - 1], tree["peer"], tree["peer_stats"], h, y, target)


def _stage_metrics(sums_KxM, k: int, synthetic_inputs: bool = False):
    out = {**task_means(sums_KxM),
           **slot_means(sums_KxM, k, {"sg/loss": ("sg_loss", "sg_valid"), "sg/norm": ("sg_norm", "valid")})}
    if synthetic_inputs:
        out.update(slot_means(sums_KxM, k, {"si/loss": ("si_loss", "si_valid")}, first=1, last=k))
    return out


def _full_stage_metrics(sums_KxM, k: int):
    return _stage_metrics(sums_KxM, k, synthetic_inputs=True)


def _link(predicted, true, scale):
    """Two clocks: A steps along M's prediction of B's gradient at once, never waiting for B's."""
    return scale * predicted


def _rule(name: str, summary: str, conditioned: bool, synthetic_inputs: bool) -> ModeRule:
    # Complete unlocking has no sequence task (a window's input is the stream itself); cDNI has no two-clock
    # task (B's target is not A's to see).
    return ModeRule(
        name, summary, _grads, interface="sg", conditioned=conditioned, synthetic_inputs=synthetic_inputs,
        window=None if synthetic_inputs else recurrent.dni_window_grads,
        link=_link if not (conditioned or synthetic_inputs) else None,
        module_active=_module_active, probe=_probe,
        stage=Stage(stage, _full_stage_metrics if synthetic_inputs else _stage_metrics, "unlocked", sends_back=True,
                    reads_input=synthetic_inputs, peer=None if synthetic_inputs else peer),
        diagnostic=("sg/cosine", "cosine(ĝ_i, true gradient)"))


RULES = (
    _rule("dni", "the VJP of f_i at ĝ_i = M_i(h_i)", False, False),
    _rule("cdni", "the VJP of f_i at ĝ_i = M_i(h_i, one-hot y)", True, False),
    _rule("dni_full", "as dni, module i > 1 on a synthetic input I_i(x) (complete unlocking)", False, True),
    _rule("cdni_full", "as cdni, module i > 1 on a synthetic input I_i(x) (complete unlocking)", True, True),
)
