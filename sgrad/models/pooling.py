"""Max pooling with a gradient that XLA:CPU computes fast, used where measurement says it is faster.

XLA lowers the gradient of `reduce_window(max)` to `select_and_scatter`, which XLA:CPU runs about seven times
slower than the forward pass and slower than the 5x5 convolution beside it (the paper's CNN, 3x3 windows of
stride 2 over 32x32x128 at batch 64: 117 ms against 16 ms). Here the window's maximum is the maximum of its
k*k strided slices; the forward pass records which slice won (the first, as select_and_scatter picks it) and
the gradient pads each slice's share back with `lax.pad`, a copy. On every backend the first call for a shape
times both ways (forward and VJP); the slices are used only when clearly faster, so accelerators keep XLA's
native pooling unless they too measure otherwise. SGRAD_MAX_POOL=native|slices pins the choice (benchmarks).
"""

from __future__ import annotations

import os
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.models.partition import seconds

# (shape, dtype, window, stride, backend) -> "native" | "slices": measured once per process.
_CHOSEN: dict[tuple, str] = {}
_CLEARLY = 0.8  # the slices must take less than this fraction of the native time


def max_pool(x_BxHxWxC: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """`nn.max_pool(x, (window, window), (stride, stride), padding="SAME")`, by the faster way here."""
    if lowering(x_BxHxWxC.shape, x_BxHxWxC.dtype, window, stride) == "slices":
        return max_pool_slices(x_BxHxWxC, window, stride)
    return nn.max_pool(x_BxHxWxC, (window, window), (stride, stride), padding="SAME")


def lowering(shape, dtype, window: int, stride: int) -> str:
    pinned = os.environ.get("SGRAD_MAX_POOL")
    if pinned in ("native", "slices"):
        return pinned
    if jax.process_count() > 1:
        return "native"  # every process must build the same program; a timing could differ between them
    key = (tuple(shape), str(dtype), window, stride, jax.default_backend())
    if key not in _CHOSEN:
        x = jax.ShapeDtypeStruct(tuple(shape), dtype)

        def train(f, x):
            y, vjp = jax.vjp(f, x)
            return vjp(y)
        native = partial(nn.max_pool, window_shape=(window, window), strides=(stride, stride), padding="SAME")
        with jax.ensure_compile_time_eval():  # may be called while a step is traced: measure for real
            t_native = seconds(partial(train, native), x)
            t_slices = seconds(partial(train, lambda h: max_pool_slices(h, window, stride)), x)
        _CHOSEN[key] = "slices" if t_slices < _CLEARLY * t_native else "native"
    return _CHOSEN[key]


def _strided_windows(x, window: int, stride: int):
    """The window's k*k elements as strided slices of the -inf padded input (SAME padding), row-major."""
    _, h, w, _ = x.shape
    (top, bottom), (left, right) = jax.lax.padtype_to_pads((h, w), (window, window), (stride, stride), "SAME")
    out_h, out_w = -(-h // stride), -(-w // stride)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    slices = [xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
              for i in range(window) for j in range(window)]
    return slices, (top, left), xp.shape


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_slices(x, window: int, stride: int):
    return _forward(x, window, stride)[0]


def _forward(x, window: int, stride: int):
    slices, offset, padded = _strided_windows(x, window, stride)
    best, winner = slices[0], jnp.zeros(slices[0].shape, jnp.int8)
    for n, s in enumerate(slices[1:], 1):
        better = s > best  # strictly: a tie keeps the earlier element, as select_and_scatter does
        best, winner = jnp.where(better, s, best), jnp.where(better, jnp.int8(n), winner)
    return best, (winner, x.shape, offset, padded)


def _backward(window: int, stride: int, residuals, g):
    winner, shape, (top, left), padded = residuals
    _, hp, wp, _ = padded
    out_h, out_w = g.shape[1], g.shape[2]
    zero = jnp.zeros((), g.dtype)
    dxp = jnp.zeros(padded, g.dtype)
    for n in range(window * window):
        i, j = divmod(n, window)
        # Slice n's share, spread back to the positions it read: interior padding undoes the stride.
        config = ((0, 0, 0), (i, hp - i - stride * (out_h - 1) - 1, stride - 1),
                  (j, wp - j - stride * (out_w - 1) - 1, stride - 1), (0, 0, 0))
        dxp = dxp + jax.lax.pad(jnp.where(winner == n, g, zero), zero, config)
    return (dxp[:, top:top + shape[1], left:left + shape[2], :],)


max_pool_slices.defvjp(_forward, _backward)
