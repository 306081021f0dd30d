"""Does a trained RNN-T listen yet? Per-token NLL of each transcript given its own audio and given that audio
time-reversed (same length and spectra, no word order), at each checkpoint of a run.

    .venv/bin/python bench/acoustic_reliance.py --model_dir DIR [--split paired_train] [--steps 500,1000]
        [--batches 4] [--batch_size 16]

A transducer whose encoder is ignored (its prediction network acting as a language model over the transcripts) scores
both alike; the gap in nats per token is what the encoder's evidence is worth. On a small paired set the prediction
network can memorise the transcripts long before the encoder helps, and greedy decoding then prints the same few
words for every utterance: this gap shows that phase, and its end, before WER moves.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np


def reverse_valid(waveform: np.ndarray, waveform_length: np.ndarray) -> np.ndarray:
    """Each row's valid samples in reverse order; padding stays where it is."""
    reversed_ = np.array(waveform, copy=True)
    for row, length in enumerate(np.asarray(waveform_length)):
        reversed_[row, :length] = waveform[row, :length][::-1]
    return reversed_


def transcript_nll(model, variables, batch: dict) -> tuple[float, float]:
    """(summed RNN-T NLL of the batch's transcripts given its audio, their token count), inference mode."""
    from maestro_jax import inference
    from maestro_jax.objectives.common import transducer_nll
    from maestro_jax.objectives.transducer import TransducerLoss

    h, h_length = inference.encode_for_decoding(
        model, variables, jnp.asarray(batch["waveform"]), jnp.asarray(batch["waveform_length"])
    )
    tokens, token_length = jnp.asarray(batch["tokens"]), jnp.asarray(batch["token_length"])
    nll, valid, _, _ = transducer_nll(
        model, variables, h, h_length, tokens, token_length, loss=TransducerLoss(kind="full")
    )  # the model's own NLL, whatever loss it was trained with
    return float(nll.sum()), float(jnp.where(valid, token_length, 0).sum())


def reliance(model, variables, batches) -> dict[str, float]:
    """{"own", "reversed", "gap"}: per-token NLL given each utterance's audio and its reversal, and their difference."""
    totals = np.zeros(3)
    for batch in batches:
        own, tokens = transcript_nll(model, variables, batch)
        flipped = dict(batch, waveform=reverse_valid(batch["waveform"], batch["waveform_length"]))
        reversed_, _ = transcript_nll(model, variables, flipped)
        totals += (own, reversed_, tokens)
    own, reversed_ = totals[:2] / totals[2]
    return {"own": own, "reversed": reversed_, "gap": reversed_ - own}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a maestro-train model directory")
    parser.add_argument("--split", default="paired_train", help="synthetic-corpus split scored")
    parser.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default: every saved one)")
    parser.add_argument("--batches", type=int, default=4, help="batches of the split scored per checkpoint")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)

    from maestro_jax import checkpoints, evaluation, inference

    saved = checkpoints.checkpoint_steps(os.path.join(args.model_dir, "checkpoints"))
    steps = [int(s) for s in args.steps.split(",")] if args.steps else saved
    print(f"{args.model_dir} on {args.split} ({args.batches} x {args.batch_size} utterances)")
    print("| step | NLL/token, own audio | NLL/token, reversed audio | gap (nats/token) |\n|---|---|---|---|")
    for step in steps:
        restored = inference.load_model_dir(args.model_dir, checkpoint_step=step)
        batches, _ = evaluation.split_batches(args.split, batch_size=args.batch_size, needs_text=True)
        batches = (batch for _, batch in zip(range(args.batches), batches))
        result = reliance(restored.model, restored.variables, batches)
        print(f"| {step} | {result['own']:.3f} | {result['reversed']:.3f} | {result['gap']:.3f} |", flush=True)
        jax.clear_caches()
    return 0


if __name__ == "__main__":
    sys.exit(main())
