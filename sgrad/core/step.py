"""Pure, jittable steps: one train step per mode family, the evaluation pass and the gradient probe."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from sgrad.core import dni
from sgrad.models.loss import is_classes, per_example
from sgrad.core.optim import Optimizers
from sgrad.models.network import Network

PyTree = Any


@struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: PyTree        # {"modules": (...), "interface": (...), "si": (...)}
    stats: PyTree         # batch-norm statistics, same layout
    opt_state: PyTree
    carry: PyTree = ()    # what the mode carries between steps (ddg, fr: each module's stash)


def create_state(params: PyTree, stats: PyTree, tx: Optimizers) -> TrainState:
    """Each module and SG model gets its own optimizer state, so each can skip steps on its own."""
    # Synthetic input models follow the SG models' optimizer.
    opt_state = {"modules": tuple(tx.modules.init(p) for p in params["modules"]),
                 "interface": tuple(tx.sg.init(q) for q in params["interface"]),
                 "si": tuple(tx.sg.init(q) for q in params["si"])}
    return TrainState(jnp.zeros((), jnp.int32), params, stats, opt_state)


def init_state(net: Network, params: PyTree, stats: PyTree, tx: Optimizers, x: jnp.ndarray,
               y: jnp.ndarray) -> TrainState:
    """create_state plus what the mode carries between steps, shaped after the example batch (x, y)."""
    return create_state(params, stats, tx).replace(carry=net.rule.init_carry(net, params, stats, x, y))


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """How the decoupled updates are applied, beyond the plain rule (paper sec. 4.1, supplement A)."""

    sg_scale: float = 1.0
    lam: float = 0.0                         # BP(λ) at step 0 (0: DNI, 1: backprop)
    lam_final: float | None = None           # anneal λ linearly to this over lam_steps
    lam_steps: int = 0
    warmup_steps: int = 0                    # SG models learn true gradients; modules wait
    update_prob: float = 1.0                 # each module (with its SG model) updates w.p. p
    seed: int = 0

    def lam_at(self, step: jnp.ndarray):
        """λ for this step: a static 0.0 when nothing mixes, so modules stay unlocked."""
        if self.lam_final is None and self.warmup_steps == 0 and self.lam == 0:
            return 0.0
        end = self.lam if self.lam_final is None else self.lam_final
        lam = optax.linear_schedule(self.lam, end, max(self.lam_steps, 1))(step - self.warmup_steps)
        return jnp.where(step < self.warmup_steps, 1.0, lam)


def _global_norm(tree) -> jnp.ndarray:
    return optax.global_norm(tree) if jax.tree.leaves(tree) else jnp.zeros(())


def axis_mean(tree: PyTree, axis_name: str) -> PyTree:
    """The mean of `tree` over the devices of `axis_name`: jax.lax.pmean, except two CPU devices, which swap
    their values and add them.

    Gloo's all-reduce between two processes pinned to one core each costs 1.4 to 2.6 times a swap of the same
    buffer at every size sgrad sends (1 MB to 40 MB, results/bench/transport.md), and a small one takes 4 ms
    where a swap takes under 1. The result is the same to the bit: each device adds the same two numbers and
    halves the sum. Every device of the mesh must run it (a collective-permute spans the whole mesh): not
    inside a branch that only some devices take, such as the pipeline's switch over stages."""
    if jax.default_backend() != "cpu" or jax.lax.axis_size(axis_name) != 2:
        return jax.lax.pmean(tree, axis_name)
    peer = jax.lax.ppermute(tree, axis_name, [(0, 1), (1, 0)])
    return jax.tree.map(lambda a, b: (a + b) / 2, tree, peer)


def bucket_mean(tree: PyTree, axis_name: str) -> PyTree:
    """The mean of a whole pytree over `axis_name` as one flat buffer: one collective per step instead of one
    per leaf, as DDP's gradient buckets do (a collective's latency, not its bytes, dominates a small network's
    step)."""
    flat, unravel = ravel_pytree(tree)
    return unravel(axis_mean(flat, axis_name))


