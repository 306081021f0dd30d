"""Exported models: params only, the tokenizer, the operative config and `jax.export`ed transcribe/embed functions.

An export directory holds
    params/                  Orbax PyTree checkpoint {"params": ..., **model_state} (no optimizer state; a SONAR
                             stage 2 can point `init_teacher_from_checkpoint.checkpoint` here)
    spm.model                the sentencepiece tokenizer (id 0 = pad/blank)
    operative_config.gin     the gin config of the training run
    functions/transcribe_<N>.jax, functions/embed_<N>.jax   serialised `jax.export` functions, one per length bucket
    export.json              sample rate, buckets, output length, step(s), embedding size, platforms

Functions take (variables, waveform f32[B, N], waveform_length i32[B]) with a symbolic batch dimension B and a fixed
N per bucket (default buckets: 5, 10, 20 and 30 s of 16 kHz samples; `load` pads to the smallest bucket that fits).
`transcribe` returns greedy RNN-T (tokens i32[B, L], lengths i32[B]); `embed` returns the pooled speech embedding
f32[B, E] (speech tower, then attention pooler: the SONAR student's output).

`load(export_dir)` needs only JAX, NumPy, Orbax and sentencepiece: it never imports gin, seqio, TensorFlow or the
training code (it restores through checkpoints.py, which needs only Orbax), so that evaluation and serving run without
them (a gs:// export is read through TensorFlow's filesystem, which etils.epath picks for gs:// when it is
installed: see `paths`). Writing an export does need the model code (inference.py), which is imported inside
`write_export` for that reason.
"""

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from maestro_jax import checkpoints, paths
from maestro_jax.audio_constants import SAMPLE_RATE_HZ

DEFAULT_BUCKET_SECONDS = (5.0, 10.0, 20.0, 30.0)
# Collections that inference never reads (the SONAR stage-2 teacher) stay out of the export.
DROPPED_COLLECTIONS = ("teacher",)


def average_variables(variables: Sequence[dict]) -> dict:
    """Leaf-wise mean (accumulated in float32, cast back to each leaf's dtype) of same-structured variable trees."""
    if not variables:
        raise ValueError("average_variables needs at least one variables tree.")
    total = jax.tree.map(lambda x: np.asarray(x, np.float32), variables[0])
    for tree in variables[1:]:
        total = jax.tree.map(lambda acc, x: acc + np.asarray(x, np.float32), total, tree)
    return jax.tree.map(lambda acc, x: (acc / len(variables)).astype(x.dtype), total, variables[0])


def write_export(
    out_dir: str,
    model,
    variables: dict,
    *,
    tokenizer_path: str,
    config_text: str,
    steps: Sequence[int] = (),
    bucket_seconds: Sequence[float] = DEFAULT_BUCKET_SECONDS,
    max_output_length: int = 128,
    platforms: Sequence[str] | None = None,
) -> str:
    """Writes an export of `model` (a SpeechTextModel) with inference `variables` to `out_dir`; returns out_dir.

    steps: the checkpoint step(s) the params come from (several when averaged), recorded in export.json.
    bucket_seconds: the padded input lengths, one exported function pair per bucket. max_output_length: L, the most
    tokens `transcribe` emits per utterance. platforms: jax.export lowering platforms (default: the current backend).
    """
    from maestro_jax import inference, sonar_eval

    variables = {k: v for k, v in variables.items() if k not in DROPPED_COLLECTIONS}
    variables = jax.tree.map(np.asarray, variables)
    out_dir = paths.resolve(out_dir)
    out = paths.as_path(out_dir)
    if (out / "export.json").exists():
        out.rmtree()
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out_dir} exists and is not an export; choose an empty or new directory for --out.")
    paths.makedirs(out / "functions")
    ocp.PyTreeCheckpointer().save(out / "params", variables)
    (out / "spm.model").write_bytes(paths.as_path(tokenizer_path).read_bytes())
    (out / "operative_config.gin").write_text(config_text)

    def transcribe(variables, waveform, waveform_length):
        return inference.transcribe_tokens(
            model, variables, waveform, waveform_length, decoder="rnnt_greedy", max_output_length=max_output_length
        )

    def embed(variables, waveform, waveform_length):
        return sonar_eval.embed_speech(model, variables, waveform, waveform_length)

    variable_specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    (batch,) = jax.export.symbolic_shape("B")
    buckets = sorted({int(round(s * SAMPLE_RATE_HZ)) for s in bucket_seconds})
    embedding_dim = None
    for samples in buckets:
        specs = (
            variable_specs,
            jax.ShapeDtypeStruct((batch, samples), np.float32),
            jax.ShapeDtypeStruct((batch,), np.int32),
        )
        for name, fn in (("transcribe", transcribe), ("embed", embed)):
            exported = jax.export.export(jax.jit(fn), platforms=platforms)(*specs)
            if name == "embed":
                embedding_dim = int(exported.out_avals[0].shape[-1])
            paths.as_path(_function_path(out_dir, name, samples)).write_bytes(exported.serialize())
    metadata = {
        "format": 1,
        "sample_rate": SAMPLE_RATE_HZ,
        "bucket_samples": buckets,
        "max_output_length": max_output_length,
        "steps": [int(s) for s in steps],
        "embedding_dim": embedding_dim,
        "platforms": list(platforms or [jax.default_backend()]),
    }
    (out / "export.json").write_text(json.dumps(metadata, indent=1))
    return out_dir


