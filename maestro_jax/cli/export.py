"""`maestro-export`: params-only export with tokenizer, operative config and jax.export'ed transcribe/embed functions.

maestro-export --model_dir DIR --out EXPORT_DIR [--average_last K] [--checkpoint_step N] [--use_ema]
    [--bucket_seconds 5 10 20 30] [--max_output_length 128] [--platforms cpu cuda tpu]
"""

import argparse
import sys

from maestro_jax import export


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="maestro-export", description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a maestro-train model directory")
    parser.add_argument("--out", required=True, help="export directory (a previous export there is replaced)")
    parser.add_argument(
        "--average_last", type=int, default=1, help="average the params of the last K checkpoints (default 1: none)"
    )
    parser.add_argument("--checkpoint_step", type=int, help="the newest step to export (default: the latest)")
    parser.add_argument("--use_ema", action="store_true", help="export the EMA params")
    parser.add_argument(
        "--bucket_seconds",
        type=float,
        nargs="+",
        default=list(export.DEFAULT_BUCKET_SECONDS),
        help="padded input lengths in seconds; one exported function pair per bucket",
    )
    parser.add_argument("--max_output_length", type=int, default=128, help="most tokens per transcript")
    parser.add_argument("--platforms", nargs="+", help="jax.export platforms (default: the current backend)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out_dir = export.export_model_dir(
            args.model_dir,
            args.out,
            average_last=args.average_last,
            checkpoint_step=args.checkpoint_step,
            use_ema=args.use_ema,
            bucket_seconds=args.bucket_seconds,
            max_output_length=args.max_output_length,
            platforms=args.platforms,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"maestro-export: {error}", file=sys.stderr)
        return 1
    print(f"exported to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
