"""2-D convolution whose gradients are convolutions in the layout XLA:CPU runs on its fast path.

`lax.conv_general_dilated`'s own transpose rules express the weight gradient as a convolution with exotic
dimension labels (the batch as the contracted feature, `f01b_i01o->01bf`). Outside a loop XLA:CPU rewrites
such a convolution into its canonical NHWC x HWIO layout and runs it with Eigen; inside a `while` loop (our
compiled chunk of steps) it does not, and falls back to a naive loop: measured on the paper's CNN, 7.5 s per
step for the 5x5 128 -> 128 weight gradient that takes 54 ms outside the loop. Here the gradients are written
in that canonical layout from the start, with the transposes made explicit:

    input gradient:  dy (N, H', W', O) * flip(w) as (kh, kw, O, I), padded k-1-p      -> (N, H, W, I)
    weight gradient: x as (I, H, W, N) * dy as (H', W', N, O), padded like the forward -> (I, kh, kw, O)

A kernel larger than its input (the paper's 5x5 convolutions of a 4x4 activation, in cnn4's SG model) is a
case of its own: XLA swaps such a convolution's operands into a layout (`01fb_o01i->f01b`) that XLA:CPU runs
naively, 98 ms for a 64x4x4x128 convolution that takes a few ms as a matmul; so there the k*k shifted windows
go side by side and meet the kernel in one matmul (its gradients by autodiff, also matmuls).

Same values as XLA's rules (tests/test_convolution.py checks forward and gradients against flax.linen.Conv),
used on CPU for stride 1, undilated, ungrouped NHWC convolutions (every convolution of sgrad's models); anything
else, and every convolution on GPU/TPU (where XLA maps its own rules onto the vendor's backward kernels), goes
to `lax.conv_general_dilated` unchanged. Pass `conv_general_dilated=conv` to `flax.linen.Conv`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` with the same arguments (what `flax.linen.Conv` passes)."""
    general = partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                      dimension_numbers, feature_group_count, precision=precision)
    if jax.default_backend() != "cpu" or lhs.ndim != 4 or feature_group_count != 1:
        return general()
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, DN):
        return general()
    if any(s != 1 for s in window_strides) or any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                                                            *(rhs_dilation or ()))):
        return general()
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if (rhs.shape[0] > lhs.shape[1] or rhs.shape[1] > lhs.shape[2]) and min(min(p) for p in pads) >= 0:
        return _conv_by_patches(lhs, rhs, pads, precision)
    return _conv(lhs, rhs, pads, precision)


def _conv_by_patches(x, w, pads, precision):
    kh, kw, ci, co = w.shape
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    oh, ow = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    # Window offsets (a, b) side by side, channels fastest: the order of w.reshape(kh * kw * ci, co)'s rows.
    patches = jnp.concatenate([xp[:, a:a + oh, b:b + ow, :] for a in range(kh) for b in range(kw)], axis=-1)
    return jnp.dot(patches, w.reshape(kh * kw * ci, co), precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, pads, precision):
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=DN, precision=precision)


def _forward(x, w, pads, precision):
    return _conv(x, w, pads, precision), (x, w)


def _backward(pads, precision, residuals, dy):
    x, w = residuals
    (top, bottom), (left, right) = pads
    kh, kw = w.shape[:2]
    w_flipped = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    dx = lax.conv_general_dilated(dy, w_flipped, (1, 1), ((kh - 1 - top, kh - 1 - bottom),
                                                          (kw - 1 - left, kw - 1 - right)),
                                  dimension_numbers=DN, precision=precision)
    dw = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), pads,
                                  dimension_numbers=DN, precision=precision)
    return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv.defvjp(_forward, _backward)
