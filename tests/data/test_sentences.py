"""Sentence generator and A/B vocabulary split: determinism and the per-split vocabulary rules (no audio)."""

import collections
import random
import re

import pytest

from maestro_jax.data import sentences
from maestro_jax.data.synthetic import SIZES

COUNTS = dict(SIZES["tiny"].counts)


@pytest.fixture(scope="module")
def vocabulary():
    return sentences.split_vocabulary(seed=0)


@pytest.fixture(scope="module")
def texts(vocabulary):
    return sentences.plan_texts(COUNTS, vocabulary, seed=0, min_words=3, max_words=8)


def test_lexicon_is_large_with_unique_surface_forms(vocabulary):
    lexicon = sentences.build_lexicon()
    forms = [word for lexeme in lexicon for word in set(lexeme.forms)] + list(sentences.FUNCTION_WORDS)
    assert len(forms) == len(set(forms)), collections.Counter(forms).most_common(3)
    assert len(set(forms)) >= 600
    assert all(re.fullmatch(r"[a-z]+", word) for word in forms)
    assert vocabulary.a | vocabulary.b == set(forms)


def test_split_puts_15_to_20_percent_of_content_words_in_b(vocabulary):
    assert not vocabulary.a & vocabulary.b
    assert set(sentences.FUNCTION_WORDS) <= vocabulary.a
    content = len(vocabulary.a) - len(sentences.FUNCTION_WORDS) + len(vocabulary.b)
    assert 0.15 <= len(vocabulary.b) / content <= 0.20
    for lexeme in vocabulary.b_lexemes:  # inflections stay together
        assert set(lexeme.forms) <= vocabulary.b


def test_split_and_texts_are_deterministic_given_seed(vocabulary, texts):
    assert sentences.split_vocabulary(seed=0) == vocabulary
    assert sentences.plan_texts(COUNTS, vocabulary, seed=0, min_words=3, max_words=8) == texts
    other = sentences.split_vocabulary(seed=1)
    assert other.b != vocabulary.b
    assert (
        sentences.plan_texts(COUNTS, other, seed=1, min_words=3, max_words=8)["paired_train"] != texts["paired_train"]
    )


def test_counts_format_and_lengths(texts):
    assert {split: len(items) for split, items in texts.items()} == COUNTS
    assert len(texts["text_train"]) >= 10 * len(texts["paired_train"])
    for items in texts.values():
        for text in items:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", text), text
            assert 3 <= len(text.split()) <= 8, text


def test_no_sentence_repeats_across_or_within_splits(texts):
    everything = [text for items in texts.values() for text in items]
    assert len(everything) == len(set(everything))


@pytest.mark.parametrize("split", ["paired_train", "dev", "test_in_vocab"])
def test_a_only_splits_use_only_vocabulary_a(texts, vocabulary, split):
    assert sentences.SPLIT_VOCABULARY[split] == "A"
    for text in texts[split]:
        assert sentences.words_outside(text, vocabulary.a) == [], text


def test_text_only_vocab_test_has_a_b_word_in_every_sentence(texts, vocabulary):
    for text in texts["test_text_only_vocab"]:
        assert vocabulary.b.intersection(text.split()), text


@pytest.mark.parametrize("split", ["speech_train", "text_train"])
def test_unpaired_splits_draw_from_a_and_b(texts, vocabulary, split):
    words = [word for text in texts[split] for word in text.split()]
    assert not sentences.words_outside(" ".join(words), vocabulary.a | vocabulary.b)
    b_share = sum(word in vocabulary.b for word in words) / len(words)
    assert 0.02 < b_share < 0.3, b_share


def test_text_train_covers_most_of_b(vocabulary):
    rng = random.Random(0)
    generator = sentences.SentenceGenerator(sentences.build_lexicon(), rng, 3, 12)
    seen = {word for _ in range(20000) for word in generator.sentence().split()}
    assert len(vocabulary.b - seen) / len(vocabulary.b) < 0.05


def test_articles_agree_with_next_word():
    generator = sentences.SentenceGenerator(sentences.build_lexicon(), random.Random(3), 3, 12)
    for _ in range(3000):
        words = generator.sentence().split()
        for article, following in zip(words, words[1:]):
            if article in ("a", "an"):
                assert (article == "an") == (following[0] in "aeiou" or following == "honest"), words


def test_bad_length_bounds_are_rejected():
    with pytest.raises(ValueError, match="min_words"):
        sentences.SentenceGenerator(sentences.build_lexicon(), random.Random(0), min_words=9, max_words=4)
