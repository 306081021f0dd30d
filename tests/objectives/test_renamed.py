"""Operative configs saved before the objectives' shared settings moved still parse once upgraded."""

import gin
import pytest

import maestro_jax
from maestro_jax.objectives.renamed import upgrade_bindings

# The objective part of an operative config written by a toy_maestro run before the move (gin's layout).
OLD_MAESTRO = """
# Parameters for maestro:
# ==============================================================================
maestro.aligner = 'rnnt'
maestro.bestrq_mask_prob = 0.01
maestro.bestrq_mask_span = 10
maestro.bestrq_weight = 1.0
maestro.chunk_size = 16
maestro.ctc_weight = 1.0
maestro.paired_start_step = 0
maestro.text_frames_per_token = 3
maestro.text_start_step = %TEXT_START_STEP

TEXT_START_STEP = 500
supervised.chunk_size = 32
bestrq.noise_std = 0.2
"""


@pytest.fixture
def clean_gin():
    maestro_jax.register_configurables()
    gin.clear_config()
    yield
    gin.clear_config()


def test_old_operative_config_fails_as_is_and_parses_upgraded(clean_gin):
    with pytest.raises(ValueError, match="doesn.t have a parameter named .bestrq_mask_prob"):
        gin.parse_config(OLD_MAESTRO)
    gin.clear_config()
    gin.parse_config(upgrade_bindings(OLD_MAESTRO))
    assert gin.query_parameter("TextInjection.ctc_weight") == 1.0
    assert gin.query_parameter("%TEXT_START_STEP") == 500
    assert gin.query_parameter("BestRQMasking.mask_span") == 10
    assert gin.query_parameter("BestRQMasking.noise_std") == 0.2
    assert gin.query_parameter("TransducerLoss.chunk_size") == 32  # the later binding, as gin would have it
    assert gin.query_parameter("maestro.text_frames_per_token") == 3


def test_upgrade_leaves_current_bindings_alone():
    text = "maestro.text_frames_per_token = 4\nTextInjection.ctc_weight = 1.0\nmaestro_x.chunk_size = 2\n"
    assert upgrade_bindings(text) == text
