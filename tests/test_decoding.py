"""Decoding checks against NumPy reference decoders, brute-force enumeration and the transducer loss."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maestro_jax import decoding
from maestro_jax.inference import make_transcriber

VOCAB, HIDDEN, JOINT = 5, 6, 7


# ---------------------------------------------------------------------------------------------------------------------
# A toy RNN-T: tanh-RNN predictor and tanh joint with random weights, in JAX (for the decoders) and NumPy (references)
# ---------------------------------------------------------------------------------------------------------------------


def make_toy_weights(seed, vocab=VOCAB, scale=1.5):
    rng = np.random.default_rng(seed)
    return {
        "embed": rng.normal(size=(vocab, HIDDEN)) * scale,
        "recur": rng.normal(size=(HIDDEN, HIDDEN)) * scale / np.sqrt(HIDDEN),
        "to_joint": rng.normal(size=(HIDDEN, JOINT)) * scale,
        "out": rng.normal(size=(JOINT, vocab)) * scale,
        "out_bias": rng.normal(size=(vocab,)),
    }


class ToyTransducer:
    """predictor_init / predictor_step / joint_output_fn as in docs/CONTRACTS.md; carry = (h f32[B, H],)."""

    def __init__(self, weights):
        self.np = weights
        self.jax = jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), weights)

    def predictor_init(self, batch_size):
        return (jnp.zeros((batch_size, HIDDEN)),)

    def predictor_step(self, carry, token):
        w = self.jax
        h = jnp.tanh(w["embed"][token] + carry[0] @ w["recur"])
        return (h,), h @ w["to_joint"]

    @staticmethod
    def joint_output_fn(joint_params, z):
        return jnp.tanh(z) @ joint_params["out"] + joint_params["out_bias"]

    @property
    def joint_params(self):
        return {"out": self.jax["out"], "out_bias": self.jax["out_bias"]}

    # NumPy mirror, float64
    def np_pred_sequence(self, labels):
        """pred_proj [U+1, J] after the start token and each label."""
        w, h, out = self.np, np.zeros(HIDDEN), []
        for token in [0, *labels]:
            h = np.tanh(w["embed"][token] + h @ w["recur"])
            out.append(h @ w["to_joint"])
        return np.stack(out)

    def np_log_probs(self, enc_t, pred):
        logits = np.tanh(enc_t + pred) @ self.np["out"] + self.np["out_bias"]
        return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)

    def decoder_kwargs(self):
        return dict(
            predictor_init=self.predictor_init,
            predictor_step=self.predictor_step,
            joint_output_fn=self.joint_output_fn,
            joint_params=self.joint_params,
        )


def np_rnnt_greedy(model, enc, max_symbols, max_len):
    """Straightforward per-utterance greedy decoder; enc [T_b, J]. Returns (labels, alignment log-probability)."""
    labels, logprob = [], 0.0
    for t in range(enc.shape[0]):
        emitted = 0
        while True:
            log_probs = model.np_log_probs(enc[t], model.np_pred_sequence(labels)[-1])
            if emitted < max_symbols and len(labels) < max_len:
                best = int(np.argmax(log_probs))
            else:
                best = 0
            logprob += log_probs[best]
            if best == 0:
                break
            labels.append(best)
            emitted += 1
    return labels, logprob


def np_rnnt_log_likelihood(model, enc, labels):
    """log P(labels | enc) by the forward (alpha) recursion over the T x (U+1) lattice; enc [T_b, J]."""
    pred = model.np_pred_sequence(labels)
    log_probs = model.np_log_probs(enc[:, None, :], pred[None, :, :])  # [T, U+1, V]
    frames, states = log_probs.shape[:2]
    alpha = np.full((frames, states), -np.inf)
    for t in range(frames):
        for u in range(states):
            if t == 0 and u == 0:
                alpha[t, u] = 0.0
                continue
            from_blank = alpha[t - 1, u] + log_probs[t - 1, u, 0] if t > 0 else -np.inf
            from_label = alpha[t, u - 1] + log_probs[t, u - 1, labels[u - 1]] if u > 0 else -np.inf
            alpha[t, u] = np.logaddexp(from_blank, from_label)
    return alpha[-1, -1] + log_probs[-1, -1, 0]


def _rnnt_loss_or_none():
    try:
        from maestro_jax.losses.rnnt import rnnt_loss
    except ImportError:
        return None
    return rnnt_loss


def make_scorer(model):
    """(enc_proj, enc_lengths, tokens, lengths) -> log P(tokens | x) f32[B] for padded hypotheses: -rnnt_loss when the
    loss module exists, else the NumPy alpha recursion (switch here)."""
    rnnt_loss = _rnnt_loss_or_none()
    if rnnt_loss is None:

        def numpy_scores(enc_proj, enc_lengths, tokens, lengths):
            return np.array(
                [
                    np_rnnt_log_likelihood(model, np.asarray(e[:n], np.float64), list(np.asarray(y[:m])))
                    for e, n, y, m in zip(enc_proj, enc_lengths, tokens, lengths)
                ]
            )

        return numpy_scores

    @jax.jit
    def loss_scores(enc_proj, enc_lengths, tokens, lengths):
        feed = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens], axis=1)  # start token, then the labels
        _, pred = jax.lax.scan(model.predictor_step, model.predictor_init(tokens.shape[0]), feed.T)
        pred = jnp.swapaxes(pred, 0, 1)  # [B, U+1, J]
        logits = model.joint_output_fn(model.joint_params, enc_proj[:, :, None, :] + pred[:, None, :, :])
        return -rnnt_loss(logits, tokens, enc_lengths, lengths)

    return lambda *args: np.asarray(loss_scores(*args))


def random_encoder_batch(seed, batch, frames, min_frames=1, scale=1.5):
    rng = np.random.default_rng(seed)
    enc = rng.normal(size=(batch, frames, JOINT)).astype(np.float32) * scale
    lengths = rng.integers(min_frames, frames + 1, size=batch).astype(np.int32)
    return enc, lengths


def make_greedy(model, **options):
    return jax.jit(functools.partial(decoding.rnnt_greedy_decode, **model.decoder_kwargs(), **options))


def make_beam(model, **options):
    return jax.jit(functools.partial(decoding.rnnt_beam_search, **model.decoder_kwargs(), **options))


@pytest.fixture(scope="module")
def model():
    return ToyTransducer(make_toy_weights(0))


@pytest.fixture(scope="module")
def greedy(model):
    return make_greedy(model, max_symbols_per_frame=2, max_output_length=6)


# ---------------------------------------------------------------------------------------------------------------------
# RNN-T greedy
# ---------------------------------------------------------------------------------------------------------------------


def test_rnnt_greedy_matches_numpy_reference(model, greedy):
    enc, lengths = random_encoder_batch(1, batch=6, frames=7, min_frames=0)
    tokens, out_lengths, logprob = jax.device_get(greedy(enc, lengths))
    emitted_any = False
    for b in range(len(enc)):
        ref_labels, ref_logprob = np_rnnt_greedy(model, enc[b, : lengths[b]].astype(np.float64), 2, 6)
        assert decoding.token_lists(tokens[b], out_lengths[b]) == ref_labels
        assert np.all(tokens[b, out_lengths[b] :] == 0)
        np.testing.assert_allclose(logprob[b], ref_logprob, rtol=1e-4, atol=1e-4)
        emitted_any |= len(ref_labels) > 0
    assert emitted_any, "toy problem emits nothing; the comparison would be vacuous"


def test_rnnt_greedy_respects_symbol_and_length_limits(model):
    enc, lengths = random_encoder_batch(2, batch=4, frames=6)
    for max_symbols, max_len in [(1, 3), (3, 2)]:
        tokens, out_lengths, _ = make_greedy(model, max_symbols_per_frame=max_symbols, max_output_length=max_len)(
            enc, lengths
        )
        for b in range(len(enc)):
            ref_labels, _ = np_rnnt_greedy(model, enc[b, : lengths[b]].astype(np.float64), max_symbols, max_len)
            assert decoding.token_lists(tokens[b], out_lengths[b]) == ref_labels
        assert np.all(np.asarray(out_lengths) <= np.minimum(max_len, max_symbols * lengths))


def test_rnnt_greedy_padding_invariance(model, greedy):
    enc, lengths = random_encoder_batch(3, batch=6, frames=7)
    batched = jax.device_get(greedy(enc, lengths))
    garbage = enc.copy()
    for b in range(len(enc)):
        garbage[b, lengths[b] :] = 100.0
    with_garbage = jax.device_get(greedy(garbage, lengths))
    for b in range(len(enc)):
        alone_enc = np.zeros_like(enc[:1])
        alone_enc[0, : lengths[b]] = enc[b, : lengths[b]]
        alone = jax.device_get(greedy(alone_enc, lengths[b : b + 1]))
        for got in (batched, with_garbage):
            np.testing.assert_array_equal(got[0][b], alone[0][0])
            assert got[1][b] == alone[1][0]
            np.testing.assert_allclose(got[2][b], alone[2][0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# RNN-T beam search (alignment-length synchronous)
# ---------------------------------------------------------------------------------------------------------------------


def test_rnnt_beam_of_one_equals_greedy(model):
    enc, lengths = random_encoder_batch(5, batch=6, frames=7)
    options = dict(max_symbols_per_frame=1, max_output_length=5)
    greedy_tokens, greedy_lengths, greedy_logprob = make_greedy(model, **options)(enc, lengths)
    beam_tokens, beam_lengths, beam_scores = make_beam(model, beam_size=1, **options)(enc, lengths)
    np.testing.assert_array_equal(beam_tokens, greedy_tokens)
    np.testing.assert_array_equal(beam_lengths, greedy_lengths)
    np.testing.assert_allclose(beam_scores, greedy_logprob, rtol=1e-5, atol=1e-5)
    assert np.any(np.asarray(greedy_lengths) > 0)


def test_rnnt_exhaustive_beam_returns_every_sequence_with_its_exact_likelihood():
    vocab, max_len = 3, 3
    model = ToyTransducer(make_toy_weights(6, vocab=vocab, scale=0.7))
    sequences = [list(s) for n in range(max_len + 1) for s in itertools.product(range(1, vocab), repeat=n)]
    enc, lengths = random_encoder_batch(7, batch=3, frames=3, scale=0.7)
    beam = make_beam(
        model, beam_size=len(sequences) + 1, max_symbols_per_frame=max_len, max_output_length=max_len, nbest=True
    )
    tokens, out_lengths, scores = jax.device_get(beam(enc, lengths))
    for b in range(len(enc)):
        enc_b = enc[b, : lengths[b]].astype(np.float64)
        exact = {tuple(y): np_rnnt_log_likelihood(model, enc_b, y) for y in sequences}
        found = decoding.token_lists(tokens[b], out_lengths[b])
        assert sorted(map(tuple, found[: len(sequences)])) == sorted(exact)
        for y, score in zip(found[: len(sequences)], scores[b]):
            np.testing.assert_allclose(score, exact[tuple(y)], rtol=1e-4, atol=1e-4)
        assert scores[b, -1] == -np.inf
        assert np.all(np.diff(scores[b, : len(sequences)]) <= 0)


def np_internal_lm_log_prob(model, labels):
    """log P_ILM(labels): the joint fed with the prediction network alone, softmax over the labels without blank."""
    logits = np.tanh(model.np_pred_sequence(labels)[:-1]) @ model.np["out"] + model.np["out_bias"]  # [U, V]
    log_probs = logits[:, 1:] - np.logaddexp.reduce(logits[:, 1:], axis=-1, keepdims=True)
    return float(sum(log_probs[u, y - 1] for u, y in enumerate(labels)))


def test_rnnt_exhaustive_beam_with_internal_lm_fusion_and_length_reward_scores_every_sequence_exactly():
    vocab, max_len, weight, reward = 3, 3, 0.7, 0.4
    model = ToyTransducer(make_toy_weights(6, vocab=vocab, scale=0.7))
    sequences = [list(s) for n in range(max_len + 1) for s in itertools.product(range(1, vocab), repeat=n)]
    enc, lengths = random_encoder_batch(7, batch=3, frames=3, scale=0.7)
    options = dict(beam_size=len(sequences) + 1, max_symbols_per_frame=max_len, max_output_length=max_len, nbest=True)
    fused_beam = make_beam(model, ilm_fusion_weight=weight, length_reward=reward, **options)
    tokens, out_lengths, scores = jax.device_get(fused_beam(enc, lengths))
    plain_best = jax.device_get(make_beam(model, **options)(enc, lengths))
    for b in range(len(enc)):
        enc_b = enc[b, : lengths[b]].astype(np.float64)
        fused = {
            tuple(y): np_rnnt_log_likelihood(model, enc_b, y)
            + weight * np_internal_lm_log_prob(model, y)
            + reward * len(y)
            for y in sequences
        }
        found = decoding.token_lists(tokens[b], out_lengths[b])
        assert sorted(map(tuple, found[: len(sequences)])) == sorted(fused)
        for y, score in zip(found[: len(sequences)], scores[b]):
            np.testing.assert_allclose(score, fused[tuple(y)], rtol=1e-4, atol=1e-4)
    # The fusion must reorder the n-best somewhere, or this test could not tell it from plain beam search.
    plain_order = [decoding.token_lists(plain_best[0][b], plain_best[1][b]) for b in range(len(enc))]
    fused_order = [decoding.token_lists(tokens[b], out_lengths[b]) for b in range(len(enc))]
    assert plain_order != fused_order


@pytest.mark.parametrize("option", ["ilm_fusion_weight", "length_reward"])
def test_rnnt_beam_rejects_a_negative_fusion_option(model, option):
    enc, lengths = random_encoder_batch(5, batch=2, frames=4)
    with pytest.raises(ValueError, match=option):
        decoding.rnnt_beam_search(
            enc, lengths, **model.decoder_kwargs(), beam_size=2, max_output_length=3, **{option: -0.5}
        )


@pytest.fixture(scope="module")
def beam3(model):
    return make_beam(model, beam_size=3, max_output_length=6, nbest=True)


def test_rnnt_beam_padding_invariance(beam3):
    beam = beam3
    enc, lengths = random_encoder_batch(8, batch=4, frames=7)
    garbage = enc.copy()
    for b in range(len(enc)):
        garbage[b, lengths[b] :] = -50.0
    batched = jax.device_get(beam(garbage, lengths))
    for b in range(len(enc)):
        alone_enc = np.zeros_like(enc[:1])
        alone_enc[0, : lengths[b]] = enc[b, : lengths[b]]
        alone = jax.device_get(beam(alone_enc, lengths[b : b + 1]))
        np.testing.assert_array_equal(batched[0][b], alone[0][0])
        np.testing.assert_array_equal(batched[1][b], alone[1][0])
        np.testing.assert_allclose(batched[2][b], alone[2][0], rtol=1e-5)


def test_rnnt_beam_beats_greedy_on_random_problems():
    problems = 100
    # Blank-dominant like a trained transducer (0.2-0.5 labels per frame); on label-heavy random toys that race to the
    # length cap, beam 4 ties or beats greedy in only ~88-98% of problems (see the decoding report).
    weights = make_toy_weights(9, scale=1.0)
    weights["out_bias"][0] += 4.0
    model = ToyTransducer(weights)
    enc, lengths = random_encoder_batch(19, batch=problems, frames=8, scale=1.0)
    enc, lengths = jnp.asarray(enc), jnp.asarray(lengths)
    greedy_tokens, greedy_lengths, greedy_logprob = make_greedy(model, max_output_length=8)(enc, lengths)
    beam_tokens, beam_lengths, beam_scores = make_beam(model, beam_size=4, max_output_length=8)(enc, lengths)
    score = make_scorer(model)
    greedy_likelihood = score(enc, lengths, greedy_tokens, greedy_lengths)
    beam_likelihood = score(enc, lengths, beam_tokens, beam_lengths)
    assert np.all(np.asarray(greedy_logprob) <= greedy_likelihood + 1e-4)  # greedy scores one alignment path
    assert np.all(np.asarray(beam_scores) <= beam_likelihood + 1e-4)  # the search sums a subset of alignments
    assert np.mean(beam_likelihood >= greedy_likelihood - 1e-5) >= 0.95
    assert np.mean(beam_likelihood > greedy_likelihood + 1e-3) > 0.05, "beam never improves: test is not probing"


def test_rnnt_beam_silent_utterance_gives_empty_output(beam3):
    enc = np.ones((4, 7, JOINT), np.float32)
    tokens, lengths, scores = jax.device_get(beam3(enc, np.array([0, 7, 3, 0], np.int32)))
    for b in (0, 3):
        assert lengths[b, 0] == 0 and scores[b, 0] == 0.0 and np.all(tokens[b] == 0)
        assert np.all(np.isneginf(scores[b, 1:]))
    assert np.all(scores[1:3] < 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# CTC
# ---------------------------------------------------------------------------------------------------------------------


ctc_greedy = jax.jit(decoding.ctc_greedy_decode, static_argnames="blank_id")


def np_ctc_greedy(log_probs):
    best = np.argmax(log_probs, axis=-1)
    return [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def np_collapse(path):
    return tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))


def np_ctc_labelling_log_probs(log_probs):
    """{labelling: log P(labelling)} by enumerating all V^T alignments of log_probs [T, V]."""
    totals = {}
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        score = sum(log_probs[t, c] for t, c in enumerate(path))
        key = np_collapse(path)
        totals[key] = np.logaddexp(totals.get(key, -np.inf), score)
    return totals


def random_ctc_batch(seed, batch, frames, vocab, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, frames, vocab)).astype(np.float32) * scale
    lengths = rng.integers(1, frames + 1, size=batch).astype(np.int32)
    return logits, lengths


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def test_ctc_greedy_matches_numpy_reference():
    logits, lengths = random_ctc_batch(11, batch=6, frames=12, vocab=4, scale=1.0)
    logits[0, :, 2] += 5.0  # a long run of one label must collapse to a single token
    tokens, out_lengths = ctc_greedy(logits, lengths)
    for b in range(len(logits)):
        assert decoding.token_lists(tokens[b], out_lengths[b]) == np_ctc_greedy(logits[b, : lengths[b]])
        assert np.all(np.asarray(tokens[b, out_lengths[b] :]) == 0)
    assert decoding.token_lists(tokens[0], out_lengths[0]) == [2]


@pytest.fixture(scope="module")
def ctc_exhaustive_problem():
    logits, lengths = random_ctc_batch(12, batch=6, frames=5, vocab=3)
    search = jax.jit(functools.partial(decoding.ctc_prefix_beam_search, beam_size=64, nbest=True))
    return logits, lengths, jax.device_get(search(logits, lengths))


def test_ctc_prefix_beam_search_matches_brute_force(ctc_exhaustive_problem):
    logits, lengths, (tokens, out_lengths, scores) = ctc_exhaustive_problem
    for b in range(len(logits)):
        exact = np_ctc_labelling_log_probs(np_log_softmax(logits[b, : lengths[b]]))
        best = max(exact, key=exact.get)
        assert tuple(decoding.token_lists(tokens[b, 0], out_lengths[b, 0])) == best
        np.testing.assert_allclose(scores[b, 0], exact[best], rtol=1e-5, atol=1e-5)
        found = decoding.token_lists(tokens[b], out_lengths[b])
        for y, score in zip(found[: len(exact)], scores[b]):
            np.testing.assert_allclose(score, exact[tuple(y)], rtol=1e-4, atol=1e-4)
        assert np.all(np.isneginf(scores[b, len(exact) :]))


def test_ctc_prefix_beam_scores_agree_with_optax(ctc_exhaustive_problem):
    logits, lengths, (tokens, out_lengths, scores) = ctc_exhaustive_problem
    frames = logits.shape[1]
    logit_paddings = (np.arange(frames) >= lengths[:, None]).astype(np.float32)
    label_paddings = (np.arange(frames) >= np.asarray(out_lengths[:, 0])[:, None]).astype(np.float32)
    loss = jax.jit(optax.ctc_loss)(logits, logit_paddings, tokens[:, 0], label_paddings)
    np.testing.assert_allclose(scores[:, 0], -np.asarray(loss), rtol=1e-4, atol=1e-4)


def test_ctc_small_beam_beats_greedy_and_is_padding_invariant():
    logits, lengths = random_ctc_batch(13, batch=40, frames=5, vocab=3, scale=1.0)
    search = jax.jit(functools.partial(decoding.ctc_prefix_beam_search, beam_size=3))
    tokens, out_lengths, scores = jax.device_get(search(logits, lengths))
    greedy_tokens, greedy_lengths = jax.device_get(ctc_greedy(logits, lengths))
    beam_log_prob, greedy_log_prob = [], []
    for b in range(len(logits)):
        exact = np_ctc_labelling_log_probs(np_log_softmax(logits[b, : lengths[b]]))
        beam_log_prob.append(exact[tuple(decoding.token_lists(tokens[b], out_lengths[b]))])
        greedy_log_prob.append(exact[tuple(decoding.token_lists(greedy_tokens[b], greedy_lengths[b]))])
    beam_log_prob, greedy_log_prob = np.array(beam_log_prob), np.array(greedy_log_prob)
    # A pruned prefix that re-enters the beam loses the mass of its pruned paths, so beam 3 may rarely lose to greedy.
    assert np.mean(beam_log_prob >= greedy_log_prob - 1e-6) >= 0.95
    assert np.any(beam_log_prob > greedy_log_prob + 1e-3), "beam never beats greedy: test is not probing"
    assert np.all(scores <= beam_log_prob + 1e-5)  # the kept paths are a subset of all alignments

    garbage = logits.copy()
    for b in range(len(logits)):
        garbage[b, lengths[b] :] = 9.0 * np.arange(3)
    padded = jax.device_get(search(garbage, lengths))
    for got, want in zip(padded, (tokens, out_lengths, scores)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_token_lists_strips_padding_for_batches_and_nbest():
    tokens = np.array([[[3, 4, 0], [5, 0, 0]], [[0, 0, 0], [1, 2, 3]]])
    lengths = np.array([[2, 1], [0, 3]])
    assert decoding.token_lists(tokens, lengths) == [[[3, 4], [5]], [[], [1, 2, 3]]]
    assert decoding.token_lists(tokens[:, 0], lengths[:, 0]) == [[3, 4], []]
    with pytest.raises(ValueError, match="disagree"):
        decoding.token_lists(tokens, lengths[0])


def test_bad_options_name_the_option(model):
    enc, lengths = np.zeros((1, 2, JOINT), np.float32), np.array([2], np.int32)
    with pytest.raises(ValueError, match="beam_size=0"):
        decoding.rnnt_beam_search(enc, lengths, **model.decoder_kwargs(), beam_size=0, max_output_length=3)
    with pytest.raises(ValueError, match="max_symbols_per_frame=0"):
        kwargs = model.decoder_kwargs()
        decoding.rnnt_greedy_decode(enc, lengths, **kwargs, max_symbols_per_frame=0, max_output_length=3)
    with pytest.raises(ValueError, match="blank_id=7"):
        decoding.ctc_greedy_decode(np.zeros((1, 2, 3)), lengths, blank_id=7)
    with pytest.raises(ValueError, match="need decoder='rnnt_beam'"):  # fusion is a beam-search option only
        make_transcriber(None, decoder="rnnt_greedy", ilm_fusion_weight=0.3)
