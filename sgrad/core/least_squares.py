"""A linear synthetic gradient model refit by least squares with forgetting (`sg.optim.name=rls`).

A gradient step moves M a little toward its targets; the LSTM's true future
gradient drifts within about ten windows while the core trains on Copy (the
best linear M of one moment keeps a cosine of ~0.16 ten windows later, against
~0.35 at its own core: results/rnn/sg_ceiling/tracking.md), so M lags behind a
moving target. Refitting instead gives, after every
window, the ridge regression on all the targets seen so far, each window's
weighted β^age:

    W_t = argmin_W  Σ_k β^(t-k) mean_b ||x̃_kb W - y_kb||² + ridge ||W||²,   x̃ = [x, 1],

recursive least squares with forgetting factor β (memory about 1/(1-β)
windows). Only the two running sums A = Σ β^(t-k) X̃_kᵀX̃_k / B and
C = Σ β^(t-k) X̃_kᵀY_k / B are kept. C comes from the regression's own
gradient (g = 2 X̃ᵀ(X̃W - Y) / B, sgrad/core/dni.py: regression_grads), so
the targets need not be passed: X̃ᵀY / B = (X̃ᵀX̃ / B) W - g / 2.

It is an optax transformation with extra arguments: `inputs` (what the linear
layer reads, [B, d]) and optionally `rows` ([B], 0 for a row the regression
leaves out): the update it returns moves W to W_t.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax

from sgrad.models.synthetic import linear_layer, stacked

PyTree = Any


class LeastSquaresState(NamedTuple):
    gram: jnp.ndarray    # A [d+1, d+1]
    cross: jnp.ndarray   # C [d+1, o]


def forgetting_least_squares(forget: float, ridge: float) -> optax.GradientTransformationExtraArgs:
    """Recursive least squares with forgetting factor `forget` (β) and a `ridge` on W (see the module text)."""

    def init(params):
        w = stacked(params[linear_layer(params, 'sg.optim.name=rls fits')])
        return LeastSquaresState(jnp.zeros((w.shape[0], w.shape[0]), w.dtype), jnp.zeros_like(w))

    def update(grads, state, params=None, *, inputs=None, rows=None, **_):
        if params is None or inputs is None:
            raise ValueError("sg.optim.name=rls needs the SG model's parameters and its inputs")
        name = linear_layer(params, 'sg.optim.name=rls fits')
        w, g = stacked(params[name]), stacked(grads[name])
        x = jnp.concatenate([inputs, jnp.ones_like(inputs[:, :1])], axis=-1).astype(w.dtype)
        if rows is not None:  # 0 for a row the regression leaves out (its gradient, g, has none from it either)
            x = x * rows[:, None].astype(w.dtype)
        batch_gram = x.T @ x / x.shape[0]
        gram = forget * state.gram + batch_gram
        cross = forget * state.cross + batch_gram @ w - 0.5 * g
        # A + ridge·I is symmetric positive definite: Cholesky, about half the work of a general solve.
        factor = jax.scipy.linalg.cho_factor(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype))
        fit = jax.scipy.linalg.cho_solve(factor, cross)
        step = fit - w
        updates = {name: {"kernel": step[:-1], "bias": step[-1]}}
        return updates, LeastSquaresState(gram, cross)

    return optax.GradientTransformationExtraArgs(init, update)
