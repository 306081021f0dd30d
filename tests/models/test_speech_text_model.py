"""SpeechTextModel (gin/models/tiny.gin): every contract method's shapes, padding invariance, determinism,
the pure joint and the step-wise predictor against their module versions, and logical partitioning on every param."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.models.model import SpeechTextModel
from maestro_jax.models.sizes import MODEL_GIN_DIR, model_config_from_gin

B, N, U = 2, 8000, 6  # 0.5 s: 48 log-mel frames -> 12 encoder frames
WAVEFORM_LENGTH = np.array([8000, 5000], np.int32)  # 30 frames -> 7 encoder frames for example 1
TOKEN_LENGTH = np.array([6, 3], np.int32)
LOGICAL_AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "conv", "layers", "codebook", "proj", None}


def _batch(seed: int, garbage: bool) -> dict:
    rng = np.random.default_rng(seed)
    waveform = (0.3 * rng.standard_normal((B, N))).astype(np.float32)
    tokens = rng.integers(3, 256, (B, U)).astype(np.int32)
    if garbage:  # only padded positions change
        waveform[1, WAVEFORM_LENGTH[1] :] = 0.9
        tokens[1, TOKEN_LENGTH[1] :] = 7
    else:
        waveform[1, WAVEFORM_LENGTH[1] :] = 0.0
        tokens[1, TOKEN_LENGTH[1] :] = 0
    stream = {"waveform": waveform, "waveform_length": WAVEFORM_LENGTH, "tokens": tokens, "token_length": TOKEN_LENGTH}
    return {"paired": stream}


def _every_method(model: SpeechTextModel, variables, batch) -> dict:
    """Each contract method once, eval mode, on one paired batch."""
    apply = functools.partial(model.apply, variables)
    stream = batch["paired"]
    e_s, frame_length = apply(stream["waveform"], stream["waveform_length"], train=False, method="encode_speech")
    e_t, token_length = apply(stream["tokens"], stream["token_length"], train=False, method="encode_text")
    durations = apply(e_t, token_length, train=False, method="predict_durations")
    fixed_durations = jnp.where(jnp.arange(U)[None] < token_length[:, None], 2, 0)
    x, x_length = apply(e_t, fixed_durations, token_length, max_frames=16, train=False, method="upsample_text")
    h, _ = apply(e_s, frame_length, train=False, method="shared_encode")
    pred_proj = apply(stream["tokens"], token_length, train=False, method="rnnt_predict")
    enc_proj = apply(h, method="rnnt_encoder_proj")

    def predictor_step(carry, token):
        carry, p = apply(carry, token, method="rnnt_predictor_step")
        return carry, p

    start = jnp.zeros((B, 1), jnp.int32)
    step_inputs = jnp.concatenate([start, stream["tokens"]], axis=1).T  # [U+1, B]
    _, stepped = jax.lax.scan(predictor_step, apply(B, method="rnnt_predictor_init"), step_inputs)
    z = enc_proj[:, :, None, :] + pred_proj[:, None, :, :]
    features, feature_length = apply(stream["waveform"], stream["waveform_length"], method=_log_mel)
    labels, label_length = apply(features, feature_length, method="bestrq_targets")
    return {
        "e_s": e_s,
        "frame_length": frame_length,
        "e_t": e_t,
        "durations": durations,
        "x": x,
        "x_length": x_length,
        "h": h,
        "pred_proj": pred_proj,
        "stepped_pred_proj": jnp.swapaxes(stepped, 0, 1),
        "enc_proj": enc_proj,
        "joint_module": apply(z, method=lambda m, z: m.rnnt_decoder.joint(z)),
        "joint_pure": SpeechTextModel.joint_output_fn(SpeechTextModel.joint_params(variables["params"]), z),
        "ctc_logits": apply(h, method="ctc_logits"),
        "pooled": apply(e_s, frame_length, method="pool"),
        "labels": labels,
        "label_length": label_length,
    }


def _log_mel(model, waveform, waveform_length):
    from maestro_jax.frontend import log_mel_spectrogram

    return log_mel_spectrogram(waveform, waveform_length)


def _random_variables(abstract, seed: int) -> dict:
    """Values for abstract (boxed) variables, N(0, 0.3^2) each: the tests need structure and generic weights, and
    this skips compiling the model's initialisers."""
    rng = np.random.default_rng(seed)
    fill = lambda leaf: jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)
    return jax.tree.map(fill, abstract)