def masked_update(tx: optax.GradientTransformation, grads, opt_state, params, active):
    """One optimizer step, kept only where `active` (a traced bool); otherwise params and state stay."""
    updates, new_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if active is True:
        return new_params, new_state, updates
    keep = lambda new, old: jnp.where(active, new, old)
    return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, opt_state),
            jax.tree.map(lambda u: jnp.where(active, u, 0), updates))


def make_train_step(net: Network, tx: Optimizers, rule: UpdateRule = UpdateRule(),
                    axis_name: str | None = None
                    ) -> Callable[[TrainState, jnp.ndarray, jnp.ndarray], tuple[TrainState, dict]]:
    """step(state, x, y, diagnostics=True) -> (state, metrics) for the network's mode (`net.rule`).

    With `axis_name` the step runs on one shard of the batch per device (data
    parallel): gradients, batch-norm statistics and metrics are averaged over it.
    `diagnostics` adds the global norms of gradients, updates and parameters
    (`watch/norm/*`): four reductions over every parameter cost a fifth of a small
    network's step on CPU, so a chunk asks for them at its last step only.
    """
    k = len(net.modules)
    mode = net.rule

    def train_step(state: TrainState, x: jnp.ndarray, y: jnp.ndarray, diagnostics: bool = True):
        grads, stats, carry, metrics = mode.grads(net, state, x, y, rule)
        metrics = dict(metrics)
        if axis_name is not None:
            grads, stats, metrics = bucket_mean((grads, stats, metrics), axis_name)
        # Which modules (each with the SG model on its output) update this step.
        if rule.update_prob < 1.0:
            key = jax.random.fold_in(jax.random.key(rule.seed), state.step)
            active = list(jax.random.bernoulli(key, rule.update_prob, (k,)))
        else:
            active = [True] * k
        module_active = mode.module_active(net, state.step, rule, active)
        new_params, new_opt, updates = {"modules": [], "interface": [], "si": []}, {"modules": [], "interface": [], "si": []}, []
        # Input model i serves module i + 1 and updates with it.
        for group, acts, opt in (("modules", module_active, tx.modules), ("interface", active, tx.sg),
                                 ("si", active[1:], tx.sg)):
            for i, (g, s, p) in enumerate(zip(grads[group], state.opt_state[group], state.params[group])):
                p2, s2, u = masked_update(opt, g, s, p, acts[i])
                new_params[group].append(p2)
                new_opt[group].append(s2)
                if group == "modules":
                    updates.append(u)
        params = {g: tuple(v) for g, v in new_params.items()}
        opt_state = {g: tuple(v) for g, v in new_opt.items()}
        if diagnostics:
            metrics["watch/norm/grad_modules"] = _global_norm(grads["modules"])
            metrics["watch/norm/grad_sg"] = _global_norm(grads["interface"])
            metrics["watch/norm/update_modules"] = _global_norm(updates)
            metrics["watch/norm/params_modules"] = _global_norm(params["modules"])
        return TrainState(state.step + 1, params, stats, opt_state, carry), metrics

    return train_step


def eval_counts(net: Network, state: TrainState, x: jnp.ndarray, y: jnp.ndarray,
                mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Summed loss, correct predictions and example count over the unmasked rows of a batch."""
    outputs = dni.predict(net, state.params, state.stats, x)
    loss = per_example(net.loss, outputs, y)
    m = mask.astype(jnp.float32)
    counts = {"loss": jnp.sum(loss * m), "count": jnp.sum(m)}
    if is_classes(y):
        correct = jnp.argmax(outputs, -1) == y
        if correct.ndim > 1:  # e.g. tokens: the fraction right per example
            correct = correct.reshape(correct.shape[0], -1).mean(axis=1)
        counts["correct"] = jnp.sum(correct * m)
    return counts


def probe(net: Network, state: TrainState, x: jnp.ndarray, y: jnp.ndarray, rule: UpdateRule = UpdateRule()
          ) -> dict[str, jnp.ndarray]:
    """What the mode's modules step along against the true gradient (its rule's probe); empty if it has none."""
    return net.rule.probe(net, state, x, y, rule) if net.rule.probe else {}
