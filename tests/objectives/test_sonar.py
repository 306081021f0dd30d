"""SONAR objectives, teacher loading and evaluation helpers, checked against NumPy references and invariants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maestro_jax import checkpoints, trainer
from maestro_jax.models.sonar_text import EOS_ID, SonarTextModel, teacher_forcing_pair
from maestro_jax.objectives.sonar import (
    add_teacher,
    add_text_noise,
    contrastive_loss,
    load_sonar_teacher,
    sonar_speech,
    sonar_text,
)
from maestro_jax.sonar_eval import retrieval_error, zero_shot_transcribe

VOCAB = 16
EMBED = 8
TEXT_MODEL = SonarTextModel(
    vocab_size=VOCAB,
    model_dim=32,
    embedding_dim=EMBED,
    num_heads=2,
    mlp_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout_rate=0.0,
)
SENTENCES = [[3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15, 3], [5, 5, 9], [6, 13, 4, 8], [15, 14], [7, 3, 12, 10]]


_noise = jax.jit(add_text_noise, static_argnames=("mask_prob", "drop_prob", "shuffle_window"))


def _pack(sentences, length=7):
    tokens = np.zeros((len(sentences), length), np.int32)
    for row, sentence in enumerate(sentences):
        tokens[row, : len(sentence)] = sentence
    return tokens, np.array([len(s) for s in sentences], np.int32)


TOKENS, LENGTHS = _pack(SENTENCES)
TEXT_BATCH = {"text": {"tokens": TOKENS, "token_length": LENGTHS}}


@jax.jit
def _embed_and_decode(variables, tokens, lengths, decoder_inputs):
    return TEXT_MODEL.apply(variables, tokens, lengths, decoder_inputs, method="embed_and_decode")


@jax.jit
def _text_embedding(params, tokens, lengths):
    return TEXT_MODEL.apply({"params": params}, tokens, lengths, method="embed")


def _numpy_cross_entropy(logits, targets, mask):
    logits = np.asarray(logits, np.float64)
    log_norm = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    return np.sum((log_norm - picked) * mask) / np.sum(mask)


# ---------------------------------------------------------------- noise


def test_noise_shuffle_only_moves_tokens_within_window():
    tokens, lengths = _pack(SENTENCES * 20)
    noisy, noisy_lengths = jax.device_get(
        _noise(jax.random.key(0), tokens, lengths, mask_prob=0.0, drop_prob=0.0, shuffle_window=2)
    )
    np.testing.assert_array_equal(noisy_lengths, lengths)
    moved = 0
    for row, length in enumerate(lengths):
        assert sorted(noisy[row, :length]) == sorted(tokens[row, :length])
        assert np.all(noisy[row, length:] == 0)
        for position, token in enumerate(noisy[row, :length]):
            sources = np.flatnonzero(tokens[row, :length] == token)
            assert np.min(np.abs(sources - position)) <= 2
        moved += int(np.any(noisy[row] != tokens[row]))
    assert moved > 20  # the shuffle does something


def test_noise_drop_keeps_order_and_rate_and_mask_uses_unk():
    tokens = np.tile(np.arange(3, 23, dtype=np.int32), (200, 1))
    lengths = np.full(200, 20, np.int32)
    noisy, noisy_lengths = jax.device_get(
        _noise(jax.random.key(1), tokens, lengths, mask_prob=0.0, drop_prob=0.3, shuffle_window=0)
    )
    assert abs(1.0 - noisy_lengths.mean() / 20 - 0.3) < 0.03
    for row in range(200):
        kept = noisy[row, : noisy_lengths[row]]
        assert np.all(np.diff(kept) > 0) and np.all(noisy[row, noisy_lengths[row] :] == 0)
    masked, masked_lengths = jax.device_get(
        _noise(jax.random.key(2), tokens, lengths - 5, mask_prob=0.25, drop_prob=0.0, shuffle_window=0)
    )
    is_unk = masked[:, :15] == 2
    assert abs(is_unk.mean() - 0.25) < 0.02
    np.testing.assert_array_equal(np.where(is_unk, tokens[:, :15], masked[:, :15]), tokens[:, :15])
    assert np.all(masked[:, 15:] == 0)
    everything_dropped, one = jax.device_get(
        _noise(jax.random.key(3), tokens[:2], lengths[:2], mask_prob=0.0, drop_prob=1.0, shuffle_window=0)
    )
    np.testing.assert_array_equal(one, [1, 1])
    np.testing.assert_array_equal(everything_dropped[:, 0], [3, 3])


# ---------------------------------------------------------------- sonar_text


@pytest.fixture(scope="module")
def text_variables():
    return nn.meta.unbox(jax.jit(TEXT_MODEL.init)(jax.random.key(0), TEXT_BATCH))


def test_sonar_text_eval_loss_matches_numpy_cross_entropy(text_variables):
    objective = jax.jit(lambda v, b: sonar_text(TEXT_MODEL, v, b, jax.random.key(1), 0, train=False))
    loss, metrics = objective(text_variables, TEXT_BATCH)
    decoder_inputs, targets, mask = teacher_forcing_pair(TOKENS, LENGTHS)
    _, logits = _embed_and_decode(text_variables, TOKENS, LENGTHS, decoder_inputs)
    np.testing.assert_allclose(loss, _numpy_cross_entropy(logits, targets, np.asarray(mask)), rtol=1e-5)
    correct = (np.argmax(logits, -1) == np.asarray(targets)) & np.asarray(mask)
    np.testing.assert_allclose(metrics["token_accuracy"], correct.sum() / np.sum(mask), rtol=1e-6)
    assert float(metrics["num_tokens"]) == LENGTHS.sum() + len(LENGTHS)


def test_sonar_text_translation_scores_the_target_stream(text_variables):
    targets_tokens, target_lengths = _pack([s[::-1] + [4] for s in SENTENCES], length=8)
    batch = {"text": {**TEXT_BATCH["text"], "target_tokens": targets_tokens, "target_token_length": target_lengths}}
    loss, _ = jax.jit(lambda v, b: sonar_text(TEXT_MODEL, v, b, jax.random.key(1), 0, train=True))(
        text_variables, batch
    )
    decoder_inputs, targets, mask = teacher_forcing_pair(targets_tokens, target_lengths)
    # The source is not noised for translation, so train mode equals this clean forward pass (no dropout).
    _, logits = _embed_and_decode(text_variables, TOKENS, LENGTHS, decoder_inputs)
    np.testing.assert_allclose(loss, _numpy_cross_entropy(logits, targets, np.asarray(mask)), rtol=1e-5)


@pytest.fixture(scope="module")
def trained_text(text_variables):
    optimizer = optax.adam(1e-2)

    @jax.jit
    def train_step(params, opt_state, rng):
        grad_fn = jax.value_and_grad(lambda p: sonar_text(TEXT_MODEL, {"params": p}, TEXT_BATCH, rng, 0), has_aux=True)
        (loss, metrics), grads = grad_fn(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, metrics

    params = text_variables["params"]
    opt_state = optimizer.init(params)
    history = []
    for rng in jax.random.split(jax.random.key(4), 60):
        params, opt_state, metrics = train_step(params, opt_state, rng)
        history.append(jax.device_get(metrics))
    return params, history


def test_sonar_text_loss_falls(trained_text):
    _, history = trained_text
    first = np.mean([m["loss"] for m in history[:5]])
    last = np.mean([m["loss"] for m in history[-5:]])
    assert last < 0.5 * first, (first, last)
    assert history[-1]["token_accuracy"] > history[0]["token_accuracy"] + 0.3


def test_trained_text_model_reconstructs_sentences_zero_shot(trained_text):
    params, _ = trained_text
    embedding = _text_embedding(params, TOKENS, LENGTHS)
    decoded = zero_shot_transcribe(TEXT_MODEL, params, np.asarray(embedding), max_length=9, batch_size=4)
    assert len(decoded) == len(SENTENCES)
    exact = sum(hyp == ref for hyp, ref in zip(decoded, SENTENCES))
    assert exact >= 2, decoded
    assert all(EOS_ID not in hyp and 0 not in hyp for hyp in decoded)


# ---------------------------------------------------------------- sonar_speech


class TinySpeechStudent(nn.Module):
    """Test double with SpeechTextModel's encode_speech/pool signatures plus a text tower the loss must not reach."""

    @nn.compact
    def __call__(self, batch, train=False):
        paired = batch["paired"]
        hidden, frame_length = self.encode_speech(paired["waveform"], paired["waveform_length"], train=train)
        return self.pool(hidden, frame_length), self.text_tower(paired["tokens"])

    def setup(self):
        self.speech_tower = nn.Dense(16)
        self.pooler = nn.Dense(EMBED)
        self.text_tower = nn.Embed(VOCAB, 16)

    def encode_speech(self, waveform, waveform_length, *, train):
        frames = waveform.reshape(waveform.shape[0], -1, 4)
        return jnp.tanh(self.speech_tower(frames)), (waveform_length + 3) // 4

    def pool(self, hidden, length, *, train=False):
        valid = jnp.arange(hidden.shape[1])[None, :, None] < length[:, None, None]
        return self.pooler(jnp.sum(hidden * valid, 1) / jnp.maximum(length, 1)[:, None])