@pytest.fixture(scope="module")
def tiny():
    config = model_config_from_gin(MODEL_GIN_DIR / "tiny.gin")
    model = SpeechTextModel(config)
    abstract = jax.eval_shape(model.init, jax.random.key(0), _batch(0, garbage=False))
    variables = _random_variables(abstract, seed=1)
    every = jax.jit(functools.partial(_every_method, model))
    clean = every(variables, _batch(0, garbage=False))
    garbage = every(variables, _batch(0, garbage=True))
    return config, model, abstract, variables, clean, garbage


def test_shapes_and_lengths(tiny):
    config, _, _, _, out, _ = tiny
    d, j, v = config.model_dim, config.joint_dim, config.vocab_size
    expected = {
        "e_s": (B, 12, d),
        "e_t": (B, U, d),
        "durations": (B, U),
        "x": (B, 16, d),
        "h": (B, 12, d),
        "pred_proj": (B, U + 1, j),
        "enc_proj": (B, 12, j),
        "joint_pure": (B, 12, U + 1, v),
        "ctc_logits": (B, 12, v),
        "pooled": (B, config.pooler_output_dim),
        "labels": (B, 12),
    }
    assert {k: out[k].shape for k in expected} == expected
    np.testing.assert_array_equal(out["frame_length"], [12, 7])
    np.testing.assert_array_equal(out["label_length"], [12, 7])
    np.testing.assert_array_equal(out["x_length"], [12, 6])
    assert np.all(np.asarray(out["durations"]) >= 0)
    assert all(np.isfinite(np.asarray(value)).all() for value in out.values())


def test_padding_never_changes_valid_outputs(tiny):
    _, _, _, _, clean, garbage = tiny
    valid_slices = {
        "e_s": np.s_[1, :7],
        "e_t": np.s_[1, :3],
        "durations": np.s_[1, :3],
        "x": np.s_[1, :6],
        "h": np.s_[1, :7],
        "pred_proj": np.s_[1, :4],
        "ctc_logits": np.s_[1, :7],
        "pooled": np.s_[1],
        "labels": np.s_[1, :7],
    }
    for name, where in valid_slices.items():
        np.testing.assert_allclose(garbage[name][where], clean[name][where], rtol=1e-4, atol=1e-4, err_msg=name)
    for name in ("e_s", "h"):
        np.testing.assert_array_equal(clean[name][1, 7:], 0.0)


def test_pure_joint_and_stepwise_predictor_match_modules(tiny):
    out = tiny[4]
    np.testing.assert_allclose(out["joint_pure"], out["joint_module"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["stepped_pred_proj"][0], out["pred_proj"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["stepped_pred_proj"][1, :4], out["pred_proj"][1, :4], rtol=1e-5, atol=1e-5)


def test_frozen_variables_outside_params(tiny):
    variables = tiny[3]
    assert set(variables) == {"params", "frozen"}
    assert set(variables["frozen"]["bestrq"]) == {"projection", "codebook"}
    paths = [str(path) for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]]
    assert paths and not any("projection" in path or "codebook" in path for path in paths)


def test_every_variable_has_logical_axis_names(tiny):
    variables = tiny[2]  # as model.init boxes them
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(leaf, nn.Partitioned) for leaf in boxed)
    for leaf in boxed:
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= LOGICAL_AXES, leaf.names
        assert leaf.value.ndim < 2 or any(leaf.names), leaf.names
    specs = jax.tree.leaves(
        nn.get_partition_spec(variables), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert len(specs) == len(boxed)


def test_train_mode_is_deterministic_given_rng(tiny):
    _, model, _, variables, _, _ = tiny
    stream = _batch(0, garbage=False)["paired"]

    @jax.jit
    def encode(key):
        return model.apply(
            variables,
            stream["waveform"],
            stream["waveform_length"],
            train=True,
            method="encode_speech",
            rngs={"dropout": key},
        )[0]

    first = encode(jax.random.key(5))
    np.testing.assert_array_equal(encode(jax.random.key(5)), first)
    assert not np.allclose(encode(jax.random.key(6)), first)


def test_call_touches_every_submodule(tiny):
    _, model, _, variables, _, _ = tiny
    params = variables["params"]
    assert set(params) == {
        "speech_tower",
        "text_tower",
        "duration_model",
        "refiner",
        "shared_tower",
        "rnnt_decoder",
        "ctc_head",
        "pooler",
        "bestrq_head",
    }
    speech_only = {"speech": {"waveform": np.zeros((1, 800), np.float32), "waveform_length": np.array([800])}}
    with pytest.raises(ValueError, match="needs a stream with waveforms"):
        model.apply(variables, speech_only)
