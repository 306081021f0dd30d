"""Sentencepiece tokenizer: training on corpus text and the seqio vocabulary wrapper.

Id layout (docs/CONTRACTS.md): 0 = pad and RNN-T/CTC blank, 1 = eos, 2 = unk, no bos.
"""

import collections
import gzip
import io
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece

from maestro_jax import paths

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


def load_processor(path: str | Path) -> sentencepiece.SentencePieceProcessor:
    """The sentencepiece model at `path`, a local file or a URL (gs://...): read through `paths` as bytes, since
    sentencepiece itself opens local files only."""
    return sentencepiece.SentencePieceProcessor(model_proto=paths.as_path(path).read_bytes())


def train_sentencepiece(
    texts: Iterable[str],
    model_path: Path,
    *,
    vocab_size: int = 256,
    required_chars: str = "",
    character_coverage: float = 1.0,
) -> Path:
    """Trains a unigram sentencepiece model on `texts` (one sentence each) and writes it to `model_path`.

    Args:
      texts: training sentences (lower-case words separated by spaces in this corpus).
      model_path: where the .model file goes; parent folders are created.
      vocab_size: number of pieces, the three special ids included.
      required_chars: characters that must get a piece even if rare, so that no split encodes to unk.
      character_coverage: share of the characters (by count) that get pieces; the rarest rest encode to unk.
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
            character_coverage=character_coverage,
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


def iter_text_lines(paths: Sequence[str | Path]) -> Iterator[str]:
    """The stripped lines of plain-text files (.gz read as gzip), streamed; empty lines included (as "")."""
    for path in paths:
        with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                yield line.strip()


def sample_sentences(sentences: Iterable[str], limit: int, seed: int = 0) -> tuple[list[str], int, int]:
    """A uniform reservoir sample of at most `limit` non-empty sentences (so a huge text never sits in memory whole).

    Returns (sample in input order, non-empty sentences seen, empty ones skipped).
    """
    rng = random.Random(seed)
    sample: list[tuple[int, str]] = []
    seen = empty = 0
    for sentence in sentences:
        if not sentence:
            empty += 1
            continue
        if len(sample) < limit:
            sample.append((seen, sentence))
        elif (slot := rng.randrange(seen + 1)) < limit:
            sample[slot] = (seen, sentence)
        seen += 1
    return [sentence for _, sentence in sorted(sample)], seen, empty


def train_from_files(
    out_dir: str | Path,
    *,
    text_files: Sequence[str | Path] = (),
    manifests: Sequence[str | Path] = (),
    vocab_size: int = 1024,
    lowercase: bool = False,
    max_sentences: int = 1_000_000,
    character_coverage: float = 0.9999,
) -> dict:
    """Trains OUT_DIR/spm.model on the lines of `text_files` and the transcripts of JSONL `manifests`, with the
    project's ids; returns a summary (sentences used, character coverage, unk rate) also written to OUT_DIR.

    At most `max_sentences` sentences (a uniform sample) train the model; the rarest characters beyond
    `character_coverage` get no piece. Coverage and unk rate are then measured on every sentence (a second pass).
    `lowercase` must match the streams' `lowercase` so that training and tokenisation see the same text.
    """
    from maestro_jax.data import audio_files

    if not text_files and not manifests:
        raise ValueError("give at least one --text file or --manifest to train the tokenizer on")

    def sentences() -> Iterator[str]:
        yield from iter_text_lines(text_files)
        for manifest in manifests:
            yield from (entry.text.strip() for entry in audio_files.list_manifest(manifest))

    def normalised() -> Iterator[str]:
        return (s.lower() if lowercase else s for s in sentences())

    sample, seen, empty = sample_sentences(normalised(), max_sentences)
    if not sample:
        raise ValueError(f"no non-empty sentence in {[*map(str, text_files), *map(str, manifests)]}")
    model_path = train_sentencepiece(
        sample, Path(out_dir) / "spm.model", vocab_size=vocab_size, character_coverage=character_coverage
    )
    processor = load_processor(model_path)
    num_tokens = num_unk = 0
    for sentence in filter(None, normalised()):
        ids = processor.encode(sentence)
        num_tokens, num_unk = num_tokens + len(ids), num_unk + ids.count(UNK_ID)
    summary = {
        "model": str(model_path),
        "vocab_size": processor.get_piece_size(),
        "sentences_seen": seen,
        "sentences_used": len(sample),
        "empty_lines_skipped": empty,
        "lowercase": lowercase,
        "character_coverage": measured_character_coverage(model_path, filter(None, normalised())),
        "unk_rate": num_unk / max(1, num_tokens),
        "tokens_per_sentence": num_tokens / seen,
    }
    (Path(out_dir) / "tokenizer_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def count_unknown_pieces(model_path: Path, texts: Iterable[str]) -> int:
    """Number of unk ids produced when encoding every text with the model at `model_path`."""
    processor = load_processor(model_path)
    return sum(ids.count(UNK_ID) for ids in processor.encode(list(texts)))


def measured_character_coverage(model_path: Path, texts: Iterable[str]) -> float:
    """Share of the non-space characters in `texts` that the model encodes without unk."""
    processor = load_processor(model_path)
    counts = collections.Counter(char for text in texts for char in text if not char.isspace())
    covered = sum(count for char, count in counts.items() if UNK_ID not in processor.encode(char))
    return covered / max(1, sum(counts.values()))


def check_id_conventions(path: str | Path) -> None:
    """Raises ValueError unless the sentencepiece model at `path` keeps the project's ids (pad 0, eos 1, unk 2)."""
    processor = load_processor(path)
    seen = {"pad": processor.pad_id(), "eos": processor.eos_id(), "unk": processor.unk_id()}
    wanted = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID}
    if seen != wanted:
        raise ValueError(
            f"tokenizer {path} has ids {seen}, but maestro_jax needs {wanted}: id 0 is the RNN-T/CTC blank and the "
            "padding, so no real piece may take it, and the filters look for unk at 2. Train one with "
            "`maestro-data tokenizer --text FILE --vocab_size N --out DIR`"
        )


