"""SONAR-style stage-1 text model: a sentence encoder and a decoder that reads one sentence vector.

tokens i32[B, U] -> token embedding + sinusoid positions -> pre-LN Transformer encoder (padding-masked) ->
masked mean over valid tokens -> projection -> sentence embedding f32[B, E].
The decoder is an autoregressive pre-LN Transformer: per layer, causal self-attention, then cross-attention to a
memory of `memory_slots` vectors projected from the sentence embedding, then FFN (layers/pooling.CrossAttentionBlock).

Token ids follow the project's sentencepiece model: 0 = pad, 1 = eos, 2 = unk, no bos. The decoder's start token is
the eos id (1): decoder inputs are [eos, y_1, ..., y_U] and targets [y_1, ..., y_U, eos], so no extra id is needed.
"""

import functools
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, DenseGeneral, LayerNorm, constrain, frame_mask, sinusoid
from maestro_jax.layers.pooling import CrossAttentionBlock, masked_mean
from maestro_jax.layers.transformer import TransformerBlock

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
START_ID = EOS_ID

_MASKED_LOGIT = -1e9  # as in layers/attention.py


class CausalSelfAttention(nn.Module):
    """Pre-norm causal self-attention with residual: x f32[B, U, D] -> f32[B, U, D]; position u sees 0..u only.

    layers/attention.py's MultiHeadAttention takes key masks only, so the decoder's causal mask lives here.
    """

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        model_dim = x.shape[-1]
        heads = (self.num_heads, model_dim // self.num_heads)
        y = LayerNorm(dtype=self.dtype, name="norm")(x)
        q, k, v = (
            constrain(
                DenseGeneral(heads, ("embed", "heads", "kv"), dtype=self.dtype, name=name)(y),
                ("batch", "length", "heads", "kv"),
            )
            for name in ("query", "key", "value")
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * heads[1] ** -0.5
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        weights = jax.nn.softmax(jnp.where(causal, logits, _MASKED_LOGIT), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        y = DenseGeneral(model_dim, ("heads", "kv", "embed"), axis=(-2, -1), dtype=self.dtype, name="out")(y)
        y = nn.Dropout(self.dropout_rate)(constrain(y, ("batch", "length", "embed")), deterministic=not train)
        return x + y


def teacher_forcing_pair(tokens: jax.Array, token_length: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decoder inputs and targets for a sentence followed by eos.

    tokens i32[B, U], token_length i32[B] -> (decoder_inputs i32[B, U+1] = [eos, y_1..y_U],
    targets i32[B, U+1] = [y_1..y_U, eos, pad..], target_mask bool[B, U+1] true at the U_b + 1 scored positions).
    """
    positions = jnp.arange(tokens.shape[1] + 1)[None, :]
    length = token_length[:, None]
    padded = jnp.pad(tokens, ((0, 0), (0, 1)))
    clean = jnp.where(positions < length, padded, PAD_ID)
    targets = jnp.where(positions == length, EOS_ID, clean)
    decoder_inputs = jnp.concatenate([jnp.full_like(tokens[:, :1], START_ID), clean[:, :-1]], axis=1)
    return decoder_inputs.astype(jnp.int32), targets.astype(jnp.int32), positions <= length


@gin.configurable
class SonarTextModel(nn.Module):
    """Sentence encoder + single-vector-conditioned decoder (stage 1 of SONAR distillation).

    Attributes:
      vocab_size: V, sentencepiece vocabulary size (0 = pad, 1 = eos, 2 = unk).
      model_dim: D, Transformer width of encoder and decoder.
      embedding_dim: E, size of the sentence embedding (must match the speech pooler's output for distillation).
      num_heads, mlp_dim: attention heads and FFN hidden size.
      num_encoder_layers, num_decoder_layers: block counts.
      memory_slots: M, vectors the sentence embedding is projected to for cross-attention (1 = SONAR's single vector).
      dropout_rate: dropout on attention weights and residual branches (train only; rng stream "dropout").
      dtype: compute dtype; params and logits stay f32.
    The sentence embedding dimension is named "mlp" in params (the projections are up/down projections of "embed").
    """

    vocab_size: int = 256
    model_dim: int = 256
    embedding_dim: int = 256
    num_heads: int = 4
    mlp_dim: int = 1024
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    memory_slots: int = 1
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    def setup(self):
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"SonarTextModel.model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}."
            )
        self.token_embedding = nn.Embed(
            self.vocab_size,
            self.model_dim,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        )
        block_args = dict(num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype)
        self.encoder_blocks = [
            TransformerBlock(ff_dim=self.mlp_dim, relative_position=False, **block_args)
            for _ in range(self.num_encoder_layers)
        ]
        self.encoder_norm = LayerNorm(dtype=self.dtype)
        self.sentence_projection = Dense(self.embedding_dim, ("embed", "mlp"))
        self.memory_projection = Dense(self.memory_slots * self.model_dim, ("mlp", "embed"))
        self.decoder_self_attention = [CausalSelfAttention(**block_args) for _ in range(self.num_decoder_layers)]
        self.decoder_cross_attention = [
            CrossAttentionBlock(ff_dim=self.mlp_dim, **block_args) for _ in range(self.num_decoder_layers)
        ]
        self.decoder_norm = LayerNorm(dtype=self.dtype)
        self.output_projection = Dense(self.vocab_size, ("embed", "vocab"))
        self.dropout = nn.Dropout(self.dropout_rate)

    def _embed_tokens(self, tokens, *, train: bool):
        positions = sinusoid(jnp.arange(tokens.shape[1]), self.model_dim).astype(self.dtype)
        x = constrain(self.token_embedding(tokens) + positions, ("batch", "length", "embed"))
        return self.dropout(x, deterministic=not train)

    def embed(self, tokens: jax.Array, token_length: jax.Array, *, train: bool = False) -> jax.Array:
        """Sentence embedding f32[B, E] of tokens i32[B, U] with token_length i32[B]; padding never changes it."""
        mask = frame_mask(token_length, tokens.shape[1])
        x = self._embed_tokens(tokens, train=train)
        for block in self.encoder_blocks:
            x = block(x, mask, train=train)
        pooled = masked_mean(self.encoder_norm(x).astype(jnp.float32), token_length)
        return self.sentence_projection(pooled).astype(jnp.float32)

    def decode_logits(self, embedding: jax.Array, decoder_input_tokens: jax.Array, *, train: bool = False) -> jax.Array:
        """Teacher-forced logits f32[B, U, V] for decoder_input_tokens i32[B, U] given embedding f32[B, E].

        Causal: logits at position u depend only on inputs [0, u] (and the embedding).
        """
        batch = decoder_input_tokens.shape[0]
        memory = self.memory_projection(embedding).reshape(batch, self.memory_slots, self.model_dim)
        memory = memory.astype(self.dtype)
        memory_mask = jnp.ones((batch, self.memory_slots), bool)
        x = self._embed_tokens(decoder_input_tokens, train=train)
        for self_attention, cross_attention in zip(self.decoder_self_attention, self.decoder_cross_attention):
            x = cross_attention(self_attention(x, train=train), memory, memory_mask, train=train)
        return self.output_projection(self.decoder_norm(x)).astype(jnp.float32)

    def embed_and_decode(self, tokens, token_length, decoder_input_tokens, *, train: bool = False):
        """(embedding f32[B, E] of tokens, teacher-forced logits f32[B, U', V] for decoder_input_tokens i32[B, U'])."""
        embedding = self.embed(tokens, token_length, train=train)
        return embedding, self.decode_logits(embedding, decoder_input_tokens, train=train)

    def __call__(self, batch: dict, train: bool = False):
        """Init entry point: auto-encodes batch["text"] (or batch["paired"]); touches every submodule."""
        stream = batch["text"] if "text" in batch else batch["paired"]
        decoder_inputs, _, _ = teacher_forcing_pair(stream["tokens"], stream["token_length"])
        return self.embed_and_decode(stream["tokens"], stream["token_length"], decoder_inputs, train=train)

    def greedy_decode(self, variables: dict, embedding: jax.Array, max_length: int) -> tuple[jax.Array, jax.Array]:
        """Greedy decoding from sentence embeddings f32[B, E]; call on the unbound module, jit-able.

        Returns (tokens i32[B, max_length] without eos, zero-padded; token_length i32[B] = tokens before the first
        eos, or max_length when none was produced). Each step re-runs the decoder over the fixed-size prefix buffer
        (no KV cache): O(max_length^2) positions, simple and shape-static.
        """
        batch = embedding.shape[0]
        decode = functools.partial(self.apply, variables, train=False, method=SonarTextModel.decode_logits)

        def step(position, carry):
            inputs, outputs, finished = carry
            logits = decode(embedding, inputs)
            next_token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, position, 1, keepdims=False), axis=-1)
            next_token = jnp.where(finished, PAD_ID, next_token).astype(jnp.int32)
            outputs = jax.lax.dynamic_update_index_in_dim(outputs, next_token, position, 1)
            finished = finished | (next_token == EOS_ID)
            # At the last position this overwrites an input that no later step reads.
            inputs = jax.lax.dynamic_update_index_in_dim(
                inputs, next_token, jnp.minimum(position + 1, max_length - 1), 1
            )
            return inputs, outputs, finished

        inputs = jnp.zeros((batch, max_length), jnp.int32).at[:, 0].set(START_ID)
        outputs = jnp.zeros((batch, max_length), jnp.int32)
        _, outputs, _ = jax.lax.fori_loop(0, max_length, step, (inputs, outputs, jnp.zeros((batch,), bool)))
        is_eos = outputs == EOS_ID
        token_length = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), max_length).astype(jnp.int32)
        tokens = jnp.where(jnp.arange(max_length)[None, :] < token_length[:, None], outputs, PAD_ID)
        return tokens, token_length
