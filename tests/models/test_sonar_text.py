"""SonarTextModel: shapes, logical axis names, padding invariance, causality, greedy decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maestro_jax.models.sonar_text import EOS_ID, START_ID, SonarTextModel, teacher_forcing_pair

VOCAB = 12
TINY = dict(
    vocab_size=VOCAB,
    model_dim=16,
    embedding_dim=8,
    num_heads=2,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout_rate=0.0,
)
TOKENS = np.array([[3, 4, 5, 6, 0, 0], [7, 8, 9, 0, 0, 0], [10, 11, 3, 4, 5, 6], [5, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([4, 3, 6, 1], np.int32)


@pytest.fixture(scope="module")
def model_and_variables():
    model = SonarTextModel(**TINY)
    variables = jax.jit(model.init)(jax.random.key(0), {"text": {"tokens": TOKENS, "token_length": LENGTHS}})
    return model, nn.meta.unbox(variables), variables


@pytest.fixture(scope="module")
def embed_fn(model_and_variables):
    model, variables, _ = model_and_variables
    return jax.jit(lambda tokens, lengths: model.apply(variables, tokens, lengths, method=SonarTextModel.embed))


@pytest.fixture(scope="module")
def logits_fn(model_and_variables):
    model, variables, _ = model_and_variables
    return jax.jit(lambda emb, inputs: model.apply(variables, emb, inputs, method=SonarTextModel.decode_logits))


def test_shapes_and_logical_axis_names(model_and_variables, embed_fn, logits_fn):
    _, _, boxed = model_and_variables
    embedding = embed_fn(TOKENS, LENGTHS)
    assert embedding.shape == (4, 8) and embedding.dtype == jnp.float32
    assert logits_fn(embedding, TOKENS).shape == (4, 6, VOCAB)
    params = boxed["params"]
    assert params["token_embedding"]["embedding"].names == ("vocab", "embed")
    attention = params["decoder_self_attention_0"]
    assert attention["query"]["kernel"].names == ("embed", "heads", "kv")
    assert attention["out"]["kernel"].names == ("heads", "kv", "embed")
    assert params["decoder_cross_attention_0"]["feed_forward"]["hidden"]["kernel"].names == ("embed", "mlp")
    assert params["sentence_projection"]["kernel"].names == ("embed", "mlp")
    assert params["output_projection"]["kernel"].names == ("embed", "vocab")


def test_memory_slots_project_embedding_to_several_vectors():
    model = SonarTextModel(**{**TINY, "memory_slots": 3})
    batch = {"text": {"tokens": TOKENS, "token_length": LENGTHS}}
    variables = jax.eval_shape(model.init, jax.random.key(1), batch)
    assert nn.meta.unbox(variables)["params"]["memory_projection"]["kernel"].shape == (8, 3 * 16)
    embedding, logits = jax.eval_shape(model.apply, variables, batch)
    assert embedding.shape == (4, 8) and logits.shape == (4, 7, VOCAB)


def test_padding_never_changes_embedding(embed_fn):
    reference = np.asarray(embed_fn(TOKENS, LENGTHS))
    rng = np.random.default_rng(0)
    junk = np.where(np.arange(6)[None, :] < LENGTHS[:, None], TOKENS, rng.integers(1, VOCAB, TOKENS.shape))
    np.testing.assert_allclose(embed_fn(junk.astype(np.int32), LENGTHS), reference, atol=1e-5)
    longer = np.pad(TOKENS, ((0, 0), (0, 5)), constant_values=7)
    np.testing.assert_allclose(embed_fn(longer, LENGTHS), reference, atol=1e-5)
    # Sanity: a valid token does change it.
    changed = TOKENS.copy()
    changed[0, 0] = 9
    assert np.abs(np.asarray(embed_fn(changed, LENGTHS))[0] - reference[0]).max() > 1e-4


def test_decoder_is_causal(embed_fn, logits_fn):
    embedding = embed_fn(TOKENS, LENGTHS)
    inputs, _, _ = teacher_forcing_pair(TOKENS, LENGTHS)
    reference = np.asarray(logits_fn(embedding, inputs))
    position = 3
    changed = np.asarray(inputs).copy()
    changed[:, position] = (changed[:, position] + 5) % VOCAB
    changed[:, position + 1 :] = 4
    logits = np.asarray(logits_fn(embedding, changed))
    np.testing.assert_allclose(logits[:, :position], reference[:, :position], atol=1e-5)
    assert np.abs(logits[:, position] - reference[:, position]).max() > 1e-4


def test_teacher_forcing_pair_matches_numpy():
    inputs, targets, mask = jax.device_get(teacher_forcing_pair(TOKENS, LENGTHS))
    for b, length in enumerate(LENGTHS):
        sentence = TOKENS[b, :length].tolist()
        pad = [0] * (6 - length)
        assert inputs[b].tolist() == [START_ID, *sentence, *pad]
        assert targets[b].tolist() == [*sentence, EOS_ID, *pad]
        assert mask[b].tolist() == [True] * (length + 1) + [False] * len(pad)


def _greedy_reference(logits_fn, embedding, max_length):
    """Python loop over positions, re-running the decoder on the prefix buffer; each row stops at its first eos."""
    batch = embedding.shape[0]
    prefix = np.zeros((batch, max_length + 1), np.int32)
    prefix[:, 0] = START_ID
    outputs = [[] for _ in range(batch)]
    finished = np.zeros(batch, bool)
    for position in range(max_length):
        step_tokens = np.argmax(np.asarray(logits_fn(embedding, prefix))[:, position], axis=-1)
        for b in np.flatnonzero(~finished):
            if step_tokens[b] == EOS_ID:
                finished[b] = True
            else:
                outputs[b].append(int(step_tokens[b]))
        prefix[:, position + 1] = step_tokens
    return outputs


def test_greedy_decode_matches_step_by_step_reference(model_and_variables, embed_fn, logits_fn):
    model, variables, _ = model_and_variables
    # Random embeddings of large norm so the untrained decoder emits varied tokens, not only eos.
    embedding = 5.0 * jax.random.normal(jax.random.key(3), (4, 8))
    tokens, lengths = jax.jit(model.greedy_decode, static_argnums=2)(variables, embedding, 5)
    expected = _greedy_reference(logits_fn, np.asarray(embedding), 5)
    for b in range(4):
        assert tokens[b, : lengths[b]].tolist() == expected[b]
        assert np.all(np.asarray(tokens[b, lengths[b] :]) == 0)


def test_greedy_decode_reconstructs_overfit_sentences(model_and_variables):
    model, variables, _ = model_and_variables
    decoder_inputs, targets, mask = teacher_forcing_pair(TOKENS, LENGTHS)
    optimizer = optax.adam(1e-2)

    def loss_fn(params):
        _, logits = model.apply(
            {"params": params}, TOKENS, LENGTHS, decoder_inputs, method=SonarTextModel.embed_and_decode
        )
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    params = variables["params"]
    opt_state = optimizer.init(params)
    for _ in range(60):
        params, opt_state, loss = train_step(params, opt_state)
    assert float(loss) < 0.05
    trained = {"params": params}
    embedding = model.apply(trained, TOKENS, LENGTHS, method=SonarTextModel.embed)
    tokens, lengths = jax.jit(model.greedy_decode, static_argnums=2)(trained, embedding, 8)
    np.testing.assert_array_equal(lengths, LENGTHS)
    np.testing.assert_array_equal(np.asarray(tokens)[:, :6], TOKENS)
