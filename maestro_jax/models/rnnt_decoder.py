"""RNN-T decoder: prediction network, encoder/prediction projections and the joint output.

Prediction networks (ModelConfig.prediction_network):
  "lstm"       embedding -> prediction_layers LSTMs: conditions on the whole label history.
  "stateless"  embedding of the last `prediction_context` labels, concatenated -> Dense(prediction_dim) -> ReLU
               (Ghodsi et al. 2020, "Rnn-transducer with stateless prediction network"): cheaper to run and unable
               to memorise whole transcripts (on the toy corpus that alone did not make the encoder learn sooner:
               BENCHMARKS.md).

logits[b, t, u] = joint_output(joint_params, enc_proj[b, t] + pred_proj[b, u]) with
joint_output(params, z) = tanh(z) @ kernel + bias (f32[..., J] -> f32[..., V]). Token 0 is blank and start symbol.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, Dtype, frame_mask, masked_fill
from maestro_jax.models.config import ModelConfig

JOINT_OUTPUT = "joint_output"
PREDICTION_NETWORKS = ("lstm", "stateless")


def joint_output(joint_params: dict, z: jax.Array) -> jax.Array:
    """Pure joint output: tanh(z) @ kernel + bias in float32; z f32[..., J] -> logits f32[..., V]."""
    params = nn.meta.unbox(joint_params)
    kernel = params["kernel"].astype(jnp.float32)
    return jnp.tanh(z.astype(jnp.float32)) @ kernel + params["bias"].astype(jnp.float32)


class LSTMLayer(nn.Module):
    """One LSTM layer (gates i, f, g, o) usable on a sequence [B, U, I] -> [B, U, H] or one step at a time."""

    input_dim: int
    hidden_dim: int
    dtype: Dtype = jnp.float32

    def setup(self):
        gates = 4 * self.hidden_dim
        init = nn.initializers.lecun_normal()
        self.input_kernel = self.param(
            "input_kernel", nn.with_logical_partitioning(init, ("embed", "mlp")), (self.input_dim, gates), jnp.float32
        )
        self.recurrent_kernel = self.param(
            "recurrent_kernel",
            nn.with_logical_partitioning(nn.initializers.orthogonal(), ("embed", "mlp")),
            (self.hidden_dim, gates),
            jnp.float32,
        )
        self.bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)), (gates,), jnp.float32
        )

    def _cell(self, carry: tuple[jax.Array, jax.Array], gate_input: jax.Array):
        cell, hidden = carry
        gates = gate_input + hidden @ self.recurrent_kernel.astype(self.dtype)
        i, f, g, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        hidden = (jax.nn.sigmoid(o) * jnp.tanh(cell)).astype(self.dtype)
        return (cell, hidden), hidden

    def initial_carry(self, batch_size: int) -> tuple[jax.Array, jax.Array]:
        """Zero (cell f32[B, H], hidden [B, H])."""
        shape = (batch_size, self.hidden_dim)
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, self.dtype)

    def _gate_input(self, x: jax.Array) -> jax.Array:
        return x.astype(self.dtype) @ self.input_kernel.astype(self.dtype) + self.bias.astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, U, I] -> hidden states [B, U, H], starting from the zero state."""
        gate_input = jnp.swapaxes(self._gate_input(x), 0, 1)  # time-major for lax.scan
        _, hidden = jax.lax.scan(self._cell, self.initial_carry(x.shape[0]), gate_input)
        return jnp.swapaxes(hidden, 0, 1)

    def step(self, carry, x: jax.Array):
        """One step: x [B, I] -> (carry, hidden [B, H])."""
        return self._cell(carry, self._gate_input(x))


