"""Parameter counts of gin/models/{tiny,small,maestro}.gin against closed forms derived here; the maestro-params CLI."""

import dataclasses
import math

import pytest

from maestro_jax.cli.params import main as params_main
from maestro_jax.models.sizes import MODEL_GIN_DIR, count_parameters, model_config_from_gin


def _layer_norm(d):
    return 2 * d


def _dense(i, o, bias=True):
    return i * o + (o if bias else 0)


def _feed_forward(d, f):
    return _layer_norm(d) + _dense(d, f) + _dense(f, d)


def _attention(d, heads, relative):
    # q, k, v, out with biases; relative adds the position projection (no bias) and the u, v biases [H, D/H].
    return 4 * _dense(d, d) + ((d * d + 2 * d) if relative else 0)


def _conformer_block(d, f, heads, kernel, relative):
    convolution = _layer_norm(d) + _dense(d, 2 * d) + kernel * d + d + _layer_norm(d) + _dense(d, d)
    return 2 * _feed_forward(d, f) + _layer_norm(d) + _attention(d, heads, relative) + convolution + _layer_norm(d)


def _transformer_block(d, f, heads, relative):
    return _layer_norm(d) + _attention(d, heads, relative) + _feed_forward(d, f)


def _lightconv_block(d, f, heads, kernel):
    return _layer_norm(d) + _dense(d, 2 * d) + kernel * heads + _dense(d, d) + _feed_forward(d, f)


def closed_form_counts(c) -> dict[str, int]:
    d, f, h, rel = c.model_dim, c.ff_multiplier * c.model_dim, c.num_heads, c.relative_position
    conformer = _conformer_block(d, f, h, c.conv_kernel_size, rel)
    mel = c.num_mel_bins
    num_convs = int(math.log2(c.subsampling_factor))  # one 3x3 stride-2 conv per factor of 2
    for _ in range(num_convs):
        mel = math.ceil(mel / 2)  # padding (1, 1), stride 2, kernel 3
    ch = c.subsampling_channels
    conv_subsampling = _dense(9, ch) + (num_convs - 1) * _dense(9 * ch, ch) + _dense(mel * ch, d)
    speech = conv_subsampling + c.num_speech_layers * conformer
    text_block = conformer if c.text_block == "conformer" else _transformer_block(d, f, h, rel)
    text = (
        c.vocab_size * d
        + c.num_text_conv_layers * (_dense(c.text_conv_kernel_size * d, d) + _layer_norm(d))
        + c.num_text_layers * text_block
    )
    duration = c.num_duration_layers * _lightconv_block(d, f, h, c.duration_kernel_size) + _layer_norm(d) + d + 1
    refiner = c.num_refiner_layers * (
        _transformer_block(d, f, h, rel) + _lightconv_block(d, f, h, c.refiner_kernel_size)
    )
    p, j, v = c.prediction_dim, c.joint_dim, c.vocab_size
    if c.prediction_network == "lstm":
        lstm_inputs = [c.prediction_embed_dim] + [p] * (c.prediction_layers - 1)
        history = sum(i * 4 * p + p * 4 * p + 4 * p for i in lstm_inputs)
    else:
        history = _dense(c.prediction_context * c.prediction_embed_dim, p)
    rnnt = v * c.prediction_embed_dim + history + _dense(p, j) + _dense(d, j) + _dense(j, v)
    pooler = (
        d
        + c.num_pooler_layers * (_layer_norm(d) + _attention(d, h, False) + _feed_forward(d, f))
        + _layer_norm(d)
        + _dense(d, c.pooler_output_dim)
    )
    counts = {
        "speech_tower": speech,
        "text_tower": text,
        "duration_model": duration,
        "refiner": refiner,
        "shared_tower": c.num_shared_layers * conformer,
        "rnnt_decoder": rnnt,
        "ctc_head": _dense(d, v),
        "pooler": pooler,
        "bestrq_head": _dense(d, c.bestrq_codebook_size),
    }
    counts["speech+shared"] = speech + counts["shared_tower"]
    counts["total"] = sum(counts[k] for k in counts if k != "speech+shared")
    counts["frozen"] = c.subsampling_factor * c.num_mel_bins * c.bestrq_codebook_dim + (
        c.bestrq_codebook_size * c.bestrq_codebook_dim
    )
    return counts


@pytest.mark.parametrize("name", ["tiny", "small", "maestro", "toy"])
def test_counts_match_closed_form(name):
    config = model_config_from_gin(MODEL_GIN_DIR / f"{name}.gin")
    counts = count_parameters(config)
    assert counts == closed_form_counts(config)
    if name == "maestro":  # the paper's 0.6B speech encoder: 6 speech + 18 shared Conformer layers at d=1024
        assert 0.55e9 < counts["speech+shared"] < 0.65e9


def test_params_cli_prints_table(capsys):
    params_main(["--gin_files", str(MODEL_GIN_DIR / "tiny.gin")])
    out = capsys.readouterr().out
    assert "| tower | tiny |" in out
    tiny = closed_form_counts(model_config_from_gin(MODEL_GIN_DIR / "tiny.gin"))
    assert f"| total | {tiny['total']:,} |" in out


def test_stateless_prediction_network_counts_match_closed_form():
    config = dataclasses.replace(
        model_config_from_gin(MODEL_GIN_DIR / "tiny.gin"), prediction_network="stateless", prediction_context=3
    )
    assert count_parameters(config) == closed_form_counts(config)
