"""The stateless prediction network (ModelConfig.prediction_network="stateless") against a NumPy reference built from
its params, its step-wise decoding form against the sequence form, and its bounded label context."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.models.config import ModelConfig
from maestro_jax.models.rnnt_decoder import RNNTDecoder

V, E, P, J, C = 16, 4, 8, 6, 3
TOKENS = np.array([[3, 5, 7, 9, 11], [2, 4, 6, 0, 0]], np.int32)
TOKEN_LENGTH = np.array([5, 3], np.int32)


def _config(**changes) -> ModelConfig:
    settings = dict(vocab_size=V, prediction_embed_dim=E, prediction_dim=P, joint_dim=J, dropout_rate=0.0)
    settings.update(prediction_network="stateless", prediction_context=C)
    settings.update(changes)
    return dataclasses.replace(ModelConfig(), **settings)


@pytest.fixture(scope="module")
def stateless():
    decoder = RNNTDecoder(_config())
    variables = decoder.init(jax.random.key(0), TOKENS, TOKEN_LENGTH, train=False, method="predict")
    return decoder, variables


def _numpy_predict(params: dict, tokens: np.ndarray, token_length: np.ndarray) -> np.ndarray:
    """pred_proj [B, U+1, J] by the definition: position u sees labels u-C+1..u of [start, tokens...]."""
    params = jax.tree.map(np.asarray, nn.meta.unbox(params))
    table = params["embedding"]["embedding"]
    out = np.zeros((tokens.shape[0], tokens.shape[1] + 1, J), np.float32)
    for b in range(tokens.shape[0]):
        labels = [0] * C + list(tokens[b, : token_length[b]])  # start symbols before the first label
        for u in range(token_length[b] + 1):
            window = labels[u : u + C]
            x = np.concatenate([table[t] for t in window])
            hidden = np.maximum(x @ params["context"]["kernel"] + params["context"]["bias"], 0.0)
            out[b, u] = hidden @ params["prediction_proj"]["kernel"] + params["prediction_proj"]["bias"]
    return out


def test_predict_matches_numpy_reference(stateless):
    decoder, variables = stateless
    got = decoder.apply(variables, TOKENS, TOKEN_LENGTH, train=False, method="predict")
    np.testing.assert_allclose(got, _numpy_predict(variables["params"], TOKENS, TOKEN_LENGTH), rtol=1e-5, atol=1e-5)


def test_step_by_step_equals_predict(stateless):
    decoder, variables = stateless
    predicted = decoder.apply(variables, TOKENS, TOKEN_LENGTH, train=False, method="predict")
    carry = decoder.apply(variables, 2, method="initial_carry")
    assert jax.tree.map(jnp.shape, carry) == ((2, C - 1),)
    stepped = []
    for token in np.concatenate([np.zeros((2, 1), np.int32), TOKENS], axis=1).T:
        carry, pred_proj = decoder.apply(variables, carry, jnp.asarray(token), method="step")
        stepped.append(pred_proj)
    stepped = np.stack(stepped, axis=1)
    np.testing.assert_allclose(stepped[0], predicted[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stepped[1, :4], predicted[1, :4], rtol=1e-6, atol=1e-6)


def test_only_the_last_labels_matter_and_padding_changes_nothing(stateless):
    decoder, variables = stateless
    base = decoder.apply(variables, TOKENS, TOKEN_LENGTH, train=False, method="predict")
    changed = TOKENS.copy()
    changed[0, 0] = 13  # seen by positions 1..C only
    changed[1, 3:] = 7  # padding
    other = decoder.apply(variables, changed, TOKEN_LENGTH, train=False, method="predict")
    np.testing.assert_array_equal(other[0, C + 1 :], base[0, C + 1 :])
    assert not np.allclose(other[0, 1 : C + 1], base[0, 1 : C + 1])
    np.testing.assert_array_equal(other[1], base[1])
    np.testing.assert_array_equal(base[1, 4:], 0.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prediction_network="gru"), "prediction_network='gru'"),
        (dict(prediction_context=0), "prediction_context=0"),
    ],
)
def test_bad_prediction_network_settings_are_named(changes, message):
    decoder = RNNTDecoder(_config(**changes))
    with pytest.raises(ValueError, match=message):
        decoder.init(jax.random.key(0), TOKENS, TOKEN_LENGTH, train=False, method="predict")