def _paired_batch():
    rng = np.random.default_rng(5)
    waveform_length = np.array([40, 32, 17, 40, 25, 9, 36], np.int32)
    waveform = rng.uniform(-1, 1, (7, 40)).astype(np.float32) * (np.arange(40)[None] < waveform_length[:, None])
    waveform_length[-1] = 0  # a padding example
    return {
        "paired": {"waveform": waveform, "waveform_length": waveform_length, "tokens": TOKENS, "token_length": LENGTHS}
    }


@pytest.fixture(scope="module")
def speech_setup(text_variables):
    student = TinySpeechStudent()
    batch = _paired_batch()
    variables = add_teacher(dict(jax.jit(student.init)(jax.random.key(6), batch)), text_variables["params"])
    return student, variables, batch


def _speech_objective(student, loss="mse"):
    return jax.jit(
        lambda variables, batch: sonar_speech(
            student, variables, batch, jax.random.key(7), 0, teacher_model=TEXT_MODEL, loss=loss
        )
    )


def test_sonar_speech_gradients_reach_only_the_student(speech_setup):
    student, variables, batch = speech_setup
    grads = jax.jit(jax.grad(lambda v: _speech_objective(student)(v, batch)[0]))(variables)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["teacher"]))
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["params"]["text_tower"]))
    for name in ("speech_tower", "pooler"):
        assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads["params"][name])), name

    optimizer = optax.adam(1e-2)

    @jax.jit
    def train_step(state, opt_state):
        grads = jax.grad(lambda p: _speech_objective(student)({**state, "params": p}, batch)[0])(state["params"])
        updates, opt_state = optimizer.update(grads, opt_state)
        return {**state, "params": optax.apply_updates(state["params"], updates)}, opt_state

    state, opt_state = variables, optimizer.init(variables["params"])
    for _ in range(3):
        state, opt_state = train_step(state, opt_state)
    jax.tree.map(np.testing.assert_array_equal, state["teacher"], variables["teacher"])
    changed = jax.tree.map(
        lambda a, b: np.any(a != b), state["params"]["speech_tower"], variables["params"]["speech_tower"]
    )
    assert all(jax.tree.leaves(changed))


