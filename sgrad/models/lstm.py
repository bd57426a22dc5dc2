"""The recurrent core of the paper's sec. 3.1 experiments: an LSTM with a linear readout (and the aux head)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LSTMCore(nn.Module):
    """One window: (c, h) carry and inputs [B, T, D] -> (carry, outputs [B, T, O], aux predictions [B, T, 2H]).

    `resets_BxT` zeroes the state before a step where a new, independent
    sequence starts, so no gradient flows between sequences. With `aux` a linear
    head on h_t predicts the synthetic gradient of the window's last state
    (the paper's DNI + Aux).
    """

    hidden: int
    outputs: int
    aux: bool = False

    @nn.compact
    def __call__(self, carry, x_BxTxD: jnp.ndarray, resets_BxT: jnp.ndarray):
        cell = nn.scan(_ResettingCell, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)(self.hidden)
        carry, h_BxTxH = cell(carry, (x_BxTxD, resets_BxT))
        out = nn.Dense(self.outputs)(h_BxTxH)
        aux = nn.Dense(2 * self.hidden)(h_BxTxH) if self.aux else jnp.zeros(h_BxTxH.shape[:2] + (0,))
        return carry, out, aux


class _ResettingCell(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, carry, inputs):
        x, reset = inputs
        keep = (1.0 - reset.astype(x.dtype))[:, None]
        carry = tuple(c * keep for c in carry)
        return nn.OptimizedLSTMCell(self.hidden)(carry, x)
