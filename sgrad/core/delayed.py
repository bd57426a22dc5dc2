"""Decoupled Parallel Backpropagation with delayed gradients, DDG (Huo, Gu, Yang and Huang, ICML 2018,
arXiv:1804.10574).

The forward pass runs through the modules as usual, with the weights w^t of step
t. Module K steps along its true gradient at once. Module k < K steps along the
paper's delayed gradient (its eq. 8-9): the true gradient of the minibatch fed
K-k steps earlier *at the weights of that step*, ∇_{w_k} f_{x(t-K+k)}(w^{t-K+k}).
It gets there the way the paper's modules do: module k+1 sends back the cotangent
at module k's output for that minibatch (computed at its own stashed weights, so
the chain is the exact gradient at w^{t-K+k}), one step after computing it, and
module k applies its VJP at the input and the weights it stashed when it ran that
minibatch forward (recomputed from the stash: inputs and weights are kept, not
every intermediate activation).

(The authors' PyTorch code keeps the old autograd graph, whose weight tensors the
optimizer then updates in place, so there the VJP mixes old activations with
current weights; sgrad follows the paper's equation.)

Each module k < K holds a stash of depth d = K - k (a ring buffer indexed by
step mod d) and the cotangent in flight to it. Gradients are in the units of
sgrad/core/dni.py: cotangents summed over the batch, parameter gradients means.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sgrad.core import dni
from sgrad.models.loss import task_metrics
from sgrad.models.network import apply, dropout_rng

PyTree = Any


class Stash(NamedTuple):
    """What module k < K keeps of the last d = K - k minibatches, and the cotangent in flight to it."""

    x: jnp.ndarray          # [d, B, ...] the network input of each stashed minibatch (for the probe)
    y: jnp.ndarray          # [d, B] its labels (for the probe)
    h: jnp.ndarray          # [d, B, ...] the module's input
    params: PyTree          # the module's weights when it ran that minibatch forward, leading axis d; () when the
                            # backward replays the stashed input at the current weights (Features Replay)
    step: jnp.ndarray       # [d] which minibatch (the step that fed it); -1: empty
    cotangent: jnp.ndarray  # [B, ...] at the module's output, for minibatch t - d, sent by module k+1 last step


def delay(k: int, j: int) -> int:
    """Steps between feeding a minibatch and module j (0-based, of k) applying its gradient: K - k, 1-based."""
    return k - 1 - j


def init_stashes(net: dni.Network, params: PyTree, stats: PyTree, x: jnp.ndarray, y: jnp.ndarray,
                 keep_weights: bool = True) -> tuple[Stash, ...]:
    """Empty stashes for modules 1..K-1, shaped after a forward pass on the example batch (x, y).

    `keep_weights`: the delayed VJP runs at the weights the minibatch went forward with (DDG's eq. 8-9);
    without, at the module's current weights (Features Replay recomputes the old input's forward pass).
    """
    k = len(net.modules)
    acts = jax.eval_shape(lambda p, s, x: dni.forward(net.modules, p, s, x, rng=jax.random.key(0)).activations,
                          params["modules"], stats["modules"], x)
    inputs = (x, *acts[:-1])
    stashes = []
    for j in range(k - 1):
        d = delay(k, j)
        # canonical dtypes: int64 labels are int32 under JAX's default (x64 off), without a warning
        zeros = lambda a: jnp.zeros((d, *a.shape), jax.dtypes.canonicalize_dtype(a.dtype))
        weights = jax.tree.map(zeros, params["modules"][j]) if keep_weights else ()
        stashes.append(Stash(zeros(x), zeros(y), zeros(inputs[j]), weights,
                             jnp.full((d,), -1, jnp.int32), jnp.zeros(acts[j].shape, acts[j].dtype)))
    return tuple(stashes)


def _at(stash: Stash, slot) -> Stash:
    """One stashed minibatch (the cotangent, not a ring buffer, stays as it is)."""
    return Stash(*jax.tree.map(lambda a: a[slot], tuple(stash[:-1])), stash.cotangent)


def keeps_weights(stash: Stash) -> bool:
    return bool(jax.tree.leaves(stash.params))


def delayed_vjp(module, stats: PyTree, stash: Stash, slot, params_now: PyTree, rng_at: Callable | None = None
                ) -> tuple[PyTree, jnp.ndarray]:
    """(d params, d input) of the module at the stashed input of `slot` and the weights it went forward with (or,
    for a stash without weights, the current ones), at the cotangent in flight. `rng_at(step)`: the module's
    dropout key at a step, so the recomputed forward pass drops what the stashed step dropped."""
    old = _at(stash, slot)
    weights = old.params if keeps_weights(stash) else params_now
    rng = rng_at(old.step) if rng_at else None
    _, vjp = jax.vjp(lambda p, h: apply(module, p, stats, (h,), True, rng)[0], weights, old.h)
    return vjp(stash.cotangent)


def module_step(module, stats: PyTree, stash: Stash, step, x, y, h_in, params_now, rng_at: Callable | None = None
                ) -> tuple[PyTree, jnp.ndarray, Stash]:
    """Module k < K at step t: (its gradient, mean units; the cotangent for module k-1; the stash with minibatch t
    in place of minibatch t - d, whose gradient this was)."""
    d = stash.step.shape[0]
    slot = step % d
    d_params, d_in = delayed_vjp(module, stats, stash, slot, params_now, rng_at)
    put = lambda buf, v: buf.at[slot].set(v)
    weights = jax.tree.map(put, stash.params, params_now) if keeps_weights(stash) else ()
    stash = Stash(put(stash.x, x), put(stash.y, y), put(stash.h, h_in), weights,
                  stash.step.at[slot].set(step), stash.cotangent)
    return jax.tree.map(lambda g: g / x.shape[0], d_params), d_in, stash


def dropout_at(seed: int | None, j: int) -> Callable | None:
    """Module j's dropout key as a function of the step (None: no dropout key, as for a network without dropout)."""
    return None if seed is None else lambda step: dni.module_rng(dropout_rng(seed, step), j)