def export_model_dir(
    model_dir: str,
    out_dir: str,
    *,
    average_last: int = 1,
    checkpoint_step: int | None = None,
    use_ema: bool = False,
    tokenizer_path: str | None = None,
    **export_options,
) -> str:
    """Exports a training run: the params of checkpoint `checkpoint_step` (default: the latest), or with
    `average_last` K > 1 the mean of the params of the K newest checkpoints up to it. tokenizer_path defaults to the
    synthetic corpus's of the run's config. export_options go to `write_export`. Returns the export directory."""
    from maestro_jax import inference

    if average_last < 1:
        raise ValueError(f"--average_last must be >= 1, got {average_last}.")
    restored = inference.load_model_dir(model_dir, checkpoint_step=checkpoint_step, use_ema=use_ema)
    checkpoint_dir = os.path.join(paths.resolve(model_dir), "checkpoints")
    steps = [s for s in checkpoints.checkpoint_steps(checkpoint_dir) if s <= restored.step][-average_last:]
    if len(steps) < average_last:
        raise ValueError(
            f"--average_last {average_last} asks for more checkpoints than {checkpoint_dir} keeps up to step "
            f"{restored.step} ({steps}); lower it or keep more checkpoints (train.keep_checkpoints)."
        )
    variables = restored.variables
    if average_last > 1:
        params = [
            checkpoints.restore_inference_variables(checkpoint_dir, step, use_ema=use_ema)["params"] for step in steps
        ]
        variables = {**variables, "params": average_variables(params)}
    return write_export(
        out_dir,
        restored.model,
        variables,
        tokenizer_path=inference.checked_tokenizer(restored.model, tokenizer_path),
        config_text=restored.config_text,
        steps=steps,
        **export_options,
    )


def _function_path(export_dir: str, name: str, samples: int) -> str:
    return os.path.join(export_dir, "functions", f"{name}_{samples}.jax")


@dataclasses.dataclass
class ExportedModel:
    """A loaded export (see the module docstring). Inputs are waveform f32[B, N] (16 kHz, [-1, 1], zero-padded) and
    waveform_length i32[B] samples; N may be any length up to the largest bucket."""

    export_dir: str
    metadata: dict
    variables: dict
    config_text: str
    tokenizer_path: str

    def __post_init__(self):
        import sentencepiece

        # From bytes, as data.tokenizer.load_processor does (sentencepiece reads local files only); not that function
        # itself, which would import maestro_jax.data into the loader.
        self._tokenizer = sentencepiece.SentencePieceProcessor(
            model_proto=paths.as_path(self.tokenizer_path).read_bytes()
        )
        self._functions: dict = {}

    def _function(self, name: str, samples: int):
        key = (name, samples)
        if key not in self._functions:
            serialized = paths.as_path(_function_path(self.export_dir, name, samples)).read_bytes()
            self._functions[key] = jax.export.deserialize(bytearray(serialized))
        return self._functions[key]

    def _bucketed(self, waveform, waveform_length) -> tuple[np.ndarray, np.ndarray, int]:
        waveform = np.asarray(waveform, np.float32)
        waveform_length = np.asarray(waveform_length, np.int32)
        if waveform.ndim != 2 or waveform_length.shape != waveform.shape[:1]:
            raise ValueError(
                f"expected waveform f32[B, N] and waveform_length i32[B], got shapes {waveform.shape} and "
                f"{waveform_length.shape}."
            )
        longest = int(waveform_length.max(initial=0))
        fitting = [n for n in self.metadata["bucket_samples"] if n >= longest]
        if not fitting:
            largest = max(self.metadata["bucket_samples"])
            raise ValueError(
                f"an utterance of {longest} samples ({longest / SAMPLE_RATE_HZ:.1f} s) exceeds the export's longest "
                f"bucket of {largest} samples ({largest / SAMPLE_RATE_HZ:.1f} s) in {self.export_dir}; re-export with "
                "a longer --bucket_seconds or split the audio."
            )
        samples = fitting[0]
        padded = np.zeros((waveform.shape[0], samples), np.float32)
        kept = min(samples, waveform.shape[1])
        padded[:, :kept] = waveform[:, :kept]
        # Samples beyond each utterance's length are padding and must be zero, as in training batches.
        padded[np.arange(samples)[None, :] >= waveform_length[:, None]] = 0.0
        return padded, waveform_length, samples

    def transcribe_tokens(self, waveform, waveform_length) -> tuple[np.ndarray, np.ndarray]:
        """Greedy RNN-T: -> (tokens i32[B, L], lengths i32[B]) as NumPy arrays."""
        padded, lengths, samples = self._bucketed(waveform, waveform_length)
        tokens, token_length = self._function("transcribe", samples).call(self.variables, padded, lengths)
        return np.asarray(tokens), np.asarray(token_length)

    def transcribe(self, waveform, waveform_length) -> list[str]:
        """Greedy RNN-T transcripts, detokenised with the export's sentencepiece model."""
        tokens, lengths = self.transcribe_tokens(waveform, waveform_length)
        return [self._tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]

    def embed(self, waveform, waveform_length) -> np.ndarray:
        """Pooled speech embeddings f32[B, E]."""
        padded, lengths, samples = self._bucketed(waveform, waveform_length)
        return np.asarray(self._function("embed", samples).call(self.variables, padded, lengths))


def load(export_dir: str) -> ExportedModel:
    """Loads an export written by `write_export` (params restored as host NumPy arrays)."""
    export_dir = paths.resolve(export_dir)
    metadata_path = paths.as_path(os.path.join(export_dir, "export.json"))
    if not metadata_path.exists():
        raise FileNotFoundError(f"{metadata_path} is missing; is {export_dir} the --out of maestro-export?")
    variables = checkpoints.restore_pytree(os.path.join(export_dir, "params"))
    return ExportedModel(
        export_dir=export_dir,
        metadata=json.loads(metadata_path.read_text()),
        variables=variables,
        config_text=paths.as_path(os.path.join(export_dir, "operative_config.gin")).read_text(),
        tokenizer_path=os.path.join(export_dir, "spm.model"),
    )