def test_sonar_speech_precomputed_teacher_equals_online(speech_setup):
    student, variables, batch = speech_setup
    online_loss, online_metrics = _speech_objective(student)(variables, batch)
    teacher = _text_embedding(variables["teacher"], TOKENS, LENGTHS)
    precomputed = {"paired": {**batch["paired"], "teacher_embedding": np.asarray(teacher)}}
    without_teacher = {name: value for name, value in variables.items() if name != "teacher"}
    loss, metrics = _speech_objective(student)(without_teacher, precomputed)
    np.testing.assert_allclose(loss, online_loss, rtol=1e-6)
    for name in online_metrics:
        np.testing.assert_allclose(metrics[name], online_metrics[name], rtol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_sonar_speech_loss_and_metrics_match_numpy(speech_setup, loss):
    student, variables, batch = speech_setup
    value, metrics = _speech_objective(student, loss)(variables, batch)
    paired = batch["paired"]
    hidden, frames = student.apply(
        variables, paired["waveform"], paired["waveform_length"], train=False, method="encode_speech"
    )
    s = np.asarray(student.apply(variables, hidden, frames, method="pool"), np.float64)
    t = np.asarray(_text_embedding(variables["teacher"], TOKENS, LENGTHS), np.float64)
    valid = paired["waveform_length"] > 0
    s, t = s[valid], t[valid]
    cosine = np.sum(s * t, 1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
    per_example = np.mean((s - t) ** 2, 1) if loss == "mse" else 1 - cosine
    np.testing.assert_allclose(value, per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["cosine_similarity"], cosine.mean(), rtol=1e-5)
    hits = [np.argmax([np.dot(s[i], t[j]) / np.linalg.norm(t[j]) for j in range(len(t))]) == i for i in range(len(s))]
    np.testing.assert_allclose(metrics["retrieval_accuracy"], np.mean(hits), rtol=1e-6)


def _numpy_infonce(s, t, valid, negatives, negatives_valid, temperature):
    """Brute-force loop: row b's -log softmax at its own teacher row over valid, non-duplicate candidates."""
    unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(x, axis=-1, keepdims=True)
    candidates = np.concatenate([t, negatives])
    candidates_valid = np.concatenate([valid, negatives_valid])
    losses = []
    for b in range(len(s)):
        if not valid[b]:
            losses.append(0.0)
            continue
        kept = [
            j for j in range(len(candidates))
            if candidates_valid[j] and (j == b or np.dot(unit(t[b]), unit(candidates[j])) <= 1 - 1e-5)
        ]  # fmt: skip
        scores = np.array([np.dot(unit(s[b]), unit(candidates[j])) / temperature for j in kept])
        own = scores[kept.index(b)]
        losses.append(np.log(np.sum(np.exp(scores - scores.max()))) + scores.max() - own)
    return np.array(losses)


def test_contrastive_loss_matches_brute_force_with_duplicates_and_padding():
    rng = np.random.default_rng(12)
    student, teacher, negatives = (rng.normal(size=shape).astype(np.float32) for shape in ((6, 5), (6, 5), (4, 5)))
    teacher[3] = teacher[1]  # the same transcript twice in the batch
    negatives[2] = 2.0 * teacher[0]  # a text-stream sentence equal to a paired one (scale does not matter)
    valid = np.array([True, True, True, True, True, False])
    negatives_valid = np.array([True, False, True, True])
    loss_fn = jax.jit(functools.partial(contrastive_loss, temperature=0.1))
    value = loss_fn(student, teacher, valid, negatives, negatives_valid)
    expected = _numpy_infonce(student, teacher, valid, negatives, negatives_valid, 0.1)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    assert value[5] == 0
    # Without negatives: the batch alone; the padding row's -inf candidates leave the gradient finite.
    no_negatives = _numpy_infonce(student, teacher, valid, np.zeros((0, 5)), np.zeros(0, bool), 0.1)
    np.testing.assert_allclose(loss_fn(student, teacher, valid), no_negatives, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda s: jnp.sum(loss_fn(s, teacher, valid, negatives, negatives_valid)))(student)
    assert np.all(np.isfinite(grads)) and np.all(grads[5] == 0) and np.abs(grads[:5]).max() > 0


def test_sonar_speech_contrastive_term_adds_weighted_infonce_over_the_text_stream(speech_setup):
    student, variables, batch = speech_setup
    # Two new sentences, one that a paired row holds (the duplicate rule must drop it) and a padding row.
    text_tokens, text_lengths = _pack([[4, 4, 12], SENTENCES[2], [9, 3, 15, 6], []])
    batch = {**batch, "text": {"tokens": text_tokens, "token_length": text_lengths}}

    def objective(v, weight):
        return sonar_speech(
            student, v, batch, jax.random.key(7), 0, teacher_model=TEXT_MODEL, loss="cosine",
            contrastive_weight=weight, contrastive_temperature=0.1, negatives_stream="text",
        )  # fmt: skip

    plain_loss, _ = jax.jit(functools.partial(objective, weight=0.0))(variables)
    value, metrics = jax.jit(functools.partial(objective, weight=0.5))(variables)
    np.testing.assert_allclose(metrics["distill_loss"], plain_loss, rtol=1e-6)
    np.testing.assert_allclose(value, plain_loss + 0.5 * metrics["contrastive_loss"], rtol=1e-6)

    paired, text = batch["paired"], batch["text"]
    hidden, frames = student.apply(
        variables, paired["waveform"], paired["waveform_length"], train=False, method="encode_speech"
    )
    s = np.asarray(student.apply(variables, hidden, frames, method="pool"))
    t = np.asarray(_text_embedding(variables["teacher"], TOKENS, LENGTHS))
    n = np.asarray(_text_embedding(variables["teacher"], text["tokens"], text["token_length"]))
    valid = paired["waveform_length"] > 0
    expected = _numpy_infonce(s, t, valid, n, text["token_length"] > 0, 0.1)
    np.testing.assert_allclose(metrics["contrastive_loss"], expected[valid].mean(), rtol=1e-4)

    grads = jax.jit(jax.grad(lambda v: objective(v, 0.5)[0]))(variables)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["teacher"]))
    with pytest.raises(KeyError, match="negatives_stream"):
        sonar_speech(student, variables, _paired_batch(), jax.random.key(7), 0, teacher_model=TEXT_MODEL,
                     contrastive_weight=1.0, negatives_stream="text")  # fmt: skip