def delayed_grads(net: dni.Network, params: PyTree, stats: PyTree, stashes: tuple[Stash, ...], step,
                  x: jnp.ndarray, labels: jnp.ndarray, seed: int | None = None):
    """One step's delayed gradients: (grads, new_stats, new stashes, metrics). Module k's gradient is valid once
    step >= K - k (before, nothing has come back to it). `seed`: the run's, for dropout (dropout_rng)."""
    k = len(net.modules)
    rng = None if seed is None else dropout_rng(seed, step)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x, rng=rng)
    loss, top = dni.loss_and_top_gradient(fwd.activations[-1], labels, net.loss)
    d_top, sent = fwd.vjps[-1](top)
    grads = [None] * (k - 1) + [jax.tree.map(lambda g: g / x.shape[0], d_top)]
    inputs = (x, *fwd.activations[:-1])
    new = list(stashes)
    for j in reversed(range(k - 1)):
        grads[j], below, new[j] = module_step(net.modules[j], stats["modules"][j], stashes[j], step, x, labels,
                                              inputs[j], params["modules"][j], dropout_at(seed, j))
        # What module j+1 computed this step reaches module j next step.
        new[j] = new[j]._replace(cotangent=sent)
        sent = below
    metrics = task_metrics(loss, fwd.activations[-1], labels)
    return {"modules": tuple(grads), "interface": (), "si": ()}, {"modules": fwd.stats, "interface": (), "si": ()}, tuple(new), \
        metrics


def probe_delayed(net: dni.Network, params: PyTree, stats: PyTree, stashes: tuple[Stash, ...], step,
                  prefix: str = "ddg", seed: int | None = None) -> dict[str, jnp.ndarray]:
    """For each module k < K, the update it applies next step against the true gradient of the same minibatch at
    the current weights: `ddg/cosine/<k>`, `ddg/norm_ratio/<k>`, and `ddg/staleness/<k>` (steps since that
    minibatch was fed, read from the stash). Meaningful once step >= K - k."""
    out = {}
    for j, stash in enumerate(stashes):
        slot = step % stash.step.shape[0]
        delayed, _ = delayed_vjp(net.modules[j], stats["modules"][j], stash, slot, params["modules"][j],
                                 dropout_at(seed, j))
        old = _at(stash, slot)
        current, _, _ = dni.backprop_grads(net, params, stats, old.x, old.y,
                                           None if seed is None else dropout_rng(seed, old.step))
        cosine, ratio = dni.agreement(ravel_pytree(delayed)[0] / old.x.shape[0], ravel_pytree(current["modules"][j])[0])
        out[f"{prefix}/cosine/{j + 1}"], out[f"{prefix}/norm_ratio/{j + 1}"] = cosine, ratio
        out[f"{prefix}/staleness/{j + 1}"] = (step - old.step).astype(jnp.float32)
    return out
