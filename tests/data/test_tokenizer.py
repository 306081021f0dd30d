"""Tokenizer: special ids, round trip through seqio without unk on every split, deterministic training."""

import json

import pytest
import sentencepiece

from maestro_jax.data import synthetic, tokenizer


@pytest.fixture(scope="module")
def split_texts(tiny_corpus):
    texts = {}
    for split in synthetic.SPLITS:
        with open(tiny_corpus / "raw" / f"{split}.jsonl") as f:
            texts[split] = [json.loads(line)["text"] for line in f]
    return texts


def test_special_ids(tiny_corpus):
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tiny_corpus / "spm" / "spm.model"))
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    assert processor.get_piece_size() == 256


def test_seqio_round_trip_without_unk_on_every_split(tiny_corpus, split_texts):
    vocabulary = tokenizer.make_vocabulary(tiny_corpus / "spm" / "spm.model")
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id, vocabulary.vocab_size) == (0, 1, 2, 256)
    for split, texts in split_texts.items():
        for text in texts[:8]:
            ids = vocabulary.encode(text)
            assert tokenizer.UNK_ID not in ids and tokenizer.PAD_ID not in ids, (split, text)
            assert vocabulary.decode(ids) == text
    all_text = [text for texts in split_texts.values() for text in texts]
    assert tokenizer.count_unknown_pieces(tiny_corpus / "spm" / "spm.model", all_text) == 0


def test_unknown_characters_do_map_to_unk(tiny_corpus):
    model = tiny_corpus / "spm" / "spm.model"
    assert tokenizer.count_unknown_pieces(model, ["the dog 7 é"]) >= 1
    assert tokenizer.measured_character_coverage(model, ["the dog 7 é"]) == pytest.approx(6 / 8)
    assert tokenizer.measured_character_coverage(model, ["the dog"]) == 1.0


def test_training_is_deterministic_and_required_chars_are_kept(tmp_path, split_texts):
    texts = split_texts["text_train"][:300]
    first = tokenizer.train_sentencepiece(texts, tmp_path / "a.model", vocab_size=120, required_chars="79")
    second = tokenizer.train_sentencepiece(texts, tmp_path / "b.model", vocab_size=120, required_chars="79")
    assert first.read_bytes() == second.read_bytes()
    assert tokenizer.count_unknown_pieces(first, ["the 97 dogs"]) == 0  # digits never occur in the text


def test_impossible_vocab_size_names_the_option(tmp_path):
    with pytest.raises(RuntimeError, match="--vocab_size"):
        tokenizer.train_sentencepiece(["a b c", "b c a"], tmp_path / "x.model", vocab_size=5000)


def test_vocab_size_check_names_the_tokenizer_and_the_model_binding(tiny_corpus):
    path = tiny_corpus / "spm" / "spm.model"
    tokenizer.check_vocab_size(path, 256, "ModelConfig.vocab_size")
    for model_size in (128, 512):  # too few rows (NaN embeddings) and too many (undecodable ids) both stop
        with pytest.raises(ValueError, match=f"{path} has 256 pieces but ModelConfig.vocab_size = {model_size}; set"):
            tokenizer.check_vocab_size(path, model_size, "ModelConfig.vocab_size")
