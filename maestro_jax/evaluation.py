"""WER/CER with jiwer after one documented text normaliser, and the evaluation loops over corpus splits, JSONL
manifests and exports (transcription itself is inference.py's).

Text normaliser (`normalize_transcript`), applied to references and hypotheses alike: Unicode NFKC, lower case,
every character that is not a letter, digit, apostrophe or whitespace becomes a space, apostrophes at word edges are
dropped, and runs of whitespace collapse to one space. So "Hello, World!" and "hello world" score as equal.
"""

import dataclasses
import functools
import itertools
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import jiwer
import numpy as np

from maestro_jax import export, paths
from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.data import audio_files, corpus_layout
from maestro_jax.data.tokenizer import load_processor
from maestro_jax.inference import (
    DECODERS,
    apply_operative_config,
    checked_tokenizer,
    load_model_dir,
    make_transcriber,
    tokenizer_of_config,
)

_NOT_WORD = re.compile(r"[^\w\s']|_", re.UNICODE)
_EDGE_APOSTROPHE = re.compile(r"(^|\s)'+|'+(?=\s|$)")
_SPACES = re.compile(r"\s+")
_log = logging.getLogger(__name__)


def normalize_transcript(text: str) -> str:
    """The evaluation text normaliser (module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NOT_WORD.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus-level WER and CER (jiwer) after `normalize_transcript`, plus counts.

    Empty normalised references are skipped (WER is undefined for them) and counted in `skipped_empty_references`.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses; they must pair up.")
    pairs = [(normalize_transcript(r), normalize_transcript(h)) for r, h in zip(references, hypotheses)]
    kept = [(r, h) for r, h in pairs if r]
    if not kept:
        raise ValueError("every reference transcript is empty after normalisation; nothing to score.")
    refs, hyps = [r for r, _ in kept], [h for _, h in kept]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {
        "wer": float(words.wer),
        "cer": float(chars.cer),
        "substitutions": float(words.substitutions),
        "deletions": float(words.deletions),
        "insertions": float(words.insertions),
        "num_utterances": float(len(kept)),
        "num_reference_words": float(sum(len(r.split()) for r in refs)),
        "skipped_empty_references": float(len(pairs) - len(kept)),
    }


def token_lists(tokens, lengths) -> list[list[int]]:
    """Strip padding: tokens i32[B, L], lengths i32[B] -> B lists of ids."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [row[:n].tolist() for row, n in zip(tokens, lengths)]


def transcribe_batches(
    transcribe: Callable,
    variables,
    batches: Iterable[dict],
    detokenize: Callable[[list[int]], str],
    *,
    progress: bool = True,
    total: int | None = None,
) -> list[dict]:
    """Runs `transcribe` over eval batches and returns one row per valid example.

    Each batch is a dict with `waveform`, `waveform_length`, and optionally `valid` bool[B] (padding rows of a final
    partial batch), `text` (reference strings) and `id`. Rows: {"id", "reference", "hypothesis"}.
    """
    from tqdm.auto import tqdm

    rows = []
    for batch in tqdm(batches, desc="transcribe", unit="batch", total=total, disable=not progress):
        tokens, lengths = transcribe(variables, jnp.asarray(batch["waveform"]), jnp.asarray(batch["waveform_length"]))
        size = len(batch["waveform_length"])
        valid = np.asarray(batch.get("valid", np.ones(size, bool)))
        references = batch.get("text", [""] * size)
        ids = batch.get("id", [str(len(rows) + i) for i in range(size)])
        for i, ids_i in enumerate(token_lists(tokens, lengths)):
            if valid[i]:
                rows.append(
                    {"id": _as_str(ids[i]), "reference": _as_str(references[i]), "hypothesis": detokenize(ids_i)}
                )
    return rows


def rows_error_rates(rows: list[dict]) -> dict[str, float]:
    """`error_rates` of `transcribe_batches` rows ({"reference", "hypothesis"})."""
    return error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows])


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---- Evaluating a trained model directory or an export on corpus splits and manifests ----

