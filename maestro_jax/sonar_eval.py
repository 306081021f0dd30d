"""SONAR evaluation: speech-to-text retrieval error (xsim) and zero-shot transcription with the stage-1 decoder."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm

from maestro_jax.objectives.common import bound
from maestro_jax.objectives.sonar import TEACHER_COLLECTION


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


MARGINS = ("ratio", "absolute")


def _top_k_mean(queries: np.ndarray, keys: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """f64[Q]: mean cosine of each unit query row to its k nearest unit key rows."""
    means = [
        np.mean(-np.partition(-(queries[start : start + chunk_size] @ keys.T), k - 1, axis=1)[:, :k], axis=1)
        for start in range(0, queries.shape[0], chunk_size)
    ]
    return np.concatenate(means)


def retrieval_error(
    speech_emb: np.ndarray,
    text_emb: np.ndarray,
    transcripts: Sequence[str] | None = None,
    *,
    margin: str = "absolute",
    k: int = 4,
    chunk_size: int = 1024,
) -> float:
    """xsim error rate: share of speech embeddings f32[N, E] whose retrieved text embedding f32[N, E] is not theirs.

    Row i of both arrays belongs to utterance i. margin="absolute": the text row of highest cosine similarity.
    margin="ratio" (LASER's xsim default, Artetxe & Schwenk 2019): among the k text rows of highest cosine, the one
    of highest cos(x, y) / ((mean cosine of x to its k nearest text rows + mean cosine of y to its k nearest speech
    rows) / 2), which discounts "hub" rows that are near every query. Float64; ties go to the higher cosine, then the
    lower index. A retrieved row j != i still counts as a hit when it holds the same transcript: transcripts[j] ==
    transcripts[i] if `transcripts` is given, else text_emb[j] identical to text_emb[i]. `chunk_size` bounds the
    similarity block held in memory (chunk_size x N).
    """
    speech_emb, text_emb = np.asarray(speech_emb), np.asarray(text_emb)
    if speech_emb.shape != text_emb.shape or speech_emb.ndim != 2:
        raise ValueError(
            f"retrieval_error needs speech and text embeddings of the same [N, E] shape, got "
            f"{speech_emb.shape} and {text_emb.shape}."
        )
    if margin not in MARGINS:
        raise ValueError(f"retrieval_error margin must be one of {MARGINS}, got {margin!r}.")
    count = speech_emb.shape[0]
    if count == 0:
        raise ValueError("retrieval_error got 0 embeddings; the evaluation set is empty.")
    if transcripts is not None and len(transcripts) != count:
        raise ValueError(f"retrieval_error got {len(transcripts)} transcripts for {count} embeddings.")
    if k < 1:
        raise ValueError(f"retrieval_error needs k >= 1 neighbours for the ratio margin, got {k}.")
    speech_unit, text_unit = _unit_rows(speech_emb), _unit_rows(text_emb)
    k = min(k, count)
    if margin == "ratio":
        text_mean = _top_k_mean(text_unit, speech_unit, k, chunk_size)  # each text row's k nearest speech rows
    nearest = []
    for start in range(0, count, chunk_size):
        cosine = speech_unit[start : start + chunk_size] @ text_unit.T  # [c, N]
        if margin == "absolute":
            nearest.append(np.argmax(cosine, axis=1))
            continue
        candidates = np.argsort(-cosine, axis=1, kind="stable")[:, :k]  # [c, k], by cosine, then index
        rows = np.arange(cosine.shape[0])[:, None]
        candidate_cosine = cosine[rows, candidates]  # the k nearest text rows: their mean is the query's own term
        scores = candidate_cosine / ((candidate_cosine.mean(axis=1, keepdims=True) + text_mean[candidates]) / 2)
        nearest.append(candidates[rows[:, 0], np.argmax(scores, axis=1)])
    nearest = np.concatenate(nearest)
    own = np.arange(count)
    if transcripts is not None:
        labels = np.asarray(transcripts, dtype=object)
        same_text = labels[nearest] == labels[own]
    else:
        same_text = np.all(text_emb[nearest] == text_emb[own], axis=1)
    hits = (nearest == own) | same_text
    return float(1.0 - np.mean(hits))


def embed_speech(model, variables: dict, waveform: jax.Array, waveform_length: jax.Array) -> jax.Array:
    """Pooled speech embeddings f32[B, E] from a SpeechTextModel: encode_speech (eval mode) then pool."""
    student_variables = {name: value for name, value in variables.items() if name != TEACHER_COLLECTION}
    student = bound(model, student_variables)
    hidden, frame_length = student.encode_speech(waveform, waveform_length, train=False)
    return student.pool(hidden, frame_length).astype(jnp.float32)


def zero_shot_transcribe(
    text_model,
    text_params: dict,
    speech_emb: np.ndarray,
    *,
    max_length: int,
    batch_size: int = 64,
    tokenizer: spm.SentencePieceProcessor | str | None = None,
) -> list[list[int]] | list[str]:
    """Greedy-decode speech embeddings f32[N, E] with the stage-1 SonarTextModel decoder (params `text_params`).

    Returns N token-id lists (eos and padding removed), or N strings when `tokenizer` (a SentencePieceProcessor or
    the path of its .model file) is given. Embeddings are decoded in batches of `batch_size` (the last batch is
    padded, so one compilation serves all); `max_length` is the most tokens per transcript.
    """
    if isinstance(tokenizer, str):
        tokenizer = spm.SentencePieceProcessor(model_file=tokenizer)
    speech_emb = np.asarray(speech_emb, dtype=np.float32)
    decode = jax.jit(text_model.greedy_decode, static_argnums=2)
    variables = {"params": text_params}
    transcripts: list[list[int]] = []
    for start in range(0, speech_emb.shape[0], batch_size):
        chunk = speech_emb[start : start + batch_size]
        padded = np.pad(chunk, ((0, batch_size - chunk.shape[0]), (0, 0)))
        tokens, lengths = jax.device_get(decode(variables, padded, max_length))
        transcripts.extend(tokens[i, : lengths[i]].tolist() for i in range(chunk.shape[0]))
    if tokenizer is None:
        return transcripts
    return [tokenizer.decode(ids) for ids in transcripts]