def _pooled_speech(model, waveform, waveform_length):
    return model.pool(*model.encode_speech(waveform, waveform_length, train=False))


def test_sonar_speech_trains_speech_tower_and_pooler_of_speech_text_model(text_variables):
    model_module = pytest.importorskip(
        "maestro_jax.models.model", reason="SpeechTextModel (maestro_jax/models/model.py) is not available yet"
    )
    from maestro_jax.models.config import ModelConfig

    config = ModelConfig(
        vocab_size=VOCAB, model_dim=16, num_heads=2, ff_multiplier=2, conv_kernel_size=3, dropout_rate=0.0,
        subsampling_channels=4, num_speech_layers=1, num_text_conv_layers=1, num_text_layers=1,
        num_duration_layers=1, num_refiner_layers=1, num_shared_layers=1, prediction_embed_dim=8, prediction_dim=8,
        joint_dim=8, num_pooler_layers=1, pooler_output_dim=EMBED, bestrq_codebook_size=8, bestrq_codebook_dim=4,
        subsampling="stack", relative_position=False, spec_augment=False,
    )  # fmt: skip
    model = model_module.SpeechTextModel(config)
    rng = np.random.default_rng(9)
    waveform_length = np.array([1600, 1200, 1450, 900, 1600, 1000, 1300], np.int32)
    waveform = 0.3 * rng.uniform(-1, 1, (7, 1600)).astype(np.float32)
    waveform *= np.arange(1600)[None] < waveform_length[:, None]
    batch = {"paired": {"waveform": waveform, "waveform_length": waveform_length, "tokens": TOKENS,
                        "token_length": LENGTHS}}  # fmt: skip

    # Init only what the objective touches (speech tower + pooler): a full init compiles every tower.
    speech_only = jax.jit(lambda key: model.init(key, waveform, waveform_length, method=_pooled_speech))
    variables = add_teacher(dict(nn.meta.unbox(speech_only(jax.random.key(10)))), text_variables["params"])

    def loss_fn(v):
        return sonar_speech(model, v, batch, jax.random.key(11), 0, teacher_model=TEXT_MODEL, loss="cosine")[0]

    grads = jax.jit(jax.grad(loss_fn))(variables)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads["teacher"]))
    assert sorted(grads["params"]) == ["pooler", "speech_tower"]
    for name, subtree in grads["params"].items():
        assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(subtree)), name


