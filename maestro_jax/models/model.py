"""SpeechTextModel: speech, text and shared towers with RNN-T, CTC, pooler and BEST-RQ heads (docs/CONTRACTS.md).

Call a method with `model.apply(variables, ..., method="encode_speech")`. Variables: "params" (trained) and
"frozen" (BEST-RQ projection and codebook); "batch_stats" too when conv_norm = "batch".
"""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.models.bestrq import BestRQQuantizer
from maestro_jax.models.config import ModelConfig
from maestro_jax.models.duration import DurationModel, Refiner, resample_by_duration
from maestro_jax.models.heads import AttentionPooler, BestRQHead, CTCHead
from maestro_jax.models.rnnt_decoder import JOINT_OUTPUT, RNNTDecoder, joint_output
from maestro_jax.models.towers import SharedTower, SpeechTower, TextTower


class SpeechTextModel(nn.Module):
    """The joint speech-text model. Shapes: B batch, N samples, T0 10 ms frames, T encoder frames, U tokens."""

    config: ModelConfig

    # Pure fn(joint_params, z f32[..., J]) -> logits f32[..., V] for losses and decoders.
    joint_output_fn = staticmethod(joint_output)

    def setup(self):
        cfg = self.config
        self.speech_tower = SpeechTower(cfg)
        self.text_tower = TextTower(cfg)
        self.duration_model = DurationModel(cfg)
        self.refiner = Refiner(cfg)
        self.shared_tower = SharedTower(cfg)
        self.rnnt_decoder = RNNTDecoder(cfg)
        self.ctc_head = CTCHead(cfg)
        self.pooler = AttentionPooler(cfg)
        self.bestrq_head = BestRQHead(cfg)
        self.bestrq = BestRQQuantizer(
            cfg.bestrq_codebook_size, cfg.bestrq_codebook_dim, cfg.subsampling_factor, cfg.num_mel_bins
        )

    @staticmethod
    def joint_params(params: dict) -> dict:
        """The joint output's subtree of variables["params"] (kernel f32[J, V], bias f32[V])."""
        return params["rnnt_decoder"][JOINT_OUTPUT]

    def __call__(self, batch: dict, train: bool = False) -> dict:
        """Runs every submodule once (for `init`) on a batch with any of the "paired", "speech", "text" streams."""
        speech = batch.get("paired") or batch.get("speech")
        text = batch.get("paired") or batch.get("text")
        if speech is None or text is None:
            raise ValueError(
                f"SpeechTextModel.__call__ needs a stream with waveforms and one with tokens; got streams "
                f"{sorted(batch)}. Pass a 'paired' stream, or 'speech' and 'text'."
            )
        features, feature_length = frontend.log_mel_spectrogram(speech["waveform"], speech["waveform_length"])
        e_s, frame_length = self.encode_speech_features(features, feature_length, train=train)
        labels, _ = self.bestrq_targets(features, feature_length)
        tokens, token_length = text["tokens"], text["token_length"]
        e_t, _ = self.encode_text(tokens, token_length, train=train)
        durations = self.predict_durations(e_t, token_length, train=train)
        x, x_length = self.upsample_text(
            e_t, jnp.round(durations).astype(jnp.int32), token_length, max_frames=e_s.shape[1], train=train
        )
        h, _ = self.shared_encode(e_s, frame_length, train=train)
        h_text, _ = self.shared_encode(x, x_length, train=train)
        enc_proj = self.rnnt_encoder_proj(h)
        pred_proj = self.rnnt_predict(tokens, token_length, train=train)
        # One frame of the joint is enough to create its params without a [B, T, U+1, V] tensor.
        logits = self.rnnt_decoder.joint(enc_proj[:, :1, None, :] + pred_proj[:, None, :, :])
        return {
            "e_s": e_s,
            "e_t": e_t,
            "h": h,
            "h_text": h_text,
            "rnnt_logits_first_frame": logits,
            "ctc_logits": self.ctc_logits(h),
            "pooled": self.pool(e_s, frame_length, train=train),
            "bestrq_labels": labels,
            "bestrq_logits": self.bestrq_logits(h),
        }

    def encode_speech(
        self, waveform: jax.Array, waveform_length: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """waveform f32[B, N] at 16 kHz -> (e_s f32[B, T, D], frame_length i32[B]) via the log-mel frontend."""
        features, feature_length = frontend.log_mel_spectrogram(waveform, waveform_length)
        return self.encode_speech_features(features, feature_length, train=train)

    def encode_speech_features(
        self, features: jax.Array, feature_length: jax.Array, *, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """Raw log-mel f32[B, T0, 80] -> (e_s f32[B, T0 // 4, D], frame_length); normalised per utterance inside."""
        return self.speech_tower(features, feature_length, train=train)

    def encode_text(self, tokens: jax.Array, token_length: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """tokens i32[B, U] -> (e_t f32[B, U, D], token_length)."""
        return self.text_tower(tokens, token_length, train=train)

    def predict_durations(self, e_t: jax.Array, token_length: jax.Array, *, train: bool) -> jax.Array:
        """e_t f32[B, U, D] -> f32[B, U] non-negative encoder frames per token, 0 at padding."""
        return self.duration_model(e_t, token_length, train=train)

    def upsample_text(
        self, e_t: jax.Array, durations: jax.Array, token_length: jax.Array, *, max_frames: int, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """`resample_by_duration` (durations i32[B, U]) then the refiner -> (x f32[B, max_frames, D], frame_length)."""
        x, frame_length = resample_by_duration(e_t, durations, token_length, max_frames=max_frames)
        return self.refiner(x, frame_length, train=train), frame_length

    def shared_encode(self, x: jax.Array, length: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """x f32[B, T, D] from either modality -> (h f32[B, T, D], length)."""
        return self.shared_tower(x, length, train=train)

    def rnnt_predict(self, tokens: jax.Array, token_length: jax.Array, *, train: bool) -> jax.Array:
        """tokens i32[B, U] -> pred_proj f32[B, U+1, J] for [blank/start, tokens...]."""
        return self.rnnt_decoder.predict(tokens, token_length, train=train)

    def rnnt_encoder_proj(self, h: jax.Array) -> jax.Array:
        """h f32[B, T, D] -> enc_proj f32[B, T, J]."""
        return self.rnnt_decoder.project_encoder(h)

    def rnnt_predictor_init(self, batch_size: int) -> tuple:
        """Zero prediction-network state for decoding `batch_size` utterances."""
        return self.rnnt_decoder.initial_carry(batch_size)

    def rnnt_predictor_step(self, carry: tuple, token: jax.Array) -> tuple[tuple, jax.Array]:
        """(carry, token i32[B]) -> (carry, pred_proj f32[B, J]); token 0 = start/blank."""
        return self.rnnt_decoder.step(carry, token)

    def ctc_logits(self, h: jax.Array) -> jax.Array:
        """h f32[B, T, D] -> f32[B, T, V] (blank = 0)."""
        return self.ctc_head(h)

    def pool(self, h: jax.Array, length: jax.Array, *, train: bool = False) -> jax.Array:
        """Attention pooler: (h f32[B, T, D], length) -> f32[B, E]."""
        return self.pooler(h, length, train=train)

    def bestrq_logits(self, h: jax.Array) -> jax.Array:
        """Shared-tower output h f32[B, T, D] -> f32[B, T, K] logits over the BEST-RQ codebook."""
        return self.bestrq_head(h)

    def bestrq_targets(self, features: jax.Array, feature_length: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Raw log-mel f32[B, T0, 80] -> (labels i32[B, T0 // 4], label_length) at the encoder frame rate."""
        return self.bestrq(features, feature_length)


@gin.configurable
def make_model(config: ModelConfig | None = None) -> SpeechTextModel:
    """The SpeechTextModel for `config` (default: ModelConfig() with gin bindings, e.g. from gin/models/*.gin)."""
    return SpeechTextModel(config if config is not None else ModelConfig())