DEFAULT_SPLITS = corpus_layout.TEST_SPLITS


@dataclasses.dataclass
class ManifestReport:
    """What one pass over a manifest set aside or flagged, as JSON-friendly dicts: `skipped` one per unusable row
    (manifest, line, file, reason, value; audio_files.BadRow), `level_warnings` one per scored file whose audio was
    out of range or clipped (manifest, line, file, reason, peak, clipped_fraction; audio_files.AudioLevels)."""

    skipped: list[dict] = dataclasses.field(default_factory=list)
    level_warnings: list[dict] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, float]:
        reasons = [warning["reason"] for warning in self.level_warnings]
        return {
            "num_skipped": float(len(self.skipped)),
            "num_out_of_range_audio": float(reasons.count(audio_files.OUT_OF_RANGE_AUDIO)),
            "num_clipped_audio": float(reasons.count(audio_files.CLIPPED_AUDIO)),
        }


SKIP_BAD_OPTION = (
    "or pass --skip_bad to maestro-eval (skip_bad=True to evaluation.evaluate or split_error_rates) to skip such rows "
    "and report them"
)


def _bad_row_error(row: audio_files.BadRow, max_samples_option: str) -> Exception:
    """The error that stops a pass at `row`: AudioReadError for its audio file, ValueError for the row itself."""
    fix = "fix or drop that row"
    if row.reason == audio_files.TOO_LONG_AUDIO and max_samples_option:
        fix = f"{max_samples_option}, drop that row"
    error = ValueError if row.reason in (audio_files.BAD_JSON, audio_files.MISSING_KEY) else audio_files.AudioReadError
    return error(f"{row.describe()}; {fix}, {SKIP_BAD_OPTION}.")


