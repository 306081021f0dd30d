"""Multi-head attention: plain scaled dot-product, or Transformer-XL relative positions (Dai et al. 2019).

Relative attention scores, for query i and key j with head-split projections q_i, k_j and learned per-head biases u, v:
    score[i, j] = ((q_i + u) . k_j + (q_i + v) . r_{i-j}) / sqrt(head_dim)
where r_d = W_r sinusoid(d) is a projected sinusoidal embedding of the signed distance d = i - j. Scores only depend
on distances, so padding a sequence never changes a valid position's output (keys beyond the length are masked).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import DenseGeneral, Dtype, constrain, sinusoid

_MASKED_LOGIT = -1e9


def relative_distances(length: int) -> jax.Array:
    """i32[2T-1] signed distances T-1, T-2, ..., -(T-1): the row order `rel_shift` expects."""
    return jnp.arange(length - 1, -length, -1)


def rel_shift(x: jax.Array) -> jax.Array:
    """[..., T, 2T-1] scores against distances T-1 .. -(T-1) -> [..., T, T] with out[i, j] = x[i, T-1-i+j].

    The pad-and-reshape trick of Transformer-XL/ESPnet: no gather, no [T, T, D] tensor.
    """
    *lead, length, num_distances = x.shape
    if num_distances != 2 * length - 1:
        raise ValueError(f"rel_shift expects [..., T, 2T-1]; got trailing shape {(length, num_distances)}.")
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])
    x = x.reshape(*lead, 2 * length, length)[..., 1:, :]
    return x.reshape(*lead, length, 2 * length - 1)[..., :length]


class MultiHeadAttention(nn.Module):
    """Multi-head attention of `query` [B, Tq, D] over `memory` [B, Tk, Dm] with keys masked by bool[B, Tk].

    relative_position=True is self-attention with Transformer-XL relative positions (needs Tq == Tk).
    Returns [B, Tq, D] (the query's dim). Softmax in float32.
    """

    num_heads: int
    head_dim: int
    relative_position: bool = False
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, memory: jax.Array, key_mask: jax.Array, *, train: bool) -> jax.Array:
        heads = (self.num_heads, self.head_dim)
        project_axes = ("embed", "heads", "kv")
        q = DenseGeneral(heads, project_axes, dtype=self.dtype, name="query")(query)
        k = DenseGeneral(heads, project_axes, dtype=self.dtype, name="key")(memory)
        v = DenseGeneral(heads, project_axes, dtype=self.dtype, name="value")(memory)
        q, k, v = (constrain(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))

        if self.relative_position:
            if query.shape[1] != memory.shape[1]:
                raise ValueError(
                    f"relative-position attention is self-attention; got {query.shape[1]} queries and "
                    f"{memory.shape[1]} keys. Use relative_position=False for cross-attention."
                )
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv"))
            content_bias = self.param("content_bias", bias_init, heads, jnp.float32)  # u
            position_bias = self.param("position_bias", bias_init, heads, jnp.float32)  # v
            distances = sinusoid(relative_distances(query.shape[1]), query.shape[-1]).astype(self.dtype)
            r = DenseGeneral(heads, project_axes, dtype=self.dtype, use_bias=False, name="position")(distances)
            content = jnp.einsum("bqhd,bkhd->bhqk", q + content_bias.astype(self.dtype), k)
            position = jnp.einsum("bqhd,rhd->bhqr", q + position_bias.astype(self.dtype), r)
            logits = content + rel_shift(position)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)

        logits = logits.astype(jnp.float32) * self.head_dim**-0.5
        logits = jnp.where(key_mask[:, None, None, :], logits, _MASKED_LOGIT)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = DenseGeneral(query.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), dtype=self.dtype, name="out")(out)
        return constrain(out, ("batch", "length", "embed"))
