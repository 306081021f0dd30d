"""The Conformer's depthwise convolution on CPU: XLA's grouped convolution (feature_group_count = D) against K
shifted multiply-adds (maestro_jax.layers.common.depthwise_conv_1d), forward and forward + backward, with the
relative difference of their loss and gradients.

    taskset -c 1 .venv/bin/python bench/depthwise_conv.py [--batch 8] [--frames 113] [--dim 144] [--taps 15]

Defaults: the toy recipe's Conformer block input, 8 utterances of 4.5 s at 40 ms frames (113 frames), D 144, K 15.
"""

import argparse

import jax
import jax.numpy as jnp

from maestro_jax import metrics
from maestro_jax.layers.common import depthwise_conv_1d


def grouped(x, kernel):
    """x [B, T, D], kernel [K, D] -> [B, T, D] by one convolution with a group per channel, zero-padded K // 2."""
    half = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x,
        kernel[:, None, :],
        (1,),
        [(half, half)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=x.shape[-1],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=113)
    parser.add_argument("--dim", type=int, default=144)
    parser.add_argument("--taps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.frames, args.dim))
    kernel = jax.random.normal(jax.random.key(1), (args.taps, args.dim)) / args.taps**0.5
    results = {}
    print(f"x [{args.batch}, {args.frames}, {args.dim}], K {args.taps}")
    print("| depthwise conv | forward ms | forward + backward (input and kernel) ms |")
    print("|---|---|---|")
    for name, conv in (("grouped convolution", grouped), ("shifted multiply-adds", depthwise_conv_1d)):

        def loss(x, kernel, conv=conv):
            return jnp.sum(jnp.tanh(conv(x, kernel)) ** 2)

        forward, both = jax.jit(loss), jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        ms = [1e3 * metrics.median_call_seconds(fn, x, kernel, repeats=args.repeats) for fn in (forward, both)]
        results[name] = both(x, kernel)
        print(f"| {name} | {ms[0]:.2f} | {ms[1]:.2f} |")
    (want, want_grads), (got, got_grads) = results.values()
    worst = max(float(jnp.abs(g - w).max() / jnp.abs(w).max()) for g, w in zip(got_grads, want_grads))
    print(
        f"loss relative difference {abs(float(got - want)) / abs(float(want)):.1e}, "
        f"gradients' largest difference / largest gradient {worst:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
