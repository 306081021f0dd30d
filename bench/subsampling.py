"""The speech tower's conv subsampling on CPU: forward vs forward + backward, and two reformulations of its strided
convolutions (space-to-depth, im2col) timed beside XLA's own, with the relative difference of their loss from it.

    taskset -c 1 .venv/bin/python bench/subsampling.py [--batch 8] [--frames 450] [--channels 64] [--repeats 10]

The toy recipe's batch: 8 utterances of 4.5 s (450 log-mel frames of 80 bins), 64 channels, D 144.
"""

import argparse

import jax
import jax.numpy as jnp

from maestro_jax import metrics
from maestro_jax.layers.subsampling import ConvSubsampling

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
PADDING = ((1, 0), (1, 1))  # as ConvSubsampling: time padded one frame on the left only


def median_ms(fn, *args, repeats: int) -> float:
    return 1e3 * metrics.median_call_seconds(fn, *args, repeats=repeats)


def strided(h, kernel):
    """XLA's stride-2 3x3 convolution, h f32[B, T, F, C] -> [B, T // 2 (+1), F // 2, O]."""
    return jax.lax.conv_general_dilated(h, kernel, (2, 2), PADDING, dimension_numbers=DIMENSIONS)


def space_to_depth(h, kernel):
    """The same convolution as a stride-1 2x2 convolution over 2x2 blocks of h (4x the channels)."""
    _, frames, freq, channels = h.shape
    h = jnp.pad(h, ((0, 0), (1, (frames + 1) % 2), (1, 1 + (freq + 2) % 2), (0, 0)))
    b, t2, f2, c = h.shape
    blocks = h.reshape(b, t2 // 2, 2, f2 // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, t2 // 2, f2 // 2, 4 * c)
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # [4, 4, C, O]: taps 3 of each block are zero
    folded = padded.reshape(2, 2, 2, 2, channels, -1).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * channels, -1)
    out = jax.lax.conv_general_dilated(blocks, folded, (1, 1), "VALID", dimension_numbers=DIMENSIONS)
    return out[:, : (frames - 2) // 2 + 1, : (freq - 1) // 2 + 1]


def im2col(h, kernel):
    """The same convolution as 3x3 patches (conv_general_dilated_patches) and one matmul."""
    patches = jax.lax.conv_general_dilated_patches(h, (3, 3), (2, 2), PADDING, dimension_numbers=DIMENSIONS)
    flat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, kernel.shape[-1])  # patches order: (C, kh, kw)
    return jnp.einsum("btfp,po->btfo", patches, flat)


def strided_taps(h):
    """The 9 inputs of a stride-2 3x3 tap (i, j) as strided slices of the padded h: 9 x [B, T // 2 (+1), F // 2, C]."""
    frames, freq = h.shape[1], h.shape[2]
    out_frames, out_freq = (frames - 2) // 2 + 1, (freq - 1) // 2 + 1
    padded = jnp.pad(h, ((0, 0), *PADDING, (0, 0)))
    return [padded[:, i : i + 2 * out_frames - 1 : 2, j : j + 2 * out_freq - 1 : 2] for i in range(3) for j in range(3)]


def shifted_matmuls(h, kernel):
    """The same convolution as a sum over its 9 taps of a strided slice of h times that tap's [C, O] kernel."""
    taps = strided_taps(h)
    return sum(jnp.einsum("btfc,co->btfo", tap, kernel[k // 3, k % 3]) for k, tap in enumerate(taps))


def sliced_im2col(h, kernel):
    """The same convolution as the 9 strided slices concatenated over channels and one [9 C, O] matmul."""
    patches = jnp.concatenate(strided_taps(h), axis=-1)  # channel order (i, j, c), as kernel's HWI
    return jnp.einsum("btfp,po->btfo", patches, kernel.reshape(-1, kernel.shape[-1]))


def two_stages(conv):
    def loss(k1, k2, features):
        h = jax.nn.relu(conv(features[..., None], k1))
        return jnp.sum(conv(h, k2) ** 2)

    return loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=450)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    features = jax.random.normal(jax.random.key(0), (args.batch, args.frames, 80))
    length = jnp.full((args.batch,), args.frames, jnp.int32)
    module = ConvSubsampling(144, args.channels, 4)
    variables = module.init(jax.random.key(1), features, length)

    def module_loss(variables, features):
        return jnp.sum(module.apply(variables, features, length)[0] ** 2)

    r = args.repeats
    print(f"ConvSubsampling forward: {median_ms(jax.jit(module_loss), variables, features, repeats=r):.1f} ms")
    grad = jax.jit(jax.grad(module_loss))
    print(f"ConvSubsampling forward + backward (params): {median_ms(grad, variables, features, repeats=r):.1f} ms")
    k1, k2 = (variables["params"][f"conv_{i}"]["kernel"].value for i in range(2))
    reference = jax.jit(two_stages(strided))(k1, k2, features)
    print("| convolutions | forward ms | forward + backward (kernels) ms | relative difference of the loss |")
    print("|---|---|---|---|")
    for name, conv in (
        ("XLA strided", strided),
        ("space-to-depth", space_to_depth),
        ("im2col", im2col),
        ("shifted matmuls", shifted_matmuls),
        ("im2col by strided slices", sliced_im2col),
    ):
        loss = two_stages(conv)
        forward = median_ms(jax.jit(loss), k1, k2, features, repeats=r)
        both = median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))), k1, k2, features, repeats=r)
        diff = abs(float(jax.jit(loss)(k1, k2, features)) - float(reference)) / abs(float(reference))
        print(f"| {name} | {forward:.1f} | {both:.1f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
