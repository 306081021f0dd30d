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


def _sonar_text_model_bindings(name: str) -> dict:
    """Every SonarTextModel parameter as the experiment `name` resolves it (macros included)."""
    maestro_jax.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    try:
        gin.parse_config_file(str(REPO / "gin" / "experiments" / name))
        from maestro_jax.models.sonar_text import SonarTextModel

        return {field: getattr(SonarTextModel(), field) for field in SonarTextModel.__dataclass_fields__}
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    "stage1,stage2", [("tiny_sonar_text.gin", "tiny_sonar_speech.gin"), ("toy_sonar_text.gin", "toy_sonar_speech.gin")]
)
def test_sonar_stage2_teacher_has_the_stage1_model_shape(stage1, stage2):
    """Stage 2 rebuilds the frozen teacher from its own SonarTextModel bindings; they must equal stage 1's."""
    teacher, student = _sonar_text_model_bindings(stage1), _sonar_text_model_bindings(stage2)
    for field in ("vocab_size", "model_dim", "embedding_dim", "num_heads", "mlp_dim", "num_encoder_layers"):
        assert teacher[field] == student[field], (field, teacher[field], student[field])


RUN_FILES = sorted(p.name for p in (REPO / "gin" / "runs").glob("*.gin") if p.name != "default.gin")


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_run_file_included_after_an_experiment_keeps_its_bindings(name):
    """Run files go after an experiment (README); one that re-included default.gin would reset what the experiment set,
    e.g. toy_table.gin's wsd schedule back to default.gin's inverse_sqrt."""
    maestro_jax.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    try:
        gin.parse_config_file(str(REPO / "gin" / "experiments" / "toy_supervised.gin"))
        assert gin.query_parameter("make_learning_rate_schedule.decay") == "wsd"
        gin.parse_config_file(str(REPO / "gin" / "runs" / name))
        assert gin.query_parameter("make_learning_rate_schedule.decay") == "wsd", name
    finally:
        gin.clear_config()


@pytest.mark.parametrize(
    "bindings,expected",
    [
        (
            ["ModelConfig.vocab_size = 128", "PAIRED_BATCH_SIZE = 8", "SPEECH_BATCH_SIZE = 8"],  # 8 test devices
            r"spm\.model has 256 pieces but ModelConfig\.vocab_size = 128",
        ),
        (["PAIRED_BATCH_SIZE = 3"], r"\['paired'\]\['\w+'\] has a global batch of 3 .*PAIRED_BATCH_SIZE"),
    ],
)
def test_tiny_recipe_with_a_mismatched_binding_stops_before_compiling(tmp_path, monkeypatch, bindings, expected):
    from maestro_jax import train, trainer
    from maestro_jax.data import synthetic

    monkeypatch.setattr(trainer, "compile_ahead_of_time", lambda *a: pytest.fail("compiled"))
    maestro_jax.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    try:
        gin.parse_config_files_and_bindings(
            [str(REPO / "gin" / "experiments" / "tiny_maestro.gin")],
            [f"MODEL_DIR = '{tmp_path}'", f"CORPUS_DIR = '{synthetic.cached_corpus('tiny')}'", *bindings],
        )
        with pytest.raises(ValueError, match=expected):
            train.train()
    finally:
        gin.clear_config()