# ---------------------------------------------------------------- teacher loading and retrieval


def _shifted(tree, offset):
    return jax.tree.map(lambda x: np.asarray(x) + offset, tree)


def test_load_sonar_teacher_reads_the_trainers_checkpoints(tmp_path, text_variables):
    params = text_variables["params"]
    checkpointer = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    for step in (2, 5):
        zero = jnp.zeros((), jnp.int32)
        state = trainer.TrainState(
            step=jnp.array(step),
            params=_shifted(params, step),
            model_state={},
            opt_state=optax.adam(1e-3).init(params),
            ema_params=None,
            rng=jax.random.PRNGKey(0),
            skipped_steps=zero,
            consecutive_skipped=zero,
        )
        checkpointer.save(step, state, data_state={}, config_text="", force=True)
    checkpointer.wait_until_finished()
    for loaded, expected in (
        (load_sonar_teacher(str(tmp_path)), _shifted(params, 5)),
        (load_sonar_teacher(str(tmp_path / "checkpoints" / "5")), _shifted(params, 5)),
        (load_sonar_teacher(str(tmp_path / "checkpoints"), step=2), _shifted(params, 2)),
    ):
        jax.tree.map(np.testing.assert_allclose, loaded, expected)
    with pytest.raises(FileNotFoundError, match="has steps"):
        load_sonar_teacher(str(tmp_path), step=4)
    with pytest.raises(ValueError, match="no EMA"):
        load_sonar_teacher(str(tmp_path), use_ema=True)


