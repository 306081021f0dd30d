"""SONAR distillation objectives.

Stage 1 (`sonar_text`): train `SonarTextModel` as a denoising auto-encoder (or translator) through a single sentence
vector. Stage 2 (`sonar_speech`): train the speech tower + attention pooler of `SpeechTextModel` to regress the frozen
stage-1 sentence embedding of the transcript. The frozen teacher params live in the variables collection "teacher",
which the trainer carries unchanged (only "params" is optimised).
"""

import os

import gin
import jax
import jax.numpy as jnp
import optax

from maestro_jax import checkpoints, paths
from maestro_jax.models.sonar_text import PAD_ID, UNK_ID, teacher_forcing_pair
from maestro_jax.objectives.common import bound, masked_mean
from maestro_jax.objectives.reductions import batch_total

TEACHER_COLLECTION = "teacher"


def add_text_noise(
    rng: jax.Array,
    tokens: jax.Array,
    token_length: jax.Array,
    *,
    mask_prob: float,
    drop_prob: float,
    shuffle_window: int,
    unk_id: int = UNK_ID,
) -> tuple[jax.Array, jax.Array]:
    """Denoising-auto-encoder noise (Lample et al. 2018): drop, mask with unk, then local shuffle.

    tokens i32[B, U], token_length i32[B] -> (noisy tokens i32[B, U] zero-padded, noisy length i32[B]).
    Each valid token is dropped with `drop_prob` (a non-empty sentence keeps at least one token), replaced by `unk_id`
    with `mask_prob`, and moved at most `shuffle_window` positions (0 = no shuffle). Padding stays at the end.
    """
    drop_rng, mask_rng, shuffle_rng = jax.random.split(rng, 3)
    length = tokens.shape[1]
    positions = jnp.broadcast_to(jnp.arange(length)[None, :], tokens.shape)
    valid = positions < token_length[:, None]

    keep = valid & (jax.random.uniform(drop_rng, tokens.shape) >= drop_prob)
    keep = keep | (valid & (positions == 0) & ~jnp.any(keep, axis=1, keepdims=True))
    kept_first = jnp.argsort(jnp.where(keep, positions, length + positions), axis=1)
    noisy_length = jnp.sum(keep, axis=1).astype(jnp.int32)
    noisy_valid = positions < noisy_length[:, None]
    noisy = jnp.where(noisy_valid, jnp.take_along_axis(tokens, kept_first, axis=1), PAD_ID)

    masked = noisy_valid & (jax.random.uniform(mask_rng, tokens.shape) < mask_prob)
    noisy = jnp.where(masked, unk_id, noisy)

    # Sorting i + U[0, k+1) moves no token more than k places; padding sorts after every valid score.
    jitter = jax.random.uniform(shuffle_rng, tokens.shape, maxval=shuffle_window + 1.0)
    scores = jnp.where(noisy_valid, positions + jitter, 2.0 * (length + shuffle_window + 1) + positions)
    noisy = jnp.take_along_axis(noisy, jnp.argsort(scores, axis=1), axis=1)
    return noisy.astype(jnp.int32), noisy_length


