"""Import a torchaudio.models.Conformer state dict (as NumPy arrays; torch is never imported) into Flax.

`from_torchaudio_conformer` infers the sizes from the arrays and returns a `TorchaudioConformer` (a thin wrapper over
ConformerStack with torchaudio's semantics) and its variables. Mapping, per layer i under "conformer_layers.{i}."
(torch Linear weights are [out, in], Conv1d weights [out, in / groups, kernel]):

    ffn{1,2}.sequential.{0,1,4}                  -> feed_forward_{1,2}/{LayerNorm_0, hidden, output}
    self_attn_layer_norm                         -> attention_norm
    self_attn.in_proj_{weight,bias} ([3D, D])    -> attention/{query, key, value} (heads = contiguous D/H slices)
    self_attn.out_proj                           -> attention/out
    conv_module.layer_norm                       -> convolution/LayerNorm_0
    conv_module.sequential.{0, 2, 3, 5}          -> convolution/{pointwise_in, depthwise, conv_norm, pointwise_out}
    final_layer_norm                             -> final_norm
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from maestro_jax.layers.common import Dtype, frame_mask
from maestro_jax.layers.conformer import ConformerStack

_LAYER_KEY = re.compile(r"^conformer_layers\.(\d+)\.")


class TorchaudioConformer(nn.Module):
    """torchaudio.models.Conformer in Flax: (inputs f32[B, T, D], lengths i32[B]) -> (outputs f32[B, T, D], lengths).

    Plain (absolute-position-free) attention with padded keys masked; padded frames are not isolated inside the
    blocks, as in torchaudio, so they influence valid frames through the depthwise conv (and group-norm statistics).
    Outputs are 0 at padded frames (torchaudio leaves them arbitrary). Conv norm: BatchNorm (running statistics in
    collection "batch_stats") or, with use_group_norm, GroupNorm with one group.
    """

    num_layers: int
    num_heads: int
    ffn_dim: int
    kernel_size: int
    use_group_norm: bool = False
    convolution_first: bool = False
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, lengths: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        stack = ConformerStack(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            ff_dim=self.ffn_dim,
            kernel_size=self.kernel_size,
            conv_norm="group" if self.use_group_norm else "batch",
            conv_norm_groups=1,
            relative_position=False,
            dropout_rate=self.dropout_rate,
            convolution_first=self.convolution_first,
            isolate_padding=False,
            dtype=self.dtype,
            name="conformer",
        )
        return stack(inputs, frame_mask(lengths, inputs.shape[1]), train=train), lengths


class _StateDictReader:
    """Fetches torchaudio arrays by key as float32, remembering which keys were used."""

    def __init__(self, state_dict: dict[str, np.ndarray]):
        self.state_dict = state_dict
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state_dict

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.state_dict:
            raise ValueError(
                f"torchaudio Conformer state dict is missing key {key!r} (needed for the layout inferred from the "
                f"other keys). Pass the full `Conformer(...).state_dict()`, without a prefix such as 'conformer.'."
            )
        self.used.add(key)
        return np.asarray(self.state_dict[key], np.float32)


def _infer_sizes(read: _StateDictReader) -> dict:
    """num_layers, input_dim, ffn_dim, kernel_size and use_group_norm from the keys and the shapes of layer 0."""
    layer_ids = {int(m.group(1)) for key in read.state_dict if (m := _LAYER_KEY.match(key))}
    if not layer_ids:
        seen = sorted(read.state_dict)[:5]
        raise ValueError(
            f"no 'conformer_layers.<i>.' keys in the state dict (first keys: {seen}); expected the state_dict() of "
            f"torchaudio.models.Conformer. Strip any outer prefix (e.g. 'encoder.') from the keys first."
        )
    first = "conformer_layers.0."
    in_proj_shape = read(first + "self_attn.in_proj_weight").shape
    input_dim = in_proj_shape[1]
    if in_proj_shape != (3 * input_dim, input_dim):
        raise ValueError(f"{first}self_attn.in_proj_weight has shape {in_proj_shape}; expected [3 D, D].")
    return dict(
        num_layers=max(layer_ids) + 1,
        input_dim=input_dim,
        ffn_dim=read(first + "ffn1.sequential.1.weight").shape[0],
        kernel_size=read(first + "conv_module.sequential.2.weight").shape[-1],
        use_group_norm=(first + "conv_module.sequential.3.running_mean") not in read,
    )


def _linear(read: _StateDictReader, key: str) -> dict[str, np.ndarray]:
    return {"kernel": read(key + ".weight").T, "bias": read(key + ".bias")}


def _norm(read: _StateDictReader, key: str) -> dict[str, np.ndarray]:
    return {"scale": read(key + ".weight"), "bias": read(key + ".bias")}


def _attention(read: _StateDictReader, key: str, num_heads: int) -> dict:
    """torch MultiheadAttention (packed [3D, D] in-projection) -> per-projection DenseGeneral kernels [D, H, D/H]."""
    weight, bias = read(key + ".in_proj_weight"), read(key + ".in_proj_bias")
    dim = weight.shape[1]
    heads = (num_heads, dim // num_heads)
    params = {}
    for name, w, b in zip(("query", "key", "value"), np.split(weight, 3), np.split(bias, 3)):
        params[name] = {"kernel": w.T.reshape(dim, *heads), "bias": b.reshape(heads)}
    out = _linear(read, key + ".out_proj")
    params["out"] = {"kernel": out["kernel"].reshape(*heads, dim), "bias": out["bias"]}
    return params


def _feed_forward(read: _StateDictReader, key: str) -> dict:
    return {
        "LayerNorm_0": _norm(read, key + ".sequential.0"),
        "hidden": _linear(read, key + ".sequential.1"),
        "output": _linear(read, key + ".sequential.4"),
    }


def _convolution(read: _StateDictReader, key: str, use_group_norm: bool) -> tuple[dict, dict]:
    """(params, batch_stats) of the conv module: pointwise Conv1d [out, in, 1] -> Dense [in, out], depthwise
    [C, 1, K] -> nn.Conv [K, 1, C]."""
    pointwise_in, pointwise_out = (read(f"{key}.sequential.{i}.weight")[:, :, 0] for i in (0, 5))
    params = {
        "LayerNorm_0": _norm(read, key + ".layer_norm"),
        "pointwise_in": {"kernel": pointwise_in.T, "bias": read(key + ".sequential.0.bias")},
        "depthwise": {
            "kernel": read(key + ".sequential.2.weight").transpose(2, 1, 0),
            "bias": read(key + ".sequential.2.bias"),
        },
        "conv_norm": _norm(read, key + ".sequential.3"),
        "pointwise_out": {"kernel": pointwise_out.T, "bias": read(key + ".sequential.5.bias")},
    }
    if use_group_norm:
        return params, {}
    norm = key + ".sequential.3"
    if norm + ".num_batches_tracked" in read:
        read.used.add(norm + ".num_batches_tracked")  # only steers training-time momentum; eval never reads it
    return params, {"conv_norm": {"mean": read(norm + ".running_mean"), "var": read(norm + ".running_var")}}


def _layer(read: _StateDictReader, index: int, num_heads: int, use_group_norm: bool) -> tuple[dict, dict]:
    key = f"conformer_layers.{index}"
    convolution, convolution_stats = _convolution(read, key + ".conv_module", use_group_norm)
    params = {
        "feed_forward_1": _feed_forward(read, key + ".ffn1"),
        "attention_norm": _norm(read, key + ".self_attn_layer_norm"),
        "attention": _attention(read, key + ".self_attn", num_heads),
        "convolution": convolution,
        "feed_forward_2": _feed_forward(read, key + ".ffn2"),
        "final_norm": _norm(read, key + ".final_layer_norm"),
    }
    return params, ({"convolution": convolution_stats} if convolution_stats else {})


def _check_against_module(converted: dict, expected: dict) -> None:
    """Every variable of the Flax module is converted, with the shape the module expects."""
    converted_flat = traverse_util.flatten_dict(converted, sep="/")
    expected_flat = traverse_util.flatten_dict(expected, sep="/")
    for path, leaf in expected_flat.items():
        if path not in converted_flat:
            raise ValueError(f"conversion produced no value for Flax variable {path}; the key mapping is incomplete.")
        if converted_flat[path].shape != leaf.shape:
            raise ValueError(
                f"Flax variable {path} expects shape {leaf.shape}, the torchaudio weights give "
                f"{converted_flat[path].shape}; the state dict's layers disagree in size with layer 0."
            )
    extra = sorted(set(converted_flat) - set(expected_flat))
    if extra:
        raise ValueError(f"conversion produced variables the Flax module does not have: {extra}.")


def from_torchaudio_conformer(
    state_dict: dict[str, np.ndarray],
    *,
    num_heads: int,
    convolution_first: bool = False,
    dropout_rate: float = 0.0,
    dtype: Dtype = jnp.float32,
) -> tuple[TorchaudioConformer, dict]:
    """A Flax module and variables {"params", ["batch_stats"]} equal to a torchaudio Conformer in eval mode.

    state_dict: `torchaudio.models.Conformer(...).state_dict()` with values as NumPy arrays
      (e.g. `{k: v.numpy() for k, v in sd.items()}`).
    num_heads: the torchaudio model's `num_heads` (not recoverable from the weights).
    convolution_first: torchaudio's flag of that name (not recoverable from the weights either).
    dropout_rate: for fine-tuning with `train=True`; eval outputs do not depend on it.
    Sizes (input_dim D, ffn_dim, num_layers, depthwise kernel size, BatchNorm vs GroupNorm) come from the arrays.
    `module.apply(variables, inputs f32[B, T, D], lengths i32[B])` -> (outputs f32[B, T, D], lengths); outputs match
    torchaudio at valid frames and are 0 at padded ones. Variables are plain float32 arrays (logical axes for sharding:
    `nn.get_partition_spec(jax.eval_shape(module.init, ...))`).
    Raises ValueError naming the key for a missing, unexpected or mis-shaped entry.
    """
    read = _StateDictReader(state_dict)
    sizes = _infer_sizes(read)
    if sizes["input_dim"] % num_heads:
        raise ValueError(
            f"input_dim {sizes['input_dim']} (from the weights) is not divisible by num_heads={num_heads}."
        )
    module = TorchaudioConformer(
        num_layers=sizes["num_layers"],
        num_heads=num_heads,
        ffn_dim=sizes["ffn_dim"],
        kernel_size=sizes["kernel_size"],
        use_group_norm=sizes["use_group_norm"],
        convolution_first=convolution_first,
        dropout_rate=dropout_rate,
        dtype=dtype,
    )
    params, batch_stats = {}, {}
    for i in range(sizes["num_layers"]):
        params[f"layer_{i}"], stats = _layer(read, i, num_heads, sizes["use_group_norm"])
        if stats:
            batch_stats[f"layer_{i}"] = stats
    unexpected = sorted(set(state_dict) - read.used)
    if unexpected:
        raise ValueError(
            f"unexpected key(s) in the torchaudio Conformer state dict: {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}; the inferred layout ({sizes}) has no place for them. "
            f"Is it a torchaudio.models.Conformer state dict, with no extra modules?"
        )
    variables = {"params": {"conformer": params}}
    if batch_stats:
        variables["batch_stats"] = {"conformer": batch_stats}

    dummy = jnp.zeros((1, 1, sizes["input_dim"]), jnp.float32), jnp.ones((1,), jnp.int32)
    expected = nn.meta.unbox(jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), *dummy))
    _check_against_module(variables, expected)
    return module, jax.tree_util.tree_map(jnp.asarray, variables)
