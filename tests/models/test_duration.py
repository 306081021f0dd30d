"""resample_by_duration against NumPy repeat (values, lengths, truncation, gradients); duration model; refiner."""

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.models.config import ModelConfig
from maestro_jax.models.duration import DurationModel, Refiner, resample_by_duration

X = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)  # [B, U, D]
DURATIONS = np.array([[2, 0, 3, 1], [1, 4, 9, 9], [3, 3, 3, 3]], np.int32)
LENGTHS = np.array([4, 2, 4], np.int32)  # example 1: tokens 2, 3 are padding; example 2 overflows 10 frames
MAX_FRAMES = 10


def _numpy_resample(x, durations, lengths, max_frames):
    out = np.zeros((x.shape[0], max_frames, x.shape[2]), np.float32)
    out_lengths = []
    for b in range(x.shape[0]):
        repeated = np.repeat(x[b, : lengths[b]], durations[b, : lengths[b]], axis=0)[:max_frames]
        out[b, : len(repeated)] = repeated
        out_lengths.append(len(repeated))
    return out, np.array(out_lengths)


def test_resample_matches_numpy_repeat_and_truncates():
    y, length = resample_by_duration(X, DURATIONS, LENGTHS, max_frames=MAX_FRAMES, add_position=False)
    expected, expected_length = _numpy_resample(X, DURATIONS, LENGTHS, MAX_FRAMES)
    np.testing.assert_array_equal(length, expected_length)
    np.testing.assert_array_equal(expected_length, [6, 5, 10])
    np.testing.assert_array_equal(y, expected)


def test_resample_position_is_index_within_token():
    with_position, _ = resample_by_duration(X, DURATIONS, LENGTHS, max_frames=MAX_FRAMES)
    without, _ = resample_by_duration(X, DURATIONS, LENGTHS, max_frames=MAX_FRAMES, add_position=False)
    position = np.asarray(with_position - without)
    # Example 0 frames: token 0 (index 0, 1), token 2 (0, 1, 2), token 3 (0); padding gets nothing.
    within = [0, 1, 0, 1, 2, 0]
    dim = X.shape[-1]
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    for t, p in enumerate(within):
        np.testing.assert_allclose(
            position[0, t], np.concatenate([np.sin(p * inv_freq), np.cos(p * inv_freq)]), atol=1e-6
        )
    np.testing.assert_array_equal(position[0, 6:], 0.0)


def test_resample_gradient_is_duration_counting_matrix():
    jacobian = jax.jacrev(lambda x: resample_by_duration(x, DURATIONS, LENGTHS, max_frames=MAX_FRAMES)[0])(
        jnp.asarray(X)
    )  # [B, T, D, B, U, D]
    counting = np.zeros((3, MAX_FRAMES, 4))  # counting[b, t, u] = 1 if frame t repeats token u
    for b in range(3):
        t = 0
        for u in range(LENGTHS[b]):
            for _ in range(DURATIONS[b, u]):
                if t < MAX_FRAMES:
                    counting[b, t, u] = 1
                t += 1
    expected = np.einsum("btu,bc,de->btdcue", counting, np.eye(3), np.eye(X.shape[-1]))
    np.testing.assert_array_equal(jacobian, expected)
    np.testing.assert_array_equal(jacobian.sum(axis=(1, 2, 3, 5))[[0, 1, 2], [0, 0, 0]] / X.shape[-1], [2, 1, 3])


CONFIG = ModelConfig(
    model_dim=16,
    num_heads=2,
    ff_multiplier=2,
    dropout_rate=0.0,
    num_duration_layers=1,
    num_refiner_layers=1,
    duration_kernel_size=3,
    refiner_kernel_size=3,
)


def test_duration_model_non_negative_zero_at_padding_and_padding_invariant():
    model = DurationModel(CONFIG)
    e_t = jax.random.normal(jax.random.key(0), (2, 5, 16))
    length = jnp.array([5, 3])
    variables = model.init(jax.random.key(1), e_t, length, train=False)
    apply = jax.jit(lambda e: model.apply(variables, e, length, train=False))
    durations = apply(e_t)
    assert durations.shape == (2, 5)
    assert np.all(np.asarray(durations) >= 0) and np.all(np.asarray(durations[0]) > 0)
    np.testing.assert_array_equal(durations[1, 3:], 0.0)
    np.testing.assert_allclose(apply(e_t.at[1, 3:].set(5.0))[1, :3], durations[1, :3], rtol=1e-5)


def test_refiner_padding_invariance():
    model = Refiner(CONFIG)
    x = jax.random.normal(jax.random.key(0), (2, 8, 16))
    length = jnp.array([8, 5])
    variables = model.init(jax.random.key(1), x, length, train=False)
    apply = jax.jit(lambda x: model.apply(variables, x, length, train=False))
    out = apply(x)
    np.testing.assert_allclose(apply(x.at[1, 5:].set(-4.0))[1, :5], out[1, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1, 5:], 0.0)
