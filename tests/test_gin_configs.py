"""Every experiment recipe parses with the package's configurables and binds a model, an objective and data."""

from pathlib import Path

import gin
import pytest

import maestro_jax

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.name for p in (REPO / "gin" / "experiments").glob("*.gin"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_parses_and_binds_the_essentials(name):
    maestro_jax.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    try:
        gin.parse_config_file(str(REPO / "gin" / "experiments" / name))
        for parameter in ("train.model", "train.objective", "train.make_data", "train.train_steps"):
            assert gin.query_parameter(parameter) is not None, parameter
    finally:
        gin.clear_config()


def test_experiment_list_covers_every_objective():
    assert {"tiny_supervised.gin", "tiny_bestrq.gin", "tiny_maestro.gin", "tiny_astra.gin"} <= set(EXPERIMENTS)
    assert {"tiny_sonar_text.gin", "tiny_sonar_speech.gin", "maestro_librispeech.gin"} <= set(EXPERIMENTS)
