"""A decoder-only Transformer for next-token prediction: pre-LayerNorm blocks with causal self-attention.

Its layers are blocks, so the network splits into decoupled modules between blocks (`model.dni_every` blocks
each): the first module embeds the tokens, the last reads out logits per position. Every activation between
modules is [B, T, D], one vector per position, which the SG models and DGL heads treat position by position.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class TokenEmbedding(nn.Module):
    """Token ids [B, T] -> token plus learned position embeddings [B, T, D]."""

    vocab: int
    width: int
    context: int

    @nn.compact
    def __call__(self, tokens_BxT: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        # Ids arrive as int32 from the data; shape inference (activation_shapes) and a pipeline's stage buffers
        # pass them as float32, which holds every id of a vocabulary below 2**24 exactly.
        ids = tokens_BxT.astype(jnp.int32)
        init = nn.initializers.normal(0.02)
        tok = nn.Embed(self.vocab, self.width, embedding_init=init)(ids)
        pos = self.param("position", init, (self.context, self.width))
        return tok + pos[:ids.shape[1]]


class Block(nn.Module):
    """h + attention(LN(h)), then h + MLP(LN(h)): causal, so position t never sees a token after it."""

    width: int
    heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h_BxTxD: jnp.ndarray, train: bool) -> jnp.ndarray:
        drop = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0.0)
        mask = nn.make_causal_mask(jnp.ones(h_BxTxD.shape[:2], jnp.bool_))
        a = nn.LayerNorm()(h_BxTxD)
        a = nn.MultiHeadDotProductAttention(self.heads, dropout_rate=self.dropout,
                                            deterministic=not train or self.dropout == 0.0)(a, a, mask=mask)
        h = h_BxTxD + drop(a)
        m = nn.Dense(4 * self.width)(nn.LayerNorm()(h))
        m = nn.Dense(self.width)(nn.gelu(m))
        return h + drop(m)


class Readout(nn.Module):
    """The final LayerNorm and the logits of the next token at every position, [B, T, vocab]."""

    vocab: int

    @nn.compact
    def __call__(self, h_BxTxD: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        return nn.Dense(self.vocab)(nn.LayerNorm()(h_BxTxD))
