"""`maestro-data`: corpus preparation commands.

maestro-data synth --size tiny --out corpora/tiny [--seed 0] [--workers N] [--vocab_size 256] [--force]
maestro-data tokenizer --text FILE... [--manifest FILE...] --vocab_size N --out DIR [--lowercase]
maestro-data prepare librispeech --manual_dir DIR --out DIR
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
    spm = commands.add_parser("tokenizer", help="train a sentencepiece model on text files and manifest transcripts")
    spm.add_argument("--text", nargs="*", default=[], help="plain-text files, one sentence per line (.gz: gzip)")
    spm.add_argument("--manifest", nargs="*", default=[], help="JSONL manifests whose `text` fields are used too")
    spm.add_argument("--vocab_size", type=int, required=True, help="pieces, the 3 special ids included")
    spm.add_argument("--out", type=Path, required=True, help="directory for spm.model and tokenizer_summary.json")
    spm.add_argument("--lowercase", action="store_true", help="lower-case first (set manifest_streams.lowercase too)")
    spm.add_argument("--max_sentences", type=int, default=1_000_000, help="train on a uniform sample of this many")
    spm.add_argument("--character_coverage", type=float, default=0.9999, help="share of characters given pieces")
    prepare = commands.add_parser("prepare", help="write manifests for a corpus already on disk (nothing downloaded)")
    prepare.add_argument("corpus", choices=["librispeech"])
    prepare.add_argument("--manual_dir", type=Path, required=True, help="the tarballs and/or extracted folders")
    prepare.add_argument("--out", type=Path, required=True, help="directory for the manifests (created)")
    return parser.parse_args(argv)


def synth(args: argparse.Namespace) -> int:
    if not args.force and (summary := synthetic.cached_summary(args.out, args.size, args.seed, args.vocab_size)):
        print(f"{args.out} is up to date (pass --force to rebuild)")
        print(synthetic.format_summary(summary))
        return 0
    summary = synthetic.build_corpus(
        args.out, args.size, seed=args.seed, workers=args.workers, vocab_size=args.vocab_size, force=args.force
    )
    print(synthetic.format_summary(summary))
    return 0


def train_tokenizer(args: argparse.Namespace) -> int:
    from maestro_jax.data import tokenizer

    summary = tokenizer.train_from_files(
        args.out,
        text_files=args.text,
        manifests=args.manifest,
        vocab_size=args.vocab_size,
        lowercase=args.lowercase,
        max_sentences=args.max_sentences,
        character_coverage=args.character_coverage,
    )
    print(
        f"wrote {summary['model']}: {summary['vocab_size']} pieces (0 = pad/blank, 1 = eos, 2 = unk) from "
        f"{summary['sentences_used']} of {summary['sentences_seen']} sentences ({summary['empty_lines_skipped']} "
        f"empty lines skipped); on all of them: character coverage {100 * summary['character_coverage']:.3f}%, "
        f"unk rate {100 * summary['unk_rate']:.3f}% of tokens, {summary['tokens_per_sentence']:.1f} tokens/sentence"
    )
    return 0


def prepare_corpus(args: argparse.Namespace) -> int:
    from maestro_jax.data import librispeech_files

    print(librispeech_files.format_summary(librispeech_files.prepare(args.manual_dir, args.out)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = {"synth": synth, "tokenizer": train_tokenizer, "prepare": prepare_corpus}[args.command]
    try:
        return command(args)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"maestro-data {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
