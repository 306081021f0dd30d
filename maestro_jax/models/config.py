"""ModelConfig: every size and switch of SpeechTextModel in one gin-configurable, hashable dataclass."""

import dataclasses

import gin
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the speech-text model. D = model_dim is shared by the speech, text and shared towers.

    Frame rates: the frontend gives 10 ms log-mel frames; subsampling by `subsampling_factor` gives encoder frames
    (40 ms for 4), the unit of durations and of BEST-RQ labels.
    """

    vocab_size: int = 256  # sentencepiece vocabulary incl. 0 = pad/blank
    model_dim: int = 144
    num_heads: int = 4
    ff_multiplier: int = 4  # feed-forward hidden = ff_multiplier * model_dim
    conv_kernel_size: int = 15  # Conformer depthwise kernel (frames)
    conv_norm: str = "layer"  # "layer" | "batch" | "group" (batch keeps running stats in "batch_stats")
    relative_position: bool = True  # Transformer-XL relative attention; False = plain dot-product attention
    dropout_rate: float = 0.1
    # Speech tower
    num_mel_bins: int = 80
    normalize_features: bool = True  # per-utterance mean/variance normalisation of log-mel
    spec_augment: bool = True  # applied only when train=True
    spec_augment_freq_masks: int = 2
    spec_augment_max_freq_width: int = 27  # mel channels
    spec_augment_time_masks: int = 10
    spec_augment_max_time_ratio: float = 0.05  # of the utterance's frames, per mask
    subsampling: str = "conv"  # "conv" | "stack"
    subsampling_factor: int = 4
    subsampling_channels: int = 144
    num_speech_layers: int = 2
    # Text tower
    num_text_conv_layers: int = 2
    text_conv_kernel_size: int = 5
    num_text_layers: int = 2
    text_block: str = "conformer"  # "conformer" | "transformer"
    # Duration model, resampler and refiner
    num_duration_layers: int = 2
    duration_kernel_size: int = 5
    duration_activation: str = "softplus"  # "softplus" | "relu": keeps durations non-negative
    num_refiner_layers: int = 2
    refiner_kernel_size: int = 5
    # Shared tower
    num_shared_layers: int = 4
    # RNN-T decoder
    prediction_network: str = "lstm"  # "lstm" | "stateless" (the last prediction_context labels only)
    prediction_context: int = 2  # labels seen by the stateless prediction network
    prediction_embed_dim: int = 144
    prediction_layers: int = 1  # LSTM layers
    prediction_dim: int = 320  # LSTM cells per layer, or the stateless network's width
    joint_dim: int = 320
    # SONAR attention pooler
    num_pooler_layers: int = 2
    pooler_output_dim: int = 256
    # BEST-RQ
    bestrq_codebook_size: int = 1024
    bestrq_codebook_dim: int = 16
    # Memory and compute
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch" | "everything"
    scan_layers: bool = False
    dtype: str = "float32"  # compute dtype ("bfloat16" on accelerators); params stay float32

    @property
    def ff_dim(self) -> int:
        return self.ff_multiplier * self.model_dim

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def conformer_stack_kwargs(self) -> dict:
        """Arguments shared by every ConformerStack of the model."""
        return dict(
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            kernel_size=self.conv_kernel_size,
            conv_norm=self.conv_norm,
            relative_position=self.relative_position,
            dropout_rate=self.dropout_rate,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            dtype=self.compute_dtype,
        )
