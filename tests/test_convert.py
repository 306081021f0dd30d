"""torchaudio Conformer import: outputs equal torchaudio's at valid frames (stored fixture, and live when torch is
importable), sizes inferred from the arrays, clear errors for missing/unexpected keys."""

import importlib.util
import pathlib
import re

import numpy as np
import pytest

from maestro_jax.convert import from_torchaudio_conformer

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "torchaudio_conformer_tiny.npz"
# Regenerate with: .venv-torch/bin/python bench/make_torchaudio_conformer_fixture.py (bench/README.md makes .venv-torch)
VARIANTS = {"batch_norm": False, "group_norm": False, "convolution_first": True}  # prefix -> convolution_first
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture_arrays():
    with np.load(FIXTURE) as npz:
        return {key: npz[key] for key in npz.files}


def _reference(arrays: dict, prefix: str) -> tuple[dict, dict]:
    """(state dict, {"inputs", "lengths", "outputs", "num_heads"}) of one fixture variant."""
    state = {key.split("/state/", 1)[1]: value for key, value in arrays.items() if key.startswith(f"{prefix}/state/")}
    rest = {name: arrays[f"{prefix}/{name}"] for name in ("inputs", "lengths", "outputs", "num_heads")}
    return state, rest


def _max_valid_frame_error(state: dict, reference: dict, convolution_first: bool) -> float:
    module, variables = from_torchaudio_conformer(
        state, num_heads=int(reference["num_heads"]), convolution_first=convolution_first
    )
    outputs, lengths = module.apply(variables, reference["inputs"], reference["lengths"])
    outputs = np.asarray(outputs)
    np.testing.assert_array_equal(lengths, reference["lengths"])
    errors = []
    for b, length in enumerate(reference["lengths"]):
        errors.append(np.abs(outputs[b, :length] - reference["outputs"][b, :length]).max())
        np.testing.assert_array_equal(outputs[b, length:], 0.0)
    return max(errors)


@pytest.mark.parametrize("prefix", list(VARIANTS))
def test_fixture_outputs_match_torchaudio(fixture_arrays, prefix):
    state, reference = _reference(fixture_arrays, prefix)
    assert reference["lengths"].tolist() == [7, 4]  # one padded example, so padding semantics are exercised
    assert _max_valid_frame_error(state, reference, VARIANTS[prefix]) <= TOLERANCE


def test_sizes_are_inferred_from_the_arrays(fixture_arrays):
    for prefix, use_group_norm in (("batch_norm", False), ("group_norm", True)):
        module, variables = from_torchaudio_conformer(_reference(fixture_arrays, prefix)[0], num_heads=2)
        assert (module.num_layers, module.ffn_dim, module.kernel_size) == (2, 32, 5)
        assert module.use_group_norm == use_group_norm
        assert ("batch_stats" in variables) == (not use_group_norm)


def test_wrong_convolution_order_is_detected(fixture_arrays):
    """convolution_first cannot be read from the weights; the fixture must tell the two orders apart."""
    state, reference = _reference(fixture_arrays, "convolution_first")
    assert _max_valid_frame_error(state, reference, convolution_first=False) > 100 * TOLERANCE


def test_missing_key_is_named(fixture_arrays):
    state, _ = _reference(fixture_arrays, "batch_norm")
    # a key of a later layer, and one the size inference itself reads
    for key in (
        "conformer_layers.1.conv_module.sequential.3.running_var",
        "conformer_layers.0.self_attn.in_proj_weight",
    ):
        broken = {k: v for k, v in state.items() if k != key}
        with pytest.raises(ValueError, match=re.escape(f"missing key {key!r}")):
            from_torchaudio_conformer(broken, num_heads=2)


def test_unexpected_key_is_named(fixture_arrays):
    state, _ = _reference(fixture_arrays, "group_norm")
    for extra in ("conformer_layers.1.conv_module.sequential.1.weight", "output_proj.weight"):
        broken = {**state, extra: np.zeros(16, np.float32)}
        with pytest.raises(ValueError, match="unexpected key.*" + re.escape(extra)):
            from_torchaudio_conformer(broken, num_heads=2)


def test_layer_with_a_different_size_is_rejected(fixture_arrays):
    state, _ = _reference(fixture_arrays, "batch_norm")
    state = {**state, "conformer_layers.1.ffn2.sequential.1.weight": np.zeros((40, 16), np.float32)}
    with pytest.raises(ValueError, match="layer_1/feed_forward_2/hidden/kernel"):
        from_torchaudio_conformer(state, num_heads=2)


def test_num_batches_tracked_is_optional(fixture_arrays):
    state, reference = _reference(fixture_arrays, "batch_norm")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert _max_valid_frame_error(state, reference, convolution_first=False) <= TOLERANCE


def _fixture_generator():
    path = ROOT / "bench" / "make_torchaudio_conformer_fixture.py"
    spec = importlib.util.spec_from_file_location("make_torchaudio_conformer_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "use_group_norm, convolution_first", [(False, False), (True, False), (False, True), (True, True)]
)
def test_live_torchaudio_matches(use_group_norm, convolution_first):
    pytest.importorskip("torch")
    pytest.importorskip("torchaudio")
    sizes = dict(input_dim=24, num_heads=3, ffn_dim=40, num_layers=3, depthwise_conv_kernel_size=7)
    reference = _fixture_generator().torchaudio_reference(
        use_group_norm=use_group_norm, convolution_first=convolution_first, seed=11, lengths=(9, 5, 2), **sizes
    )
    state = {key.removeprefix("state/"): value for key, value in reference.items() if key.startswith("state/")}
    assert _max_valid_frame_error(state, reference, convolution_first) <= TOLERANCE
