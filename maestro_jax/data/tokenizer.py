"""Sentencepiece tokenizer: training on corpus text and the seqio vocabulary wrapper.

Id layout (docs/CONTRACTS.md): 0 = pad and RNN-T/CTC blank, 1 = eos, 2 = unk, no bos.
"""

import collections
import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def train_sentencepiece(
    texts: Iterable[str], model_path: Path, *, vocab_size: int = 256, required_chars: str = ""
) -> Path:
    """Trains a unigram sentencepiece model on `texts` (one sentence each) and writes it to `model_path`.

    Args:
      texts: training sentences (lower-case words separated by spaces in this corpus).
      model_path: where the .model file goes; parent folders are created.
      vocab_size: number of pieces, the three special ids included.
      required_chars: characters that must get a piece even if rare, so that no split encodes to unk.
    """
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            character_coverage=1.0,
            required_chars=required_chars,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,  # one thread keeps the trained model bit-identical across runs
            minloglevel=2,
        )
    except RuntimeError as error:
        raise RuntimeError(f"sentencepiece training for {model_path} failed: {error}; change --vocab_size") from error
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(model.getvalue())
    return model_path


def count_unknown_pieces(model_path: Path, texts: Iterable[str]) -> int:
    """Number of unk ids produced when encoding every text with the model at `model_path`."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    return sum(ids.count(UNK_ID) for ids in processor.encode(list(texts)))


def character_coverage(model_path: Path, texts: Iterable[str]) -> float:
    """Share of the non-space characters in `texts` that the model encodes without unk."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    counts = collections.Counter(char for text in texts for char in text if not char.isspace())
    covered = sum(count for char, count in counts.items() if UNK_ID not in processor.encode(char))
    return covered / max(1, sum(counts.values()))


def make_vocabulary(path: str | Path):
    """seqio.SentencePieceVocabulary for the model at `path` (pad 0, eos 1, unk 2, no extra ids)."""
    # seqio pulls in TensorFlow; imported here so that training the model does not.
    import seqio

    return seqio.SentencePieceVocabulary(str(path))
