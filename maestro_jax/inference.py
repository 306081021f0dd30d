"""Inference with a trained SpeechTextModel: audio -> tokens (the decoder dispatch), and rebuilding a model from a
training run's directory. Evaluation (evaluation.py) and export (export.py) both transcribe through this module.
"""

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp

import maestro_jax
from maestro_jax import checkpoints, decoding, gin_utils, paths
from maestro_jax.data import corpus_layout
from maestro_jax.models import make_model
from maestro_jax.objectives import renamed

DECODERS = ("rnnt_greedy", "rnnt_beam", "ctc_greedy")


def encode_for_decoding(model, variables, waveform: jax.Array, waveform_length: jax.Array):
    """waveform f32[B, N] -> (shared-tower output h f32[B, T, D], frame_length i32[B]) in inference mode."""
    e_s, frame_length = model.apply(variables, waveform, waveform_length, train=False, method="encode_speech")
    return model.apply(variables, e_s, frame_length, train=False, method="shared_encode")


def transcribe_tokens(
    model,
    variables,
    waveform: jax.Array,
    waveform_length: jax.Array,
    *,
    decoder: str = "rnnt_greedy",
    beam_size: int = 4,
    max_symbols_per_frame: int = 4,
    max_output_length: int = 128,
    ilm_fusion_weight: float = 0.0,
    length_reward: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """waveform f32[B, N], waveform_length i32[B] -> (tokens i32[B, L], lengths i32[B]); jit-able, pure.

    decoder: "rnnt_greedy" | "rnnt_beam" (alignment-length synchronous, beam_size hypotheses) | "ctc_greedy".
    max_output_length: L, the most tokens per utterance. ilm_fusion_weight: rnnt_beam's shallow fusion with the
    model's internal LM and its per-label length_reward (`decoding.rnnt_beam_search`); 0 = none.
    """
    h, frame_length = encode_for_decoding(model, variables, waveform, waveform_length)
    if decoder == "ctc_greedy":
        logits = model.apply(variables, h, method="ctc_logits")
        tokens, lengths = decoding.ctc_greedy_decode(logits, frame_length)
        return tokens[:, :max_output_length], jnp.minimum(lengths, max_output_length)
    enc_proj = model.apply(variables, h, method="rnnt_encoder_proj")
    callables = (
        lambda batch_size: model.apply(variables, batch_size, method="rnnt_predictor_init"),
        lambda carry, token: model.apply(variables, carry, token, method="rnnt_predictor_step"),
        model.joint_output_fn,
        model.joint_params(variables["params"]),
    )
    if decoder == "rnnt_greedy":
        tokens, lengths, _ = decoding.rnnt_greedy_decode(
            enc_proj,
            frame_length,
            *callables,
            max_symbols_per_frame=max_symbols_per_frame,
            max_output_length=max_output_length,
        )
    elif decoder == "rnnt_beam":
        tokens, lengths, _ = decoding.rnnt_beam_search(
            enc_proj,
            frame_length,
            *callables,
            beam_size=beam_size,
            max_output_length=max_output_length,
            ilm_fusion_weight=ilm_fusion_weight,
            length_reward=length_reward,
        )
    else:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}.")
    return tokens, lengths


@gin.configurable
def make_transcriber(
    model,
    *,
    decoder: str = "rnnt_greedy",
    beam_size: int = 4,
    max_symbols_per_frame: int = 4,
    max_output_length: int = 128,
    ilm_fusion_weight: float = 0.0,
    length_reward: float = 0.0,
) -> Callable:
    """A jitted fn(variables, waveform, waveform_length) -> (tokens, lengths) for `model` (see transcribe_tokens)."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}.")
    if (ilm_fusion_weight or length_reward) and decoder != "rnnt_beam":
        raise ValueError(
            f"ilm_fusion_weight={ilm_fusion_weight} and length_reward={length_reward} need decoder='rnnt_beam', "
            f"not {decoder!r}."
        )
    return jax.jit(
        functools.partial(
            transcribe_tokens,
            model,
            decoder=decoder,
            beam_size=beam_size,
            max_symbols_per_frame=max_symbols_per_frame,
            max_output_length=max_output_length,
            ilm_fusion_weight=ilm_fusion_weight,
            length_reward=length_reward,
        )
    )


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """A SpeechTextModel rebuilt from a model directory's operative config, with inference variables.

    variables: {"params": params or EMA params, **model_state} on one device. step: the checkpoint step.
    config_text: the operative gin config saved with that checkpoint.
    """

    model: Any
    variables: dict
    step: int
    config_text: str


def apply_operative_config(config_text: str) -> None:
    """Replaces the global gin config by `config_text` (an operative config written by training or an export);
    bindings of objective parameters that moved to a shared owner since it was written are renamed first."""
    maestro_jax.register_configurables()
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config(renamed.upgrade_bindings(config_text))


def load_model_dir(
    model_dir: str, *, checkpoint_step: int | None = None, use_ema: bool = False, device: jax.Device | None = None
) -> RestoredModel:
    """Rebuilds the model of a training run from the operative config saved with its checkpoint (gin) and restores
    its inference variables (`checkpoints.restore_inference_variables`). Leaves that config as the global gin config."""
    checkpoint_dir = os.path.join(paths.resolve(model_dir), "checkpoints")
    step = checkpoints.find_step(checkpoint_dir, checkpoint_step)
    config_text = checkpoints.restore_operative_config(checkpoint_dir, step)
    apply_operative_config(config_text)
    variables = checkpoints.restore_inference_variables(checkpoint_dir, step, use_ema=use_ema, device=device)
    return RestoredModel(model=make_model(), variables=variables, step=step, config_text=config_text)


def checked_tokenizer(model, tokenizer_path: str | None = None) -> str:
    """`tokenizer_path` (default: `tokenizer_of_config()`) once its piece count equals `model`'s vocab_size: a model
    decoded with another tokenizer would print wrong words without any error (e.g. a 64-piece run scored with the
    256-piece corpus's tokenizer)."""
    from maestro_jax.data import tokenizer

    path = tokenizer_path or tokenizer_of_config()
    tokenizer.check_model_vocab_size(path, model)
    return path


def tokenizer_of_config() -> str:
    """The sentencepiece model the current gin config trains with: the `tokenizer_path` of its data entry point
    (`train.make_data` = manifest_streams or librispeech_streams), else that of the synthetic corpus it names."""
    from maestro_jax.data import pipeline

    try:
        make_data = gin.query_parameter("train.make_data")
    except ValueError:  # no training data bound (e.g. a bare eval config): the synthetic default
        make_data = None
    name = make_data.configurable.name if isinstance(make_data, gin.config.ConfigurableReference) else None
    if name in ("manifest_streams", "librispeech_streams"):
        return gin_utils.query_value(f"{name}.tokenizer_path")

    corpus_dir, _ = pipeline.synthetic_corpus()
    return os.path.join(corpus_dir, corpus_layout.TOKENIZER_FILE)
