"""Speech tower (features -> encoder frames), text tower (tokens -> token-rate vectors) and the shared tower."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax import frontend
from maestro_jax.layers.common import LayerNorm, constrain, frame_mask, masked_fill
from maestro_jax.layers.conformer import ConformerStack
from maestro_jax.layers.subsampling import make_subsampling
from maestro_jax.models.config import ModelConfig


def prepare_features(
    cfg: ModelConfig, features: jax.Array, feature_length: jax.Array, *, spec_augment_rng: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """What the speech tower does to log-mel f32[B, T0, M] before subsampling: lengths clipped to T0, per-utterance
    normalisation (cfg.normalize_features) and SpecAugment with `spec_augment_rng` (None: none, as at evaluation).
    No parameters: bench/train_step.py times it on its own."""
    feature_length = jnp.minimum(feature_length, features.shape[1]).astype(jnp.int32)
    if cfg.normalize_features:
        features = frontend.normalize_features(features, feature_length)
    if spec_augment_rng is not None:
        features = frontend.spec_augment(
            spec_augment_rng,
            features,
            feature_length,
            num_freq_masks=cfg.spec_augment_freq_masks,
            max_freq_width=cfg.spec_augment_max_freq_width,
            num_time_masks=cfg.spec_augment_time_masks,
            max_time_ratio=cfg.spec_augment_max_time_ratio,
        )
    return features, feature_length


class SpeechTower(nn.Module):
    """log-mel f32[B, T0, M] -> `prepare_features` (normalise; SpecAugment when train) -> subsampling -> Conformer.

    Returns (e_s f32[B, T, D], frame_length i32[B]) with T = T0 // subsampling_factor; 0 at padded frames.
    SpecAugment draws from the "dropout" rng stream.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, features: jax.Array, feature_length: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if features.shape[-1] != cfg.num_mel_bins:
            raise ValueError(
                f"speech tower expects {cfg.num_mel_bins} mel bins; got features of shape {features.shape}. "
                "Set ModelConfig.num_mel_bins to match the frontend."
            )
        rng = self.make_rng("dropout") if train and cfg.spec_augment else None
        features, feature_length = prepare_features(cfg, features, feature_length, spec_augment_rng=rng)
        x, length = make_subsampling(
            cfg.subsampling,
            cfg.model_dim,
            factor=cfg.subsampling_factor,
            channels=cfg.subsampling_channels,
            dtype=cfg.compute_dtype,
            name="subsampling",
        )(features, feature_length)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        x = ConformerStack(cfg.num_speech_layers, **cfg.conformer_stack_kwargs(), name="conformer")(
            x, frame_mask(length, x.shape[1]), train=train
        )
        return x.astype(jnp.float32), length


class TextTower(nn.Module):
    """tokens i32[B, U] -> embedding -> conv layers -> Conformer/Transformer layers -> (e_t f32[B, U, D], length).

    Token-rate output with the speech tower's dim D, so modality matching compares like with like; 0 at padding.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, token_length: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        dtype = cfg.compute_dtype
        mask = frame_mask(token_length, tokens.shape[1])
        x = nn.Embed(
            cfg.vocab_size,
            cfg.model_dim,
            dtype=dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            name="embedding",
        )(tokens)
        x = constrain(x, ("batch", "length", "embed"))
        for i in range(cfg.num_text_conv_layers):
            y = nn.Conv(
                cfg.model_dim,
                (cfg.text_conv_kernel_size,),
                padding="SAME",
                dtype=dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv", "embed", "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
                name=f"conv_{i}",
            )(masked_fill(x, mask))
            y = nn.relu(LayerNorm("mlp", dtype=dtype, name=f"conv_norm_{i}")(y))
            x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=not train)
        stack_kwargs = cfg.conformer_stack_kwargs()
        x = ConformerStack(cfg.num_text_layers, block_type=cfg.text_block, **stack_kwargs, name="layers")(
            x, mask, train=train
        )
        return x.astype(jnp.float32), token_length


class SharedTower(nn.Module):
    """Conformer stack shared by both modalities: (x f32[B, T, D], length) -> (h f32[B, T, D], length)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, length: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        mask = frame_mask(length, x.shape[1])
        x = x.astype(cfg.compute_dtype)
        stack = ConformerStack(cfg.num_shared_layers, **cfg.conformer_stack_kwargs(), name="conformer")
        x = stack(x, mask, train=train)
        return x.astype(jnp.float32), length
