"""Decoding throughput on random problems: utterances/s for RNN-T greedy / beam and CTC greedy / prefix beam.

Usage: .venv/bin/python bench/decoding.py [--batch 8] [--frames 100] [--beam 4] [--repeats 5]
The toy transducer is an LSTM predictor and a tanh joint with random weights; a blank bias makes roughly one frame in
five emit a label, as a trained model would, so the loops do realistic amounts of work.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import decoding


def toy_transducer(vocab: int, hidden: int, joint: int, blank_bias: float, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 5)
    embed = jax.random.normal(keys[0], (vocab, hidden)) * 0.5
    gates = jax.random.normal(keys[1], (2 * hidden, 4 * hidden)) / np.sqrt(2 * hidden)
    to_joint = jax.random.normal(keys[2], (hidden, joint)) / np.sqrt(hidden)
    joint_params = {
        "out": jax.random.normal(keys[3], (joint, vocab)) * 2.0 / np.sqrt(joint),
        "bias": jnp.zeros((vocab,)).at[0].set(blank_bias),
    }

    def predictor_init(batch_size):
        return (jnp.zeros((batch_size, hidden)), jnp.zeros((batch_size, hidden)))

    def predictor_step(carry, token):
        h, c = carry
        i, f, g, o = jnp.split(jnp.concatenate([embed[token], h], axis=-1) @ gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h @ to_joint

    def joint_output_fn(params, z):
        return jnp.tanh(z) @ params["out"] + params["bias"]

    return dict(
        predictor_init=predictor_init,
        predictor_step=predictor_step,
        joint_output_fn=joint_output_fn,
        joint_params=joint_params,
    )


def throughput(name: str, fn, args, batch: int, repeats: int) -> None:
    start = time.perf_counter()
    outputs = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        outputs = jax.block_until_ready(fn(*args))
    per_call = (time.perf_counter() - start) / repeats
    mean_len = float(np.mean(np.asarray(outputs[1])))
    print(
        f"{name:<28} {batch / per_call:9.1f} utt/s  ({per_call * 1e3:8.1f} ms/batch, first call {compile_s:5.1f} s,"
        f" mean output length {mean_len:5.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--joint", type=int, default=128)
    parser.add_argument("--max_output_length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = toy_transducer(args.vocab, args.hidden, args.joint, blank_bias=6.0)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.normal(size=(args.batch, args.frames, args.joint)), jnp.float32)
    lengths = jnp.asarray(rng.integers(args.frames // 2, args.frames + 1, size=args.batch), jnp.int32)
    ctc_logits = jnp.asarray(rng.normal(size=(args.batch, args.frames, args.vocab)) * 2.0, jnp.float32)
    ctc_logits = ctc_logits.at[..., 0].add(6.0)
    print(
        f"device {jax.devices()[0].device_kind}, B={args.batch}, T={args.frames}, V={args.vocab}, "
        f"J={args.joint}, L={args.max_output_length}"
    )

    greedy = jax.jit(functools.partial(decoding.rnnt_greedy_decode, **model, max_output_length=args.max_output_length))
    beam = jax.jit(
        functools.partial(
            decoding.rnnt_beam_search, **model, beam_size=args.beam, max_output_length=args.max_output_length
        )
    )
    ctc_greedy = jax.jit(decoding.ctc_greedy_decode)
    ctc_beam = jax.jit(
        functools.partial(
            decoding.ctc_prefix_beam_search, beam_size=args.beam, max_output_length=args.max_output_length
        )
    )
    throughput("rnnt greedy (4 sym/frame)", greedy, (enc, lengths), args.batch, args.repeats)
    throughput(f"rnnt beam {args.beam} (ALSD)", beam, (enc, lengths), args.batch, args.repeats)
    throughput("ctc greedy", ctc_greedy, (ctc_logits, lengths), args.batch, args.repeats)
    throughput(f"ctc prefix beam {args.beam}", ctc_beam, (ctc_logits, lengths), args.batch, args.repeats)


if __name__ == "__main__":
    main()