@gin.configurable
def sonar_text(
    model,
    variables: dict,
    batch: dict,
    rng: jax.Array,
    step: jax.Array | int = 0,
    *,
    noise_mask_prob: float = 0.15,
    noise_drop_prob: float = 0.1,
    shuffle_window: int = 3,
    stream: str = "text",
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-1 loss: reconstruct (or translate) a sentence through `model`'s single sentence embedding.

    Reads batch[stream]["tokens"] i32[B, U] / ["token_length"]. Without "target_tokens" the input is noised
    (`add_text_noise`; no noise when `train` is False) and the decoder predicts the clean sentence + eos. With
    "target_tokens" i32[B, U'] / "target_token_length" the clean input is encoded and the target predicted
    (translation). Teacher forcing; token-level cross entropy in fp32 averaged over all scored tokens (eos included);
    rows with an empty target are padding and score nothing. `step` is unused (kept for the objective contract).
    Metrics: loss, token_accuracy, sentence_accuracy, num_tokens.
    """
    del step
    if stream not in batch:
        raise KeyError(
            f"sonar_text reads batch[{stream!r}] but the batch has streams {sorted(batch)}; "
            "set sonar_text.stream or add that stream to the data mixture."
        )
    features = batch[stream]
    noise_rng, dropout_rng = jax.random.split(rng)
    tokens, token_length = features["tokens"], features["token_length"]
    if "target_tokens" in features:
        target_tokens, target_length = features["target_tokens"], features["target_token_length"]
    else:
        target_tokens, target_length = tokens, token_length
        if train:
            tokens, token_length = add_text_noise(
                noise_rng,
                tokens,
                token_length,
                mask_prob=noise_mask_prob,
                drop_prob=noise_drop_prob,
                shuffle_window=shuffle_window,
            )
    decoder_inputs, targets, target_mask = teacher_forcing_pair(target_tokens, target_length)
    has_target = target_length > 0
    target_mask = target_mask & has_target[:, None]  # teacher_forcing_pair scores an eos even for padding rows
    _, logits = bound(model, variables, dropout_rng if train else None).embed_and_decode(
        tokens, token_length, decoder_inputs, train=train
    )
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets) | ~target_mask
    metrics = {
        "loss": masked_mean(token_loss, target_mask),
        "token_accuracy": masked_mean(correct, target_mask),
        "sentence_accuracy": masked_mean(jnp.all(correct, axis=1), has_target),
        "num_tokens": batch_total(target_mask),
    }
    return metrics["loss"], metrics


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def in_batch_retrieval_hits(student: jax.Array, teacher: jax.Array, valid: jax.Array) -> jax.Array:
    """bool[B]: the valid teacher row nearest (cosine) to student row b equals teacher row b (duplicates count)."""
    similarity = _l2_normalize(student) @ _l2_normalize(teacher).T
    similarity = jnp.where(valid[None, :], similarity, -jnp.inf)
    nearest = jnp.argmax(similarity, axis=1)
    return jnp.all(teacher[nearest] == teacher, axis=-1)


def teacher_sentence_embedding(teacher_model, variables: dict, features: dict) -> jax.Array:
    """Frozen teacher embedding f32[B, E]: features["teacher_embedding"] if present, else the stage-1 encoder on
    features["tokens"] with params variables["teacher"] (gradient stopped)."""
    if "teacher_embedding" in features:
        embedding = features["teacher_embedding"]
    else:
        if teacher_model is None or TEACHER_COLLECTION not in variables:
            raise ValueError(
                "sonar_speech needs a teacher embedding: the batch has no 'teacher_embedding' and "
                f"{'sonar_speech.teacher_model is unset' if teacher_model is None else 'variables lack the teacher'}"
                "; bind sonar_speech.teacher_model = @SonarTextModel() and add the stage-1 params with "
                "init_teacher_from_checkpoint / add_teacher, or precompute teacher_embedding in the data."
            )
        teacher = bound(teacher_model, {"params": variables[TEACHER_COLLECTION]})
        embedding = teacher.embed(features["tokens"], features["token_length"], train=False)
    return jax.lax.stop_gradient(embedding.astype(jnp.float32))


def contrastive_loss(
    student: jax.Array,
    teacher: jax.Array,
    valid: jax.Array,
    negatives: jax.Array | None = None,
    negatives_valid: jax.Array | None = None,
    *,
    temperature: float,
) -> jax.Array:
    """Per-example InfoNCE f32[B] of speech->text retrieval (0 where not `valid`).

    student f32[B, E] and teacher f32[B, E] are row-aligned; negatives f32[N, E] (with bool[N] validity) are further
    text embeddings. Row b's candidates are every valid teacher row and negative; its loss is -log softmax over them of
    cosine(student_b, candidate) / temperature at its own teacher row. A candidate other than row b itself that holds
    row b's sentence (cosine to teacher_b above 1 - 1e-5: the same transcript twice) is not counted as a negative.
    The candidates are one (micro)batch's: under gradient accumulation each microbatch contrasts with its own rows.
    """
    candidates, candidates_valid = teacher, valid
    if negatives is not None:
        candidates = jnp.concatenate([teacher, negatives.astype(teacher.dtype)], axis=0)
        candidates_valid = jnp.concatenate([valid, negatives_valid], axis=0)
    candidates = _l2_normalize(candidates)
    logits = _l2_normalize(student) @ candidates.T / temperature  # [B, B + N]
    own = jnp.arange(student.shape[0])
    is_own = own[:, None] == jnp.arange(candidates.shape[0])[None, :]
    duplicate = (candidates[: teacher.shape[0]] @ candidates.T > 1.0 - 1e-5) & ~is_own  # the first B rows: teacher
    logits = jnp.where(candidates_valid[None, :] & ~duplicate, logits, -jnp.inf)
    # A padding row scores finite zeros: its all--inf softmax would put NaN into the gradient through the where below.
    logits = jnp.where(valid[:, None], logits, 0.0)
    per_example = jax.nn.logsumexp(logits, axis=1) - logits[own, own]
    return jnp.where(valid, per_example, 0.0)


@gin.configurable
def sonar_speech(
    model,
    variables: dict,
    batch: dict,
    rng: jax.Array,
    step: jax.Array | int = 0,
    *,
    teacher_model=None,
    loss: str = "mse",
    stream: str = "paired",
    contrastive_weight: float = 0.0,
    contrastive_temperature: float = 0.05,
    negatives_stream: str | None = None,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage-2 loss: pooled speech embedding regresses the frozen stage-1 text embedding of the transcript.

    Student: model.encode_speech(waveform f32[B, N], waveform_length) -> model.pool(h, frame_length) f32[B, E].
    Teacher: `teacher_sentence_embedding` (precomputed batch[stream]["teacher_embedding"] or online from
    `teacher_model` (a SonarTextModel) with variables["teacher"]). `loss`: "mse" (mean over E) or "cosine"
    (1 - cosine similarity); examples with waveform_length 0 are padding and are ignored. `train`: SpecAugment and
    dropout on (rng feeds them). `step` is unused.
    `contrastive_weight` > 0 adds that weight times `contrastive_loss` (InfoNCE at `contrastive_temperature`) over
    the batch's teacher embeddings plus, with `negatives_stream` (e.g. "text"), the teacher embeddings of that
    stream's sentences. Not in the SONAR paper, whose students regress the embedding alone on millions of pairs: with
    a few thousand pairs the regression leaves the embedding too coarse to pick one sentence of a few hundred
    (BENCHMARKS.md, "SONAR with a contrastive term").
    Metrics: loss, cosine_similarity, retrieval_accuracy (in-batch nearest teacher by cosine is the right one), and
    distill_loss / contrastive_loss when the contrastive term is on.
    """
    del step
    if loss not in ("mse", "cosine"):
        raise ValueError(f"sonar_speech.loss must be 'mse' or 'cosine', got {loss!r}.")
    for name in {stream, negatives_stream if contrastive_weight else None} - {None}:
        if name not in batch:
            raise KeyError(
                f"sonar_speech reads batch[{name!r}] but the batch has streams {sorted(batch)}; set "
                "sonar_speech.stream / sonar_speech.negatives_stream or add that stream to STREAMS."
            )
    features = batch[stream]
    student_variables = {name: value for name, value in variables.items() if name != TEACHER_COLLECTION}
    speech_rng, pool_rng = jax.random.split(rng) if train else (None, None)
    hidden, frame_length = bound(model, student_variables, speech_rng).encode_speech(
        features["waveform"], features["waveform_length"], train=train
    )
    student = bound(model, student_variables, pool_rng).pool(hidden, frame_length, train=train)
    student = student.astype(jnp.float32)
    teacher = teacher_sentence_embedding(teacher_model, variables, features)
    if student.shape != teacher.shape:
        raise ValueError(
            f"speech pooler gives embeddings of shape {student.shape} but the teacher gives {teacher.shape}; make the "
            "pooler's output dim equal SonarTextModel.embedding_dim."
        )
    cosine = jnp.sum(_l2_normalize(student) * _l2_normalize(teacher), axis=-1)
    per_example = jnp.mean(jnp.square(student - teacher), axis=-1) if loss == "mse" else 1.0 - cosine
    valid = features["waveform_length"] > 0
    metrics = {
        "loss": masked_mean(per_example, valid),
        "cosine_similarity": masked_mean(cosine, valid),
        "retrieval_accuracy": masked_mean(in_batch_retrieval_hits(student, teacher, valid), valid),
    }
    if contrastive_weight:
        negatives = negatives_valid = None
        if negatives_stream is not None:
            text = batch[negatives_stream]
            negatives = teacher_sentence_embedding(teacher_model, variables, text)
            negatives_valid = text["token_length"] > 0
        contrastive = contrastive_loss(
            student, teacher, valid, negatives, negatives_valid, temperature=contrastive_temperature
        )
        metrics["distill_loss"] = metrics["loss"]
        metrics["contrastive_loss"] = masked_mean(contrastive, valid)
        metrics["loss"] = metrics["distill_loss"] + contrastive_weight * metrics["contrastive_loss"]
    return metrics["loss"], metrics


def load_sonar_teacher(checkpoint: str, *, step: int | None = None, item: str = "state", use_ema: bool = False) -> dict:
    """Stage-1 SonarTextModel params (numpy pytree) from an Orbax checkpoint written by maestro_jax.checkpoints.

    `checkpoint` may be a stage-1 model_dir (with checkpoints/), its checkpoints/ directory (numbered step
    subdirectories; `step` or the latest is used), one step directory holding the composite item `item`, or a bare
    pytree checkpoint (e.g. a params-only export). Returns the restored TrainState's "params" ("ema_params" when
    `use_ema`), or the whole tree when it has no such entry.
    """
    if not paths.as_path(checkpoint).is_dir():
        raise FileNotFoundError(
            f"SONAR teacher checkpoint {checkpoint!r} is not a directory; point "
            "init_teacher_from_checkpoint.checkpoint at the stage-1 model_dir or an export."
        )
    # os.path.join, not epath's "/": it keeps a gs:// URL as text (maestro_jax.paths); is_dir works for both.
    directory = paths.resolve(checkpoint)
    if paths.as_path(os.path.join(directory, "checkpoints")).is_dir():
        directory = os.path.join(directory, "checkpoints")
    if checkpoints.checkpoint_steps(directory):
        step = checkpoints.find_step(directory, step, step_option="init_teacher_from_checkpoint.step")
        directory = os.path.join(directory, str(step))
    if paths.as_path(os.path.join(directory, item)).is_dir():
        directory = os.path.join(directory, item)
    # Host NumPy restore: the teacher may come from a mesh this process does not have.
    tree = checkpoints.restore_pytree(directory)
    key = "ema_params" if use_ema else "params"
    if isinstance(tree, dict) and tree.get(key) is not None:
        return tree[key]
    if use_ema:
        raise ValueError(f"SONAR teacher checkpoint {directory!r} holds no EMA params; set use_ema=False.")
    return tree


def add_teacher(variables: dict, teacher_params: dict) -> dict:
    """Variables with the frozen teacher params under collection "teacher" (returns a new dict)."""
    return {**variables, TEACHER_COLLECTION: teacher_params}


@gin.configurable
def init_teacher_from_checkpoint(
    variables: dict, *, checkpoint: str = gin.REQUIRED, step: int | None = None, use_ema: bool = False
) -> dict:
    """Init hook for stage 2: adds the stage-1 params read by `load_sonar_teacher` to `variables`."""
    return add_teacher(variables, load_sonar_teacher(checkpoint, step=step, use_ema=use_ema))