def check_vocab_size(path: str | Path, vocab_size: int, binding: str) -> None:
    """Raises ValueError unless the sentencepiece model at `path` has exactly `vocab_size` pieces, the model's output
    and embedding size (`binding` names its gin setting, e.g. "ModelConfig.vocab_size").

    A larger tokenizer gives ids that the embedding gathers as NaN (the NaN guard then skips every step); a smaller one
    lets decoding emit ids the tokenizer cannot turn back into text.
    """
    pieces = load_processor(path).get_piece_size()
    if pieces != vocab_size:
        raise ValueError(
            f"tokenizer {path} has {pieces} pieces but {binding} = {vocab_size}; set {binding} = {pieces} "
            f"(VOCAB_SIZE in gin/experiments/own_data_maestro.gin), or point the data at a {vocab_size}-piece "
            "tokenizer (TOKENIZER, i.e. the data's tokenizer_path; synthetic_corpus.vocab_size for the synthetic one)"
        )


def check_model_vocab_size(path: str | Path, model) -> None:
    """`check_vocab_size` against `model`'s vocab_size (`model.config.vocab_size` or `model.vocab_size`); a model
    without one (e.g. a speech-only student) is not checked."""
    config = getattr(model, "config", model)
    if hasattr(config, "vocab_size"):
        check_vocab_size(path, config.vocab_size, f"{type(config).__name__}.vocab_size")


def make_vocabulary(path: str | Path):
    """seqio.SentencePieceVocabulary for the model at `path` (pad 0, eos 1, unk 2, no extra ids)."""
    # seqio pulls in TensorFlow; imported here so that training the model does not.
    import seqio

    return seqio.SentencePieceVocabulary(str(path))
