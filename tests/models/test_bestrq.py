"""BEST-RQ quantizer against a NumPy nearest-neighbour reference, frozen collection, and span masking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.models.bestrq import BestRQQuantizer, span_mask

B, T0, M = 2, 21, 8


@pytest.fixture(scope="module")
def quantizer_case():
    quantizer = BestRQQuantizer(codebook_size=32, codebook_dim=4, stack_factor=4, num_mel_bins=M)
    features = jax.random.normal(jax.random.key(0), (B, T0, M)) * 3.0 + 1.0
    length = jnp.array([21, 13])
    variables = quantizer.init(jax.random.key(1), features, length)
    apply = jax.jit(lambda feats, lengths: quantizer.apply(variables, feats, lengths))
    return variables, apply, features, length


def test_projection_and_codebook_are_frozen(quantizer_case):
    variables = quantizer_case[0]
    assert "params" not in variables
    assert set(variables["frozen"]) == {"projection", "codebook"}
    codebook = np.asarray(variables["frozen"]["codebook"].value)
    np.testing.assert_allclose(np.linalg.norm(codebook, axis=-1), 1.0, rtol=1e-5)


def test_labels_match_numpy_nearest_neighbour(quantizer_case):
    variables, apply, features, length = quantizer_case
    labels, label_length = apply(features, length)
    np.testing.assert_array_equal(label_length, [5, 3])
    projection = np.asarray(variables["frozen"]["projection"].value, np.float64)
    codebook = np.asarray(variables["frozen"]["codebook"].value, np.float64)
    for b in range(B):
        valid = np.asarray(features[b, : length[b]], np.float64)
        normalised = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + 1e-5)
        stacked = normalised[: (len(valid) // 4) * 4].reshape(-1, 4 * M)
        projected = stacked @ projection
        cosine = (projected / np.linalg.norm(projected, axis=-1, keepdims=True)) @ codebook.T
        np.testing.assert_array_equal(labels[b, : label_length[b]], cosine.argmax(-1))
        np.testing.assert_array_equal(labels[b, label_length[b] :], 0)


def test_labels_stable_and_padding_invariant(quantizer_case):
    _, apply, features, length = quantizer_case
    labels, _ = apply(features, length)
    np.testing.assert_array_equal(apply(features, length)[0], labels)
    np.testing.assert_array_equal(apply(features.at[1, 13:].set(99.0), length)[0], labels)
    assert len(np.unique(np.asarray(labels[0]))) > 1


def test_span_mask_matches_brute_force():
    rng, length, frames = jax.random.key(3), jnp.array([30, 17]), 30
    mask = np.asarray(span_mask(rng, length, frames, mask_prob=0.1, span=4))
    starts = np.asarray(jax.random.bernoulli(rng, 0.1, (2, frames)))
    expected = np.zeros((2, frames), bool)
    for b in range(2):
        for t in range(int(length[b])):
            if starts[b, t]:
                expected[b, t : min(t + 4, int(length[b]))] = True
    np.testing.assert_array_equal(mask, expected)
    assert expected.any()


def test_span_mask_full_probability_masks_exactly_valid_frames():
    mask = span_mask(jax.random.key(0), jnp.array([5, 0]), 8, mask_prob=1.0, span=3)
    np.testing.assert_array_equal(mask, np.arange(8)[None, :] < np.array([[5], [0]]))


def test_init_is_deterministic_given_rng(quantizer_case):
    variables, _, features, length = quantizer_case
    quantizer = BestRQQuantizer(codebook_size=32, codebook_dim=4, stack_factor=4, num_mel_bins=M)
    again = quantizer.init(jax.random.key(1), features, length)
    other = quantizer.init(jax.random.key(2), features, length)
    unbox = nn.meta.unbox
    jax.tree.map(np.testing.assert_array_equal, unbox(again), unbox(variables))
    assert not np.allclose(unbox(other)["frozen"]["codebook"], unbox(variables)["frozen"]["codebook"])