class RNNTDecoder(nn.Module):
    """Prediction network (embedding, LSTMs or a stateless context, projection to J), encoder projection (D -> J),
    joint output (J -> V)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        dtype = cfg.compute_dtype
        if cfg.prediction_network not in PREDICTION_NETWORKS:
            raise ValueError(
                f"ModelConfig.prediction_network={cfg.prediction_network!r}; choose one of {PREDICTION_NETWORKS}."
            )
        if cfg.prediction_network == "stateless" and cfg.prediction_context < 1:
            raise ValueError(
                f"ModelConfig.prediction_context={cfg.prediction_context}; a stateless predictor needs at least 1."
            )
        self.embedding = nn.Embed(
            cfg.vocab_size,
            cfg.prediction_embed_dim,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        )
        if cfg.prediction_network == "lstm":
            input_dims = [cfg.prediction_embed_dim] + [cfg.prediction_dim] * (cfg.prediction_layers - 1)
            self.lstms = [LSTMLayer(dim, cfg.prediction_dim, dtype) for dim in input_dims]
        else:
            self.context = Dense(cfg.prediction_dim, ("embed", "mlp"), dtype=dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.prediction_proj = Dense(cfg.joint_dim, ("embed", "mlp"), dtype=dtype)
        self.encoder_proj = Dense(cfg.joint_dim, ("embed", "mlp"), dtype=dtype)
        self.joint_output = Dense(cfg.vocab_size, ("mlp", "vocab"), dtype=jnp.float32, name=JOINT_OUTPUT)

    def predict(self, tokens: jax.Array, token_length: jax.Array, *, train: bool) -> jax.Array:
        """tokens i32[B, U] -> pred_proj f32[B, U+1, J] for [start=0, tokens...]; 0 beyond token_length + 1."""
        inputs = jnp.pad(tokens, ((0, 0), (1, 0)))
        if self.config.prediction_network == "lstm":
            x = self.embedding(inputs)
            for lstm in self.lstms:
                x = self.dropout(lstm(x), deterministic=not train)
        else:
            width = self.config.prediction_context
            history = jnp.pad(inputs, ((0, 0), (width - 1, 0)))  # 0 = start before the first label
            windows = jnp.stack([history[:, k : k + inputs.shape[1]] for k in range(width)], axis=-1)
            x = self.dropout(self._stateless(windows), deterministic=not train)
        p = self.prediction_proj(x).astype(jnp.float32)
        return masked_fill(p, frame_mask(token_length + 1, inputs.shape[1]))

    def _stateless(self, windows: jax.Array) -> jax.Array:
        """windows i32[..., C] (oldest label first) -> ReLU(Dense(concatenated embeddings)) [..., prediction_dim]."""
        x = self.embedding(windows)
        return nn.relu(self.context(x.reshape(*windows.shape[:-1], -1)))

    def project_encoder(self, h: jax.Array) -> jax.Array:
        """h f32[B, T, D] -> enc_proj f32[B, T, J]."""
        return self.encoder_proj(h.astype(self.config.compute_dtype)).astype(jnp.float32)

    def joint(self, z: jax.Array) -> jax.Array:
        """z f32[..., J] (enc_proj + pred_proj) -> logits f32[..., V]; equals joint_output(joint_params, z)."""
        return self.joint_output(jnp.tanh(z.astype(jnp.float32)))

    def initial_carry(self, batch_size: int) -> tuple:
        """Decoding state before the first label: one zero (cell, hidden) pair per LSTM layer, or for the stateless
        predictor the previous prediction_context - 1 labels (all start) as i32[B, C - 1]."""
        if self.config.prediction_network == "stateless":
            return (jnp.zeros((batch_size, self.config.prediction_context - 1), jnp.int32),)
        return tuple(lstm.initial_carry(batch_size) for lstm in self.lstms)

    def step(self, carry: tuple, token: jax.Array) -> tuple[tuple, jax.Array]:
        """One prediction step on token i32[B] (0 = start/blank) -> (carry, pred_proj f32[B, J])."""
        if self.config.prediction_network == "stateless":
            windows = jnp.concatenate([carry[0], token[:, None].astype(jnp.int32)], axis=1)
            return (windows[:, 1:],), self.prediction_proj(self._stateless(windows)).astype(jnp.float32)
        x = self.embedding(token)
        new_carry = []
        for lstm, layer_carry in zip(self.lstms, carry, strict=True):
            layer_carry, x = lstm.step(layer_carry, x)
            new_carry.append(layer_carry)
        return tuple(new_carry), self.prediction_proj(x).astype(jnp.float32)