def _numpy_retrieval_error(speech, text, transcripts):
    errors = 0
    for i in range(len(speech)):
        similarities = [
            np.dot(speech[i], text[j]) / (np.linalg.norm(speech[i]) * np.linalg.norm(text[j])) for j in range(len(text))
        ]
        nearest = int(np.argmax(similarities))  # ties: lowest index
        errors += transcripts[nearest] != transcripts[i]
    return errors / len(speech)


def _numpy_ratio_margin_error(speech, text, transcripts, k):
    """LASER's xsim with the ratio margin, one query at a time: k nearest text rows by cosine, each rescored by
    cos / mean(the query's k-NN mean cosine, the candidate's k-NN mean cosine among the speech rows)."""

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cosine = unit(speech) @ unit(text).T
    speech_mean = [np.mean(sorted(row, reverse=True)[:k]) for row in cosine]
    text_mean = [np.mean(sorted(column, reverse=True)[:k]) for column in cosine.T]
    errors = 0
    for i, row in enumerate(cosine):
        candidates = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        scores = [row[j] / ((speech_mean[i] + text_mean[j]) / 2) for j in candidates]
        retrieved = candidates[int(np.argmax(scores))]
        errors += transcripts[retrieved] != transcripts[i]
    return errors / len(speech)


def test_ratio_margin_retrieval_matches_laser_brute_force_and_discounts_a_hub():
    rng = np.random.default_rng(11)
    count, dim = 40, 8
    text = rng.normal(size=(count, dim))
    speech = text + 1.1 * rng.normal(size=text.shape)
    hub = rng.normal(size=dim)
    text[3] = hub
    speech += (
        0.8 * hub / np.linalg.norm(hub) * np.linalg.norm(speech, axis=1, keepdims=True)
    )  # every query leans to row 3
    transcripts = [f"t{i}" for i in range(count)]
    for k in (1, 4, 10):
        expected = _numpy_ratio_margin_error(speech, text, transcripts, k)
        assert retrieval_error(speech, text, transcripts, margin="ratio", k=k, chunk_size=7) == pytest.approx(expected)
    absolute = retrieval_error(speech, text, transcripts)
    assert absolute == pytest.approx(_numpy_retrieval_error(speech, text, transcripts))
    # k = 1 keeps only the nearest row, so the margin cannot change the choice.
    assert retrieval_error(speech, text, transcripts, margin="ratio", k=1) == pytest.approx(absolute)
    assert retrieval_error(speech, text, transcripts, margin="ratio", k=4) < absolute, "the hub is not discounted"
    with pytest.raises(ValueError, match="margin"):
        retrieval_error(speech, text, margin="csls")


def test_retrieval_error_matches_numpy_brute_force_with_ties_and_duplicates():
    rng = np.random.default_rng(8)
    text = rng.normal(size=(12, 6))
    text[7] = text[2]  # duplicate transcript: identical embedding
    text[9] = 2.0 * text[4]  # same direction, different transcript: an exact cosine tie
    transcripts = [f"t{i}" for i in range(12)]
    transcripts[7] = transcripts[2]
    speech = text + 0.3 * rng.normal(size=text.shape)
    speech[7] = text[2]  # nearest is row 2, which is the same transcript: a hit
    speech[9] = text[4]  # tie between rows 4 and 9; row 4 wins and is a different transcript: an error
    speech[5] = text[0]  # plainly wrong
    expected = _numpy_retrieval_error(speech, text, transcripts)
    assert expected > 0
    assert retrieval_error(speech, text, transcripts, chunk_size=5) == pytest.approx(expected)
    text_as_transcript = [tuple(row) for row in text]
    assert retrieval_error(speech, text) == pytest.approx(_numpy_retrieval_error(speech, text, text_as_transcript))
    # Querying with the text itself: only row 9 fails, losing its exact tie to row 4.
    assert retrieval_error(text, text) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="same"):
        retrieval_error(speech[:3], text)
