"""mode=ddg, delayed-gradient Decoupled Parallel Backpropagation (Huo, Gu, Yang and Huang, ICML 2018): module k
of K steps along the true gradient of the minibatch fed K-k steps earlier, at the weights of that step. The rule
itself is sgrad/core/delayed.py; `delayed_rule` also serves the modes that replay features instead."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgrad.core import delayed
from sgrad.core.step import masked_update
from sgrad.models.network import dropout_rng
from sgrad.modes.rule import ModeRule, Stage
from sgrad.modes.stage import SLOT, no_metrics, run_module, task_loss, task_means


def _grads(net, state, x, y, settings):
    grads, stats, carry, metrics = delayed.delayed_grads(net, state.params, state.stats, state.carry, state.step,
                                                         x, y, settings.seed)
    return grads, stats, carry, metrics


def _module_active(net, step, settings, active):
    # Module k's first gradient comes back K - k steps after the first minibatch.
    k = len(net.modules)
    return [step >= delayed.delay(k, j) for j in range(k)]


def stage(pipe, i: int, tree: dict, t):
    """Device i's share of one step of the forward-locked schedule (LockedTick): run in order of i, it is exactly
    the single-device step."""
    net, k = pipe.net, pipe.k
    metrics = no_metrics()
    new = dict(tree)
    if t.ran is None:
        fwd = run_module(pipe, i, tree, t.h_in, dropout_rng(pipe.settings.seed, t.step))
        h, new_stats = fwd.activations[0], fwd.stats[0]
    else:  # module i < K-1's forward pass ran earlier in the tick; its backward is the stash's, not this one's
        h, new_stats = t.ran
    if i == k - 1:
        d_params, d_in = fwd.vjps[0](task_loss(pipe, h, t.y, True, metrics))
        grads, active = jax.tree.map(lambda g: g / pipe.batch, d_params), True
    else:
        grads, d_in, new["carry"] = delayed.module_step(net.modules[i], tree["module_stats"], tree["carry"], t.step,
                                                        t.x, t.y, t.h_in, tree["module"],
                                                        delayed.dropout_at(pipe.settings.seed, i))
        active = t.step >= delayed.delay(k, i)
    new["module"], new["module_opt"], _ = masked_update(pipe.tx.modules, grads, tree["module_opt"], tree["module"],
                                                        active)
    new["module_stats"] = new_stats
    metrics[SLOT["valid"]] = jnp.ones(())
    return new, h, d_in, jnp.stack(metrics)


def receive(pipe, i: int, tree: dict, cotangent) -> dict:
    """Device i < K-1 keeps the cotangent device i+1 sent this tick for its next one."""
    if i == pipe.k - 1:
        return tree
    return {**tree, "carry": tree["carry"]._replace(cotangent=cotangent)}


def delayed_rule(name: str, summary: str, keep_weights: bool) -> ModeRule:
    """A mode whose module k applies the true gradient K-k steps late, from a stash of its inputs (and, with
    `keep_weights`, of the weights they went forward with). Its probe logs `<name>/cosine|norm_ratio|staleness/<k>`."""

    def init_carry(net, params, stats, x, y):
        return delayed.init_stashes(net, params, stats, x, y, keep_weights)

    def probe(net, state, x, y, settings=None):
        return delayed.probe_delayed(net, state.params, state.stats, state.carry, state.step, prefix=name,
                                     seed=settings.seed if settings else None)

    def probe_ready(metric: str, step: int, k: int) -> bool:
        # Module k's stash holds a real minibatch once K - k have been fed.
        return step >= delayed.delay(k, int(metric.rsplit("/", 1)[1]) - 1)

    def refusals(settings):
        # Every module steps every step: skipping one would break the stash's ring of K - k minibatches.
        return [] if settings.update_prob == 1.0 else [("trainer.update_prob", settings.update_prob,
                                                         f"1.0 for mode={name}")]

    # The stash holds whole minibatches, so data parallelism (which splits them) is not offered.
    return ModeRule(name, summary, _grads, init_carry=init_carry, module_active=_module_active, probe=probe,
                    probe_ready=probe_ready,
                    stage=Stage(stage, lambda sums, k: task_means(sums), "locked", sends_back=True, receive=receive),
                    parallel=("none", "pipeline"),
                    refusals=refusals, diagnostic=(f"{name}/cosine", "cosine(delayed update, current gradient)"))


RULE = delayed_rule("ddg", "the true gradient, K-i steps late, at the weights of that step (delayed-gradient DDG)",
                    keep_weights=True)
