"""Where the toy table's test_text_only_vocab errors sit: A words, and B words whose pieces were or were not heard.

    .venv/bin/python bench/text_only_words.py [--workdir runs/text_injection] [--corpus_dir corpora/synthetic_medium]
        [--systems supervised,maestro,astra]

Reads WORKDIR/<system>/hypotheses.jsonl (written by bench/text_injection.py), aligns each test_text_only_vocab
hypothesis to its reference with jiwer, and prints per system the share of reference words recognised (aligned
"equal"), split into A words (heard in paired speech), B words whose sentencepiece pieces all occur in paired_train
transcripts, and B words with a piece no paired transcript has: no system can emit such a piece from what it heard.
"""

import argparse
import collections
import json
import os
import sys

import jiwer
import sentencepiece

from maestro_jax.data import corpus_layout
from maestro_jax.evaluation import normalize_transcript

GROUPS = ("A", "B, pieces heard", "B, a piece unheard")


def word_groups(corpus_dir: str) -> dict[str, str]:
    """{B word: its group} for the corpus's B words (every other word is group "A")."""
    with open(os.path.join(corpus_dir, corpus_layout.VOCAB_FILE)) as f:
        b_words = set(json.load(f)["B"])
    processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(corpus_dir, corpus_layout.TOKENIZER_FILE))
    with open(os.path.join(corpus_dir, "raw", "paired_train.jsonl")) as f:
        heard = {piece for line in f for piece in processor.encode(json.loads(line)["text"], out_type=str)}
    return {
        word: GROUPS[1] if set(processor.encode(word, out_type=str)) <= heard else GROUPS[2] for word in sorted(b_words)
    }


def recognised_by_group(rows: list[dict], groups: dict[str, str]) -> dict[str, tuple[int, int]]:
    """{group: (reference words aligned equal, reference words)} over rows of {"reference", "hypothesis"}."""
    counts = collections.defaultdict(lambda: [0, 0])
    for row in rows:
        reference, hypothesis = normalize_transcript(row["reference"]), normalize_transcript(row["hypothesis"])
        if not reference:
            continue
        alignment = jiwer.process_words(reference, hypothesis or "<empty>")
        words = alignment.references[0]
        for chunk in alignment.alignments[0]:
            for index in range(chunk.ref_start_idx, chunk.ref_end_idx):
                group = groups.get(words[index], GROUPS[0])
                counts[group][0] += chunk.type == "equal"
                counts[group][1] += 1
    return {group: tuple(counts[group]) for group in GROUPS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/text_injection")
    parser.add_argument("--corpus_dir", default="corpora/synthetic_medium")
    parser.add_argument("--systems", default="supervised,maestro,astra")
    args = parser.parse_args(argv)
    groups = word_groups(args.corpus_dir)
    per_group = collections.Counter(groups.values())
    print(f"B words: {len(groups)} ({', '.join(f'{n} {g}' for g, n in per_group.items())})")
    print("| system | " + " | ".join(f"{g} recognised" for g in GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for system in args.systems.split(","):
        with open(os.path.join(args.workdir, system, "hypotheses.jsonl")) as f:
            rows = [row for row in map(json.loads, f) if row["source"] == "test_text_only_vocab"]
        counts = recognised_by_group(rows, groups)
        cells = [f"{100 * hit / max(total, 1):.1f} % of {total}" for hit, total in counts.values()]
        print(f"| {system} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
