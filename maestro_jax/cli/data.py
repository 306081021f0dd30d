"""`maestro-data`: corpus preparation commands.

maestro-data synth --size tiny --out corpora/tiny [--seed 0] [--workers N] [--vocab_size 256] [--force]
"""

import argparse
import os
import sys
from pathlib import Path

from maestro_jax.data import synthetic


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="maestro-data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="build the synthetic espeak-ng speech-text corpus")
    synth.add_argument("--size", choices=sorted(synthetic.SIZES), required=True, help="corpus size")
    synth.add_argument("--out", type=Path, required=True, help="corpus directory (created)")
    synth.add_argument("--seed", type=int, default=0, help="seed for sentences, vocabulary split and voices")
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    synth.add_argument("--vocab_size", type=int, default=256, help="sentencepiece pieces (special ids included)")
    synth.add_argument("--force", action="store_true", help="rebuild even if DIR/summary.json matches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.force and (summary := synthetic.cached_summary(args.out, args.size, args.seed, args.vocab_size)):
        print(f"{args.out} is up to date (pass --force to rebuild)")
        print(synthetic.format_summary(summary))
        return 0
    try:
        summary = synthetic.build_corpus(
            args.out, args.size, seed=args.seed, workers=args.workers, vocab_size=args.vocab_size, force=args.force
        )
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"maestro-data synth: {error}", file=sys.stderr)
        return 1
    print(synthetic.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