def manifest_batches(
    manifest: str,
    *,
    batch_size: int = 16,
    samples_multiple: int = SAMPLE_RATE_HZ,
    max_samples: int | None = None,
    max_samples_option: str = "",
    skip_bad: bool = False,
    report: ManifestReport | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over a NeMo-style JSONL manifest (`audio_filepath`, `text`; any sample rate, stereo
    averaged to mono) in eval batches shaped like `eval_batches`: `waveform` f32[B, N] with N the longest utterance
    rounded up to `samples_multiple` samples, `waveform_length` i32[B], `valid` bool[B], `id` and `text` object[B].

    A row that cannot be scored (not a JSON object; no 'audio_filepath' or 'text'; a missing, undecodable, empty or
    NaN/Inf audio file; more than `max_samples` samples, a limit that `max_samples_option` says how to raise) stops
    the pass with an error naming the manifest, line, file, reason and value (AudioReadError for audio, ValueError
    for the row), or with `skip_bad` is skipped, logged and appended to `report.skipped`. Out-of-range (scaled to
    peak 1) or clipped audio is scored, logged as a warning and appended to `report.level_warnings`.
    """
    report = ManifestReport() if report is None else report
    limit = f"the longest input of {max_samples} samples ({max_samples / SAMPLE_RATE_HZ:.1f} s)" if max_samples else ""

    def usable_rows() -> Iterator[tuple[audio_files.AudioEntry, np.ndarray]]:
        for row in audio_files.read_manifest_audio(manifest, needs_text=True, max_samples=max_samples, limit=limit):
            if isinstance(row, audio_files.BadRow):
                if not skip_bad:
                    raise _bad_row_error(row, max_samples_option)
                _log.warning("skipping %s", row.describe())
                report.skipped.append(dataclasses.asdict(row))
                continue
            entry, waveform, levels = row
            if levels.report is not None:
                _log.warning("%s:%d: audio file '%s' %s", manifest, entry.line, entry.path, levels.describe())
                report.level_warnings.append(
                    {
                        "manifest": manifest,
                        "line": entry.line,
                        "file": entry.path,
                        "reason": levels.report,
                        "peak": levels.peak,
                        "clipped_fraction": levels.clipped_fraction,
                    }
                )
            yield entry, waveform

    rows, scored = usable_rows(), 0
    while chunk := list(itertools.islice(rows, batch_size)):
        scored += len(chunk)
        entries, waveforms = [entry for entry, _ in chunk], [waveform for _, waveform in chunk]
        longest = max(len(w) for w in waveforms)
        samples = max(samples_multiple, samples_multiple * -(-longest // samples_multiple))
        batch = {
            "waveform": np.zeros([batch_size, samples], np.float32),
            "waveform_length": np.zeros([batch_size], np.int32),
            "valid": np.arange(batch_size) < len(chunk),
            "id": np.array([e.id for e in entries] + [""] * (batch_size - len(chunk)), dtype=object),
            "text": np.array([e.text for e in entries] + [""] * (batch_size - len(chunk)), dtype=object),
        }
        for row, waveform in enumerate(waveforms):
            batch["waveform"][row, : len(waveform)] = waveform
            batch["waveform_length"][row] = len(waveform)
        yield batch
    if not scored:
        why = f"all {len(report.skipped)} were skipped as bad (logged above)" if report.skipped else "none has audio"
        raise ValueError(f"manifest {manifest} has no rows to score: {why}; check its 'audio_filepath' fields.")


def split_batches(
    split: str, *, batch_size: int = 16, samples_multiple: int = SAMPLE_RATE_HZ, needs_text: bool = False
):
    """(batches, number of batches) of one ordered pass over a synthetic-corpus split (configured by gin); with
    `needs_text` the batches carry `tokens`/`token_length` too."""
    # The seqio/TensorFlow data stack loads only when a split is evaluated.
    import seqio

    from maestro_jax.data import batcher, pipeline, tasks

    _, size = pipeline.synthetic_corpus()
    task = tasks.synthetic_task_name(size, split)
    count = seqio.get_mixture_or_task(task).num_input_examples(tasks.only_split(task))
    batches = batcher.eval_batches(
        task, batch_size=batch_size, needs_text=needs_text, samples_multiple=samples_multiple
    )
    return batches, (None if count is None else -(-count // batch_size))


def evaluate(
    *,
    model_dir: str | None = None,
    export_dir: str | None = None,
    splits: Sequence[str] = (),
    manifests: Sequence[str] = (),
    decoder: str = "rnnt_greedy",
    beam_size: int = 4,
    ilm_fusion_weight: float = 0.0,
    length_reward: float = 0.0,
    out: str | None = None,
    checkpoint_step: int | None = None,
    use_ema: bool = False,
    batch_size: int = 16,
    pad_seconds: float = 5.0,
    progress: bool = True,
    skip_bad: bool = False,
) -> dict[str, dict]:
    """WER/CER (`error_rates`) of a checkpoint (`model_dir`) or an export (`export_dir`) per evaluation source.

    splits: synthetic-corpus split names (the corpus of the saved operative config); manifests: NeMo JSONL files.
    With neither, DEFAULT_SPLITS. decoder: one of DECODERS (an export has rnnt_greedy only). out: write one JSONL
    row {"source", "id", "reference", "hypothesis"} per utterance there. Returns {source: metrics}, the source being
    the split name or the manifest path. ilm_fusion_weight: rnnt_beam's shallow fusion with the model's internal LM,
    with length_reward per label (`decoding.rnnt_beam_search`). pad_seconds: batches are padded to a multiple of
    this many seconds, which bounds the number of compiled shapes (5 s: one shape for the synthetic corpus, the
    export's first bucket). skip_bad: skip a manifest's unusable rows instead of stopping at the first
    (`manifest_batches`); a manifest's metrics add `ManifestReport.counts()` and its `skipped` and `level_warnings`
    lists.
    """
    if (model_dir is None) == (export_dir is None):
        raise ValueError("give exactly one of --model_dir (a training run) or --export_dir (a maestro-export output).")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}.")
    sources = [("split", s) for s in splits] + [("manifest", m) for m in manifests]
    sources = sources or [("split", s) for s in DEFAULT_SPLITS]
    if model_dir is not None:
        restored = load_model_dir(model_dir, checkpoint_step=checkpoint_step, use_ema=use_ema)
        transcribe = make_transcriber(
            restored.model,
            decoder=decoder,
            beam_size=beam_size,
            ilm_fusion_weight=ilm_fusion_weight,
            length_reward=length_reward,
        )
        variables = restored.variables
        tokenizer_path = checked_tokenizer(restored.model)
    else:
        if decoder != "rnnt_greedy":
            raise ValueError(f"an export transcribes with rnnt_greedy only, not {decoder!r}; evaluate --model_dir.")
        loaded = export.load(export_dir)
        apply_operative_config(loaded.config_text)

        def transcribe(_, waveform, waveform_length):
            return loaded.transcribe_tokens(np.asarray(waveform), np.asarray(waveform_length))

        variables, tokenizer_path = None, loaded.tokenizer_path
    # An export transcribes up to its longest bucket; a checkpoint has no length limit.
    max_samples = None if model_dir is not None else max(loaded.metadata["bucket_samples"])
    tokenizer = load_processor(tokenizer_path)
    results, all_rows = {}, []
    samples_multiple = int(round(pad_seconds * SAMPLE_RATE_HZ))
    for kind, name in sources:
        report = ManifestReport()
        if kind == "split":
            batches, total = split_batches(name, batch_size=batch_size, samples_multiple=samples_multiple)
        else:
            batches = manifest_batches(
                name,
                batch_size=batch_size,
                samples_multiple=samples_multiple,
                max_samples=max_samples,
                max_samples_option="re-export with a longer --bucket_seconds or split the audio",
                skip_bad=skip_bad,
                report=report,
            )
            total = None
        rows = transcribe_batches(transcribe, variables, batches, tokenizer.decode, progress=progress, total=total)
        results[name] = rows_error_rates(rows)
        if kind == "manifest":
            results[name].update(report.counts(), skipped=report.skipped, level_warnings=report.level_warnings)
        all_rows.extend({"source": name, **row} for row in rows)
    if out is not None:
        out_path = paths.as_path(out)
        paths.makedirs(out_path.parent)
        out_path.write_text("".join(json.dumps(row) + "\n" for row in all_rows))
    return results


def tune_fusion(
    *,
    model_dir: str,
    weights: Sequence[float],
    rewards: Sequence[float],
    split: str = "dev",
    beam_size: int = 4,
    checkpoint_step: int | None = None,
    batch_size: int = 16,
    pad_seconds: float = 5.0,
) -> dict:
    """The (ilm_fusion_weight, length_reward) of rnnt_beam with the lowest WER on `split`, over the grid weights x
    rewards (`decoding.rnnt_beam_search`), chosen the way an LM weight and insertion reward are chosen: on held-out
    data, never on the test split reported. Ties keep the earlier grid point (weights outer, rewards inner).

    Returns {"ilm_fusion_weight", "length_reward", "wer", "grid": [{"ilm_fusion_weight", "length_reward", "wer",
    "cer"}]} (fractions).
    """
    if not weights or not rewards:
        raise ValueError("tune_fusion needs at least one ilm_fusion_weight and one length_reward.")
    restored = load_model_dir(model_dir, checkpoint_step=checkpoint_step)
    tokenizer = load_processor(checked_tokenizer(restored.model))
    samples_multiple = int(round(pad_seconds * SAMPLE_RATE_HZ))
    grid = []
    for weight in weights:
        for reward in rewards:
            transcribe = make_transcriber(
                restored.model, decoder="rnnt_beam", beam_size=beam_size, ilm_fusion_weight=weight, length_reward=reward
            )
            batches, total = split_batches(split, batch_size=batch_size, samples_multiple=samples_multiple)
            rows = transcribe_batches(
                transcribe, restored.variables, batches, tokenizer.decode, progress=False, total=total
            )
            rates = rows_error_rates(rows)
            grid.append(
                {"ilm_fusion_weight": weight, "length_reward": reward, "wer": rates["wer"], "cer": rates["cer"]}
            )
    best = min(grid, key=lambda point: point["wer"])  # min keeps the first of equal WERs
    return {
        "ilm_fusion_weight": best["ilm_fusion_weight"],
        "length_reward": best["length_reward"],
        "wer": best["wer"],
        "grid": grid,
    }


@functools.lru_cache(maxsize=8)
def _cached_transcriber(model, decoder: str, beam_size: int) -> Callable:
    # One jitted transcriber per (model, decoder) for the whole run, so periodic evaluation compiles once.
    return make_transcriber(model, decoder=decoder, beam_size=beam_size)


@gin.configurable
def split_error_rates(
    model,
    variables,
    step: int,
    *,
    splits: Sequence[str] = ("dev",),
    manifests: Sequence[str] = (),
    decoders: Sequence[str] = ("rnnt_greedy",),
    beam_size: int = 4,
    batch_size: int = 16,
    pad_seconds: float = 5.0,
    skip_bad: bool = False,
) -> dict[str, float]:
    """The trainer's periodic eval hook (`train.eval_fn`): WER/CER per decoder on synthetic-corpus splits and on
    NeMo-style JSONL manifests (named by their file stem: `dev.jsonl` logs as "dev/wer"). skip_bad: skip (and log)
    a manifest's unusable rows instead of stopping the run at the first (`manifest_batches`).

    Returns {"<split>/wer", "<split>/cer"} for the first decoder and {"<split>/<decoder>_wer", ...} for the others
    (fractions, not percent), which the trainer logs as "eval/..." and plots beside the loss terms.
    """
    del step
    tokenizer = load_processor(tokenizer_of_config())
    samples_multiple = int(round(pad_seconds * SAMPLE_RATE_HZ))
    sources = [("split", split, split) for split in splits]
    sources += [("manifest", os.path.basename(manifest).split(".")[0], manifest) for manifest in manifests]
    out = {}
    for index, decoder in enumerate(decoders):
        transcribe = _cached_transcriber(model, decoder, beam_size)
        for kind, split, source in sources:
            if kind == "split":
                batches, total = split_batches(split, batch_size=batch_size, samples_multiple=samples_multiple)
            else:
                batches = manifest_batches(
                    source, batch_size=batch_size, samples_multiple=samples_multiple, skip_bad=skip_bad
                )
                total = None
            rows = transcribe_batches(transcribe, variables, batches, tokenizer.decode, progress=False, total=total)
            rates = rows_error_rates(rows)
            prefix = f"{split}/" if index == 0 else f"{split}/{decoder}_"
            out[prefix + "wer"], out[prefix + "cer"] = rates["wer"], rates["cer"]
    return out


def retrieval_errors(
    *,
    model_dir: str,
    splits: Sequence[str] = DEFAULT_SPLITS,
    checkpoint_step: int | None = None,
    use_ema: bool = False,
    batch_size: int = 16,
    pad_seconds: float = 5.0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """SONAR speech->text retrieval error (xsim, `sonar_eval.retrieval_error`) of a `sonar_speech` model directory
    on synthetic-corpus splits: each utterance's pooled speech embedding searches the frozen teacher's embeddings of
    every transcript of the split. Returns {split: {"retrieval_error", "retrieval_error_cosine", "num_utterances"}}:
    retrieval_error is xsim as LASER computes it by default (ratio margin over the 4 nearest neighbours), and
    retrieval_error_cosine the plain nearest neighbour by cosine."""
    from tqdm.auto import tqdm

    from maestro_jax import sonar_eval
    from maestro_jax.objectives.sonar import TEACHER_COLLECTION

    restored = load_model_dir(model_dir, checkpoint_step=checkpoint_step, use_ema=use_ema)
    if TEACHER_COLLECTION not in restored.variables:
        raise ValueError(
            f"{model_dir} holds no SONAR teacher ({TEACHER_COLLECTION!r} collection); retrieval error needs a model "
            "trained with the sonar_speech objective. Drop --retrieval to score transcription instead."
        )
    try:
        teacher_model = gin.query_parameter("sonar_speech.teacher_model").scoped_configurable_fn()
    except ValueError as error:
        raise ValueError(
            f"the operative config of {model_dir} binds no sonar_speech.teacher_model, so its teacher cannot be built "
            "for retrieval; evaluate a run trained with gin/objectives/sonar_speech.gin."
        ) from error
    teacher_params = {"params": restored.variables[TEACHER_COLLECTION]}
    embed_speech = jax.jit(functools.partial(sonar_eval.embed_speech, restored.model))
    embed_text = jax.jit(functools.partial(teacher_model.apply, method="embed"))
    results = {}
    samples_multiple = int(round(pad_seconds * SAMPLE_RATE_HZ))
    for split in splits:
        batches, total = split_batches(split, batch_size=batch_size, samples_multiple=samples_multiple, needs_text=True)
        speech, text, transcripts = [], [], []
        for batch in tqdm(batches, desc=f"embed {split}", unit="batch", total=total, disable=not progress):
            valid = np.asarray(batch["valid"])
            speech.append(
                np.asarray(embed_speech(restored.variables, batch["waveform"], batch["waveform_length"]))[valid]
            )
            text.append(np.asarray(embed_text(teacher_params, batch["tokens"], batch["token_length"]))[valid])
            transcripts.extend(_as_str(t) for t, ok in zip(batch["text"], valid) if ok)
        speech, text = np.concatenate(speech), np.concatenate(text)
        normalized = [normalize_transcript(t) for t in transcripts]
        results[split] = {
            "retrieval_error": sonar_eval.retrieval_error(speech, text, normalized, margin="ratio", k=4),
            "retrieval_error_cosine": sonar_eval.retrieval_error(speech, text, normalized, margin="absolute"),
            "num_utterances": float(len(transcripts)),
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per source with WER and CER in percent, the utterance count and the rows skipped
    as bad; then one line per skipped row and per out-of-range or clipped file (`evaluate`'s lists)."""
    width = max([len("source")] + [len(name) for name in results])
    lines = [f"{'source':<{width}}  {'WER %':>7}  {'CER %':>7}  {'utts':>5}  {'skipped':>7}"]
    for name, metrics in results.items():
        lines.append(
            f"{name:<{width}}  {100 * metrics['wer']:7.2f}  {100 * metrics['cer']:7.2f}  "
            f"{int(metrics['num_utterances']):5d}  {int(metrics.get('num_skipped', 0)):7d}"
        )
    for metrics in results.values():
        lines += [f"skipped {audio_files.BadRow(**row).describe()}" for row in metrics.get("skipped", [])]
        lines += [
            f"{w['reason']} {w['manifest']}:{w['line']} (audio file '{w['file']}'): peak {w['peak']:.4g}, "
            f"{100 * w['clipped_fraction']:.2f} % of samples clipped"
            for w in metrics.get("level_warnings", [])
        ]
    return "\n".join(lines)


def format_retrieval_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per split with the retrieval errors in percent (xsim with LASER's ratio margin,
    and by plain cosine) and the utterance count."""
    width = max([len("source")] + [len(name) for name in results])
    lines = [f"{'source':<{width}}  {'xsim err %':>10}  {'cosine err %':>12}  {'utts':>5}"]
    for name, metrics in results.items():
        lines.append(
            f"{name:<{width}}  {100 * metrics['retrieval_error']:10.2f}  "
            f"{100 * metrics['retrieval_error_cosine']:12.2f}  {int(metrics['num_utterances']):5d}"
        )
    return "\n".join(lines)
