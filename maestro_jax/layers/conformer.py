"""Conformer block (Gulati et al. 2020) and a stack of blocks with optional rematerialisation and nn.scan.

Block equations on x [B, T, D] with valid-frame mask m [B, T]:
    x = x + 1/2 FFN(x)                       FFN = LN -> Dense(D, F) -> swish -> Dense(F, D)
    x = x + MHSA(LN(x), keys masked by m)    relative (Transformer-XL) or plain
    x = x + Conv(x)                          LN -> Dense(D, 2D) -> GLU -> zero padding -> depthwise conv k -> norm
                                             -> swish -> Dense(D, D)
    x = x + 1/2 FFN(x)
    y = LN(x), 0 at padded frames

isolate_padding=False reproduces torchaudio.models.Conformer instead: padded frames are not zeroed before the
depthwise conv nor left out of the conv norm's statistics, so their values reach valid frames (attention keys are
still masked); the stack then zeroes padded frames only at its output. convolution_first=True moves the conv module
ahead of attention (torchaudio's option of that name).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.layers.common import Dense, Dtype, LayerNorm, constrain, depthwise_conv_1d, masked_fill
from maestro_jax.layers.transformer import FeedForward, TransformerBlock, self_attention_branch

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}
CONV_NORMS = ("layer", "batch", "group")


def _channel_norm(kind: str, num_groups: int, train: bool, dtype: Dtype, name: str):
    """The conv module's norm over channels ("mlp" axis): a callable (y [B, T, C], mask [B, T] or None) -> [B, T, C].

    With mask None, batch/group statistics include every frame (padding too).
    """
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("mlp",))
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))
    if kind == "layer":
        norm = LayerNorm("mlp", dtype=dtype, name=name)
        return lambda y, mask: norm(y)
    if kind == "batch":
        # Statistics over valid frames only, so padding never reaches a valid output (running stats in "batch_stats").
        norm = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.99,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            bias_init=bias_init,
            name=name,
        )
        return lambda y, mask: norm(y, mask=_channel_mask(mask, y))
    if kind == "group":
        norm = nn.GroupNorm(
            num_groups=num_groups,
            epsilon=1e-5,
            dtype=dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            bias_init=bias_init,
            name=name,
        )
        return lambda y, mask: norm(y, mask=_channel_mask(mask, y))
    raise ValueError(f"unknown conv_norm {kind!r}; choose one of {CONV_NORMS} (gin: ModelConfig.conv_norm).")


def _channel_mask(mask: jax.Array | None, y: jax.Array) -> jax.Array | None:
    return None if mask is None else jnp.broadcast_to(mask[..., None], y.shape)


class DepthwiseConv(nn.Module):
    """Centred depthwise conv over time plus bias, x [B, T, D] -> [B, T, D] (`depthwise_conv_1d`). Its params are
    those of flax's nn.Conv(D, (K,), feature_group_count=D), kernel [K, 1, D] and bias [D], with the same init, so
    checkpoints of either load into the other."""

    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv", None, "mlp")),
            (self.kernel_size, 1, dim),
            jnp.float32,
        )
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)), (dim,))
        return depthwise_conv_1d(x.astype(self.dtype), kernel[:, 0]) + bias.astype(self.dtype)


class ConvolutionModule(nn.Module):
    """Conformer convolution module on x [B, T, D] with mask [B, T]; returns the residual branch [B, T, D]."""

    kernel_size: int
    norm: str = "layer"
    num_groups: int = 8
    dropout_rate: float = 0.0
    isolate_padding: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"conv kernel_size must be odd for centred padding; got {self.kernel_size}.")
        dim = x.shape[-1]
        y = LayerNorm(dtype=self.dtype)(x)
        y = Dense(2 * dim, ("embed", "mlp"), dtype=self.dtype, name="pointwise_in")(y)
        y = nn.glu(y, axis=-1)
        if self.isolate_padding:
            y = masked_fill(y, mask)  # padded frames must not leak into valid ones through the kernel
        y = DepthwiseConv(self.kernel_size, dtype=self.dtype, name="depthwise")(y)
        norm_mask = mask if self.isolate_padding else None
        y = _channel_norm(self.norm, self.num_groups, train, self.dtype, "conv_norm")(y, norm_mask)
        y = nn.swish(y)
        y = Dense(dim, ("mlp", "embed"), dtype=self.dtype, name="pointwise_out")(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return constrain(y, ("batch", "length", "embed"))


class ConformerBlock(nn.Module):
    """One Conformer block on x [B, T, D] with bool mask [B, T] (equations in the module docstring)."""

    num_heads: int
    ff_dim: int
    kernel_size: int
    conv_norm: str = "layer"
    relative_position: bool = True
    dropout_rate: float = 0.0
    conv_norm_groups: int = 8
    convolution_first: bool = False
    isolate_padding: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"model dim {dim} is not divisible by num_heads={self.num_heads}; change either.")
        convolution = ConvolutionModule(
            self.kernel_size,
            self.conv_norm,
            num_groups=self.conv_norm_groups,
            dropout_rate=self.dropout_rate,
            isolate_padding=self.isolate_padding,
            dtype=self.dtype,
            name="convolution",
        )
        x = x + 0.5 * FeedForward(self.ff_dim, self.dropout_rate, self.dtype, name="feed_forward_1")(x, train=train)
        if self.convolution_first:
            x = x + convolution(x, mask, train=train)
        x = x + self_attention_branch(self, x, mask, train=train)
        if not self.convolution_first:
            x = x + convolution(x, mask, train=train)
        x = x + 0.5 * FeedForward(self.ff_dim, self.dropout_rate, self.dtype, name="feed_forward_2")(x, train=train)
        x = constrain(LayerNorm(dtype=self.dtype, name="final_norm")(x), ("batch", "length", "embed"))
        return masked_fill(x, mask) if self.isolate_padding else x


def _block_class(block_type: str, remat_policy: str, *, scanned: bool = False):
    if block_type not in ("conformer", "transformer"):
        raise ValueError(f"unknown block_type {block_type!r}; choose 'conformer' or 'transformer'.")
    block = ConformerBlock if block_type == "conformer" else TransformerBlock
    if remat_policy == "none":
        return block
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {remat_policy!r}; choose 'none' or one of {sorted(REMAT_POLICIES)}.")
    # Inside nn.scan the loop already stops XLA from merging recomputation away, so CSE prevention only costs time.
    return nn.remat(block, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scanned, static_argnums=(3,))


class _ScannedBlock(nn.Module):
    """One scan step: carry x [B, T, D] -> (block(x), None); `train` is an attribute so scan never traces it."""

    block_type: str
    remat_policy: str
    block_kwargs: dict
    train: bool

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array):
        return _block_class(self.block_type, self.remat_policy, scanned=True)(**self.block_kwargs, name="block")(
            x, mask, self.train
        ), None


class ConformerStack(nn.Module):
    """`num_layers` Conformer (or Transformer) blocks on x [B, T, D] with mask [B, T]; padded frames come out 0.

    remat_policy: "none", "full", "dots", "dots_no_batch" or "everything" (jax.checkpoint policy per block).
    scan_layers: stack the blocks' params on a leading "layers" axis and run them with nn.scan (one compile per stack).
    conv_norm_groups, convolution_first, isolate_padding: Conformer blocks only (see the module docstring).
    """

    num_layers: int
    num_heads: int
    ff_dim: int
    kernel_size: int = 15
    conv_norm: str = "layer"
    relative_position: bool = True
    dropout_rate: float = 0.0
    block_type: str = "conformer"
    remat_policy: str = "none"
    scan_layers: bool = False
    conv_norm_groups: int = 8
    convolution_first: bool = False
    isolate_padding: bool = True
    dtype: Dtype = jnp.float32

    def _block_kwargs(self) -> dict:
        kwargs = dict(
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            relative_position=self.relative_position,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
        )
        if self.block_type == "conformer":
            kwargs.update(
                kernel_size=self.kernel_size,
                conv_norm=self.conv_norm,
                conv_norm_groups=self.conv_norm_groups,
                convolution_first=self.convolution_first,
                isolate_padding=self.isolate_padding,
            )
        return kwargs

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        if self.isolate_padding:
            x = masked_fill(x, mask)
        if self.scan_layers and self.num_layers:
            scanned = nn.scan(
                _ScannedBlock,
                variable_axes={"params": 0, "batch_stats": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(self.block_type, self.remat_policy, self._block_kwargs(), train, name="layers")(x, mask)
        else:
            block = _block_class(self.block_type, self.remat_policy)
            for i in range(self.num_layers):
                x = block(**self._block_kwargs(), name=f"layer_{i}")(x, mask, train)
        return x if self.isolate_padding else masked_fill(x, mask)
