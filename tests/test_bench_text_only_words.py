"""bench/text_only_words.py: recognised words per group against hand counts; the groups cover the corpus's B words."""

import importlib.util
import json
import os

import sentencepiece

from maestro_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("text_only_words", os.path.join(REPO, "bench", "text_only_words.py"))
text_only_words = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(text_only_words)
A, HEARD, UNHEARD = text_only_words.GROUPS


def test_recognised_words_are_counted_per_group_by_alignment():
    groups = {"zebra": HEARD, "oslo": UNHEARD}
    rows = [
        {"reference": "the zebra ran to oslo", "hypothesis": "the zebra ran to"},  # oslo deleted
        {"reference": "a zebra sat", "hypothesis": "a zero sat"},  # zebra substituted
        {"reference": "Oslo!", "hypothesis": "oslo"},  # the normaliser applies to both sides
    ]
    assert text_only_words.recognised_by_group(rows, groups) == {A: (5, 5), HEARD: (1, 2), UNHEARD: (1, 2)}


def test_groups_split_exactly_the_b_words_by_the_pieces_heard_in_paired_speech():
    corpus = synthetic.cached_corpus("tiny")
    groups = text_only_words.word_groups(str(corpus))
    assert set(groups) == set(json.loads((corpus / "vocab.json").read_text())["B"])
    processor = sentencepiece.SentencePieceProcessor(model_file=str(corpus / "spm" / "spm.model"))
    with open(corpus / "raw" / "paired_train.jsonl") as f:
        heard = {p for line in f for p in processor.encode(json.loads(line)["text"], out_type=str)}
    for word, group in groups.items():
        assert (group == HEARD) == all(p in heard for p in processor.encode(word, out_type=str)), word
