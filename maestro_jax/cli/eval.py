"""`maestro-eval`: WER/CER of a checkpoint or an export on synthetic-corpus splits and JSONL manifests.

maestro-eval --model_dir DIR | --export_dir DIR [--split test_in_vocab ...] [--manifest file.jsonl ...]
    [--decoder rnnt_greedy|rnnt_beam|ctc_greedy] [--beam_size 4] [--ilm_fusion_weight 0] [--length_reward 0]
    [--out hyps.jsonl] [--checkpoint_step N] [--use_ema]
    [--skip_bad]   (skip and report unusable manifest rows instead of stopping at the first)
maestro-eval --model_dir DIR --retrieval [--split test_in_vocab ...]   (SONAR speech->text retrieval error)
"""

import argparse
import json
import sys

from maestro_jax import evaluation, inference
from maestro_jax.data.audio_files import AudioReadError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="maestro-eval", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="a maestro-train model directory (its operative config rebuilds the model)")
    source.add_argument("--export_dir", help="a maestro-export output directory")
    parser.add_argument(
        "--split",
        action="append",
        default=[],
        help=f"synthetic-corpus split (repeatable; default {' '.join(evaluation.DEFAULT_SPLITS)})",
    )
    parser.add_argument("--manifest", action="append", default=[], help="NeMo JSONL manifest (repeatable)")
    parser.add_argument("--decoder", choices=inference.DECODERS, default="rnnt_greedy")
    parser.add_argument("--beam_size", type=int, default=4, help="hypotheses kept by rnnt_beam")
    parser.add_argument(
        "--ilm_fusion_weight",
        type=float,
        default=0.0,
        help="rnnt_beam: add this weight times the internal LM's log-probability of each label (shallow fusion with "
        "the prediction network's LM; 0: none)",
    )
    parser.add_argument(
        "--length_reward", type=float, default=0.0, help="rnnt_beam: added per label (offsets the fusion's deletions)"
    )
    parser.add_argument("--out", help="write hypotheses here as JSONL {source, id, reference, hypothesis}")
    parser.add_argument("--checkpoint_step", type=int, help="checkpoint step to evaluate (default: the latest)")
    parser.add_argument("--use_ema", action="store_true", help="evaluate the EMA params")
    parser.add_argument("--batch_size", type=int, default=16, help="utterances per decoding batch")
    parser.add_argument(
        "--skip_bad",
        action="store_true",
        help="skip manifest rows that cannot be scored (bad JSON, missing keys or files, unreadable, empty, NaN/Inf "
        "or too long audio), list them by line, file and reason, and score the rest",
    )
    parser.add_argument(
        "--retrieval",
        action="store_true",
        help="score a sonar_speech model by speech->text retrieval error (xsim) on --split instead of WER",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON after the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.retrieval:
        return retrieval_main(args)
    try:
        results = evaluation.evaluate(
            model_dir=args.model_dir,
            export_dir=args.export_dir,
            splits=args.split,
            manifests=args.manifest,
            decoder=args.decoder,
            beam_size=args.beam_size,
            ilm_fusion_weight=args.ilm_fusion_weight,
            length_reward=args.length_reward,
            out=args.out,
            checkpoint_step=args.checkpoint_step,
            use_ema=args.use_ema,
            batch_size=args.batch_size,
            skip_bad=args.skip_bad,
        )
    except (FileNotFoundError, ValueError, AudioReadError) as error:
        print(f"maestro-eval: {error}", file=sys.stderr)
        return 1
    print(evaluation.format_table(results))
    if args.json:
        print(json.dumps(results, indent=1))
    if args.out:
        print(f"hypotheses: {args.out}")
    return 0


def retrieval_main(args: argparse.Namespace) -> int:
    if args.model_dir is None or args.manifest:
        print("maestro-eval: --retrieval scores a --model_dir on corpus --split(s) only.", file=sys.stderr)
        return 1
    try:
        results = evaluation.retrieval_errors(
            model_dir=args.model_dir,
            splits=args.split or evaluation.DEFAULT_SPLITS,
            checkpoint_step=args.checkpoint_step,
            use_ema=args.use_ema,
            batch_size=args.batch_size,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"maestro-eval: {error}", file=sys.stderr)
        return 1
    print(evaluation.format_retrieval_table(results))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
