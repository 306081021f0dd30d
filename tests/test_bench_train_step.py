"""bench/train_step.py --profile on the tiny recipes: every piece of the step is timed (positive, with the pieces each
objective has), the pieces compute the objective's loss, the compiled step's loss is the objective's on the same
batch, and the JSON is written. Timings themselves are never asserted. The MAESTRO and ASTRA runs are slow."""

import importlib.util
import json
import os

import gin
import jax
import numpy as np
import pytest

from maestro_jax import partitioning, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(REPO, "bench", "train_step.py"))
train_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_step)

TORCH_PYTHON = os.path.join(REPO, ".venv-torch", "bin", "python")
# SpecAugment off (tiny.gin has no dropout): the pieces then draw no randomness and must add up to the step's loss.
DETERMINISTIC = ["--gin.ModelConfig.spec_augment=False", "--gin.supervised.ctc_weight=1.0"]
SUPERVISED_PIECES = (
    "frontend",
    "speech tower",
    "shared tower",
    "RNN-T predictor",
    "RNN-T joint",
    "CTC head",
    "optimizer",
)
TEXT_INJECTION_PIECES = SUPERVISED_PIECES + (
    "paired: ",
    "text stream: text tower",
    "text stream: shared tower",
    "text stream: RNN-T",
    "speech stream: BEST-RQ log-mel",
    "speech stream: speech tower",
    "speech stream: shared tower",
    "speech stream: BEST-RQ head",
)


def run_profile(tmp_path, gin_file: str, extra=()) -> dict:
    gin.clear_config()
    out = tmp_path / "profile.json"
    argv = [
        f"--gin_file={gin_file}",
        "--gin.bench_train_step.steps=1",
        "--profile",
        "--repeats=1",
        "--synthetic_batches",
        f"--json_out={out}",
        *extra,
    ]
    assert train_step.main(argv, mesh=partitioning.make_mesh(devices=jax.devices()[:1])) == 0
    return json.loads(out.read_text())


def check_pieces(figures: dict, expected: tuple[str, ...]) -> None:
    prof = figures["profile"]
    names = [row["name"] for row in prof["rows"]]
    for prefix in expected:
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    assert len(set(names)) == len(names)
    for row in prof["rows"]:
        assert row["seconds"] > 0 and row["min_seconds"] > 0, row
    assert all(row["flops"] > 0 for row in prof["rows"] if row["encoder"])
    assert {row["name"] for row in prof["rows"] if row["encoder"]} >= {"speech tower fwd+bwd", "shared tower fwd+bwd"}
    assert prof["step_seconds"] > 0 and prof["sum_seconds"] > 0 and prof["input_wait_seconds"] > 0
    assert 0 < prof["encoder_mfu"] and prof["peak_flops"] > 0
    assert np.isfinite(prof["step_loss"])
    assert figures["steps_per_second"] > 0


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    return run_profile(tmp_path_factory.mktemp("supervised"), "gin/experiments/tiny_supervised.gin", DETERMINISTIC)


def test_supervised_profile_times_every_piece(supervised):
    check_pieces(supervised, SUPERVISED_PIECES)
    assert supervised["objective"] == "supervised"
    assert "| compiled train step |" in train_step.format_profile(supervised)


def test_supervised_pieces_add_up_to_the_objectives_loss(supervised):
    """RNN-T joint + loss and CTC pieces (weight 1) give the compiled step's loss, which is the objective's own on the
    bench's first synthetic batch and initial params."""
    values = {row["name"].split(" fwd")[0]: row["value"] for row in supervised["profile"]["rows"] if row["value"]}
    pieces = values["RNN-T joint + full loss"] + values["CTC head + loss"]
    np.testing.assert_allclose(pieces, supervised["profile"]["step_loss"], rtol=1e-5)

    gin.clear_config()
    from maestro_jax.gin_utils import configure_gin

    configure_gin(
        ["gin/experiments/tiny_supervised.gin"],
        [b.removeprefix("--gin.").replace("=", " = ", 1) for b in DETERMINISTIC],
    )
    model, objective = train_step.recipe_value("model"), train_step.recipe_value("objective")
    shapes = train_step.stream_shapes(train_step.recipe_value("make_data"))
    local = next(train_step.synthetic_batches(shapes, model.config.vocab_size, 0))
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    setup = trainer.setup_train_step(
        model, trainer.make_optimizer(), local, mesh, partitioning.logical_axis_rules(), seed=0, use_ema=False
    )
    state = setup.initial_state(local)
    rng = jax.random.fold_in(state.rng, state.step)
    loss, _ = jax.jit(lambda v, b: objective(model, v, b, rng, state.step))(state.variables(), local)
    np.testing.assert_allclose(float(loss), supervised["profile"]["step_loss"], rtol=1e-6)
    np.testing.assert_allclose(float(loss), supervised["first_step_loss"], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny_maestro", "tiny_astra"])
def test_text_injection_profile_times_every_piece(tmp_path, recipe):
    figures = run_profile(tmp_path, f"gin/experiments/{recipe}.gin", ["--gin.TextInjection.ctc_weight=1.0"])
    check_pieces(figures, TEXT_INJECTION_PIECES)


@pytest.mark.skipif(not os.path.exists(TORCH_PYTHON), reason="no torch side venv (.venv-torch: bench/README.md)")
def test_torch_peer_runs_with_the_recipe_shapes(supervised):
    import subprocess

    gin.clear_config()
    from maestro_jax.gin_utils import configure_gin

    configure_gin(["gin/experiments/tiny_supervised.gin"], [])
    model = train_step.recipe_value("model")
    shapes = train_step.stream_shapes(train_step.recipe_value("make_data"))
    lengths = next(train_step.synthetic_batches(shapes, model.config.vocab_size, 0))["paired"]
    args = train_step.torch_peer_arguments(model, shapes, lengths, repeats=1)
    out = subprocess.run([TORCH_PYTHON, train_step.TORCH_PEER, *args], check=True, capture_output=True, text=True)
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    assert peer["rnnt_step_seconds"] > 0 and peer["ctc_step_seconds"] > 0
    # Random init: about log(V) per label plus the blanks' share, not thousands (a per-token loss, like ours).
    assert 1 < peer["rnnt_loss_per_token"] < 50 and 1 < peer["ctc_loss_per_token"] < 50
