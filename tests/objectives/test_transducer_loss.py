"""The gin switch TransducerLoss: kind="pruned" with a band over the whole lattice and no simple term gives the
supervised objective's kind="full" loss on the tiny model (gradients: tests/losses/test_pruned_rnnt.py)."""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.models.model import SpeechTextModel
from maestro_jax.models.sizes import MODEL_GIN_DIR, model_config_from_gin
from maestro_jax.objectives.supervised import supervised
from maestro_jax.objectives.transducer import TransducerLoss


def _batch():
    rng = np.random.default_rng(0)
    return {
        "paired": {
            "waveform": (0.1 * rng.normal(size=(2, 8000))).astype(np.float32),
            "waveform_length": np.asarray([8000, 5600], np.int32),
            "tokens": rng.integers(1, 256, size=(2, 5)).astype(np.int32),
            "token_length": np.asarray([5, 3], np.int32),
        }
    }


def _loss(model, variables, batch, config: str):
    """The supervised objective's (loss, metrics) with `config` bound in gin while tracing (forward only: the
    machine compiles slowly)."""
    gin.clear_config()
    try:
        gin.parse_config(config)

        objective = jax.jit(lambda v: supervised(model, v, batch, jax.random.PRNGKey(1), 0))
        return objective(variables)
    finally:
        gin.clear_config()


def _transducer_parts(model, paired):
    """Runs only the towers the supervised transducer term uses (their params are all it needs)."""
    e_s, frame_length = model.encode_speech(paired["waveform"], paired["waveform_length"], train=False)
    h, _ = model.shared_encode(e_s, frame_length, train=False)
    enc_proj = model.rnnt_encoder_proj(h)
    pred_proj = model.rnnt_predict(paired["tokens"], paired["token_length"], train=False)
    return model.rnnt_decoder.joint(enc_proj[:, :1, None, :] + pred_proj[:, None, :, :])


def test_pruned_with_full_band_and_no_simple_term_equals_full():
    model = SpeechTextModel(model_config_from_gin(MODEL_GIN_DIR / "tiny.gin"))
    batch = jax.tree.map(jnp.asarray, _batch())
    # Shapes by tracing, values drawn here: compiling model.init takes longer than the test itself.
    init = lambda rng: model.init(rng, batch["paired"], method=_transducer_parts)
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(x.dtype), shapes)
    full_loss, full_metrics = _loss(model, variables, batch, "")
    pruned_loss, metrics = _loss(
        model,
        variables,
        batch,
        "TransducerLoss.kind = 'pruned'\nTransducerLoss.prune_range = 6\nTransducerLoss.simple_loss_scale = 0.0\n"
        "TransducerLoss.warmup_steps = 0",  # the objective passes its step: no warm-up, so the scales are (0, 1)
    )
    assert "rnnt_simple_loss" not in full_metrics
    np.testing.assert_allclose(pruned_loss, full_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["rnnt_pruned_loss"], full_metrics["rnnt_loss"], rtol=1e-5)
    assert np.isfinite(metrics["rnnt_simple_loss"]) and float(metrics["rnnt_pruned_infeasible"]) == 0.0


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="TransducerLoss.kind"):
        TransducerLoss(kind="prunned")
