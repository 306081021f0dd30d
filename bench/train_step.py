"""Benchmark one jitted train step: compile time, per-device memory, FLOPs, steps/s and MFU; `--profile` shows where
the step's time goes, `--compare-torch` times a same-size PyTorch peer (bench/torch_peer_step.py) in the same run.

    .venv/bin/python bench/train_step.py --gin_file=gin/experiments/toy_supervised.gin \\
        --gin.synthetic_streams.bucket_seconds=() [--gin.NAME=VALUE ...] \\
        [--profile] [--repeats=N] [--synthetic_batches] [--json_out=PATH] [--compare-torch=.venv-torch/bin/python]

The model, objective and data are the recipe's `train.model`, `train.objective` and `train.make_data` unless
`bench_train_step.*` binds them, and the mesh is `make_mesh.*`'s. The step is set up and compiled by the same
`trainer.setup_train_step` as a training run. --synthetic_batches feeds random batches of the recipe's shapes
(`synthetic_streams.*` batch sizes, max_seconds, max_tokens; lengths 50-100% of the padded length) instead of its
corpus: no TensorFlow or seqio input pipeline, and no corpus to build.

--profile times separately jitted pieces of the step on one batch, each the objective's own functions (forward, or
forward + backward through jax.vjp where the step differentiates them): the frontend, each tower, the RNN-T
predictor, joint + loss and CTC, the text side of MAESTRO / ASTRA, BEST-RQ, the optimizer update; and beside them
the input pipeline's wait per step (next(data) and the copy to device, measured in the step loop), the full compiled
step and the pieces' sum. The encoder's FLOPs (XLA's cost analysis of the tower pieces) per second are compared with
the peak of `metrics.peak_flops_per_device` (on CPU the matmul probe, measured in the same run).
"""

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maestro_jax import frontend, partitioning, trainer
from maestro_jax import metrics as metrics_lib
from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.gin_utils import configure_gin, parse_gin_flags, query_value
from maestro_jax.models.towers import prepare_features
from maestro_jax.objectives import astra as astra_lib
from maestro_jax.objectives import common
from maestro_jax.objectives import maestro as maestro_lib
from maestro_jax.objectives.transducer import TransducerLoss

TORCH_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer_step.py")


def recipe_value(name: str):
    """The value the recipe binds to `train.<name>` (a configurable reference called when written `@fn()`)."""
    reference = gin.query_parameter(f"train.{name}")
    if isinstance(reference, gin.config.ConfigurableReference):
        fn = reference.scoped_configurable_fn
        return fn() if reference.evaluate else fn
    return reference


def bound_or_default(fn: Callable, parameter: str):
    """`fn.parameter` as gin binds it (macros resolved), else the default in fn's signature."""
    name = getattr(fn, "__name__", str(fn))
    try:
        return query_value(f"{name}.{parameter}")
    except ValueError:
        return inspect.signature(inspect.unwrap(fn)).parameters[parameter].default


def stream_shapes(make_data: Callable) -> dict[str, dict]:
    """{stream: {"batch_size", "max_samples" (audio streams), "max_tokens" (token streams)}} of the recipe's data."""
    max_samples = int(bound_or_default(make_data, "max_seconds") * SAMPLE_RATE_HZ)
    max_tokens = int(bound_or_default(make_data, "max_tokens"))
    shapes = {}
    for stream in bound_or_default(make_data, "streams"):
        shape = {"batch_size": int(bound_or_default(make_data, f"{stream}_batch_size"))}
        if stream != "text":
            shape["max_samples"] = max_samples
        if stream != "speech":
            shape["max_tokens"] = max_tokens
        shapes[stream] = shape
    return shapes


def synthetic_batches(shapes: dict[str, dict], vocab_size: int, seed: int) -> Iterator[dict]:
    """Endless random host batches of `shapes` (`stream_shapes`) with the input pipeline's keys and dtypes.

    Audio lasts 50-100% of max_samples (noise at 0.1, zero after the length); a paired transcript has ~0.85 of
    max_tokens per full-length utterance (the synthetic corpus's ~2.8 encoder frames of 40 ms per token); text-only
    lengths are 50-100% of max_tokens. Token ids lie in [1, vocab_size) (0 is pad/blank).
    """
    rng = np.random.default_rng(seed)
    while True:
        batch = {}
        for stream, shape in shapes.items():
            size = shape["batch_size"]
            fraction = rng.uniform(0.5, 1.0, size)
            example = {}
            if "max_samples" in shape:
                n = shape["max_samples"]
                lengths = np.round(fraction * n).astype(np.int32)
                waveform = (0.1 * rng.standard_normal((size, n))).astype(np.float32)
                waveform[np.arange(n)[None, :] >= lengths[:, None]] = 0.0
                example.update(waveform=waveform, waveform_length=lengths)
            if "max_tokens" in shape:
                u = shape["max_tokens"]
                share = 0.85 * fraction if "max_samples" in shape else fraction
                lengths = np.clip(np.round(share * u), 1, u).astype(np.int32)
                tokens = rng.integers(1, vocab_size, (size, u)).astype(np.int32)
                tokens[np.arange(u)[None, :] >= lengths[:, None]] = 0
                example.update(tokens=tokens, token_length=lengths)
            batch[stream] = example
        yield batch


@dataclasses.dataclass
class Row:
    """One timed piece: median/min seconds over the repeats, FLOPs from XLA's cost analysis, scalar output."""

    name: str
    seconds: float
    min_seconds: float
    flops: float
    encoder: bool = False
    value: float | None = None


class Profiler:
    """Times jitted pieces of a step on fixed inputs: `forward` and `forward_backward` return the piece's output."""

    def __init__(self, variables: dict, repeats: int):
        self.variables, self.repeats, self.rows = variables, repeats, []

    def _time(self, name: str, jitted, args, *, encoder: bool):
        compiled = jitted.lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = (cost[0] if cost else {}) if isinstance(cost, list | tuple) else (cost or {})
        times, out = metrics_lib.call_seconds(compiled, *args, repeats=self.repeats)
        self.rows.append(Row(name, float(np.median(times)), min(times), float(cost.get("flops", 0.0)), encoder))
        return out

    def forward(self, name: str, fn: Callable, *args):
        """fn(variables, *args) forward only (what the step does not differentiate: alignments, features)."""
        return self._time(name, jax.jit(fn), (self.variables, *args), encoder=False)

    def forward_backward(self, name: str, keys, fn: Callable, inputs: tuple, const: tuple = (), *, encoder=False):
        """fn(variables, *inputs, *const) -> (y, aux): y and the vjp of a fixed random cotangent with respect to
        params[k] for k in `keys` and `inputs` (the float tensors the step's gradient flows through). Returns
        (y, aux)."""
        params = self.variables["params"]
        diff = {k: params[k] for k in keys}
        rest = {**self.variables, "params": {k: v for k, v in params.items() if k not in keys}}

        def f(diff, inputs, rest, const):
            variables = {**rest, "params": {**rest["params"], **diff}}
            return fn(variables, *inputs, *const)

        y_shape, _ = jax.eval_shape(f, diff, inputs, rest, const)
        leaves, tree = jax.tree.flatten(y_shape)
        keys_rng = jax.random.split(jax.random.key(len(self.rows)), len(leaves))
        cotangent = jax.tree.unflatten(
            tree, [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys_rng, leaves, strict=True)]
        )

        def run(diff, inputs, rest, const, cotangent):
            y, vjp, aux = jax.vjp(lambda d, i: f(d, i, rest, const), diff, inputs, has_aux=True)
            return y, aux, vjp(cotangent)

        y, aux, _ = self._time(name, jax.jit(run), (diff, inputs, rest, const, cotangent), encoder=encoder)
        if np.ndim(y) == 0:
            self.rows[-1].value = float(y)
        return y, aux


def profile_paired_speech(p: Profiler, model, stream, key, *, ctc_weight: float, loss: TransducerLoss, step):
    """Frontend, speech and shared towers, RNN-T predictor, joint + loss and CTC on a paired stream, as in
    `common.supervised_speech_terms`; returns its PairedEncoding."""
    cfg = model.config
    keys = jax.random.split(key, 4)
    # The speech tower's own normalisation and SpecAugment are timed in the frontend; the tower piece starts after.
    plain = type(model)(dataclasses.replace(cfg, normalize_features=False, spec_augment=False))

    def features_fn(_, waveform, waveform_length, rng):
        features, length = frontend.log_mel_spectrogram(waveform, waveform_length)
        # As the speech tower: SpecAugment only where the recipe turns it on.
        return prepare_features(cfg, features, length, spec_augment_rng=rng if cfg.spec_augment else None)

    features, feature_length = p.forward(
        "frontend: log-mel + normalise + SpecAugment",
        features_fn,
        stream["waveform"],
        stream["waveform_length"],
        keys[0],
    )

    def speech_fn(variables, features, feature_length, rng):
        e_s, length = common.bound(plain, variables, rng).encode_speech_features(features, feature_length, train=True)
        return e_s, length

    e_s, frame_length = p.forward_backward(
        "speech tower fwd+bwd", ["speech_tower"], speech_fn, (), (features, feature_length, keys[1]), encoder=True
    )
    h = profile_shared(p, model, "shared tower fwd+bwd", e_s, frame_length, keys[2])
    tokens, token_length = stream["tokens"], stream["token_length"]

    def predictor_fn(variables, tokens, token_length, rng):
        return common.bound(model, variables, rng).rnnt_predict(tokens, token_length, train=True), None

    pred_proj, _ = p.forward_backward(
        "RNN-T predictor fwd+bwd", ["rnnt_decoder"], predictor_fn, (), (tokens, token_length, keys[3])
    )

    def joint_fn(variables, h, pred_proj, frame_length, tokens, token_length):
        enc_proj = common.bound(model, variables).rnnt_encoder_proj(h)
        nll, valid, _ = common.joint_nll(
            model, variables, enc_proj, pred_proj, frame_length, tokens, token_length, step=step, loss=loss
        )
        return common.per_token(nll, valid, token_length), enc_proj

    _, enc_proj = p.forward_backward(
        f"RNN-T joint + {loss.kind} loss fwd+bwd",
        ["rnnt_decoder"],
        joint_fn,
        (h, pred_proj),
        (frame_length, tokens, token_length),
    )
    if ctc_weight > 0:

        def ctc_fn(variables, h, frame_length, tokens, token_length):
            return common.ctc_terms(model, variables, h, frame_length, tokens, token_length).loss, None

        p.forward_backward("CTC head + loss fwd+bwd", ["ctc_head"], ctc_fn, (h,), (frame_length, tokens, token_length))
    return common.PairedEncoding(e_s, h, frame_length, enc_proj, pred_proj)


def profile_shared(p: Profiler, model, name: str, x, length, key):
    """The shared tower forward + backward (into x too) on x f32[B, T, D]; returns h."""

    def shared_fn(variables, x, length, rng):
        return common.bound(model, variables, rng).shared_encode(x, length, train=True)[0], None

    h, _ = p.forward_backward(name, ["shared_tower"], shared_fn, (x,), (length, key), encoder=True)
    return h


def profile_text_transducer(p: Profiler, model, name: str, h, length, tokens, token_length, key, *, loss, step):
    """RNN-T predictor + joint + loss on a text-only stream's shared-tower output (as the objectives' text terms)."""

    def fn(variables, h, length, tokens, token_length, rng):
        nll, _, _, _ = common.transducer_nll(
            model, variables, h, length, tokens, token_length, rng=rng, step=step, loss=loss
        )
        return common.per_token(nll, token_length > 0, token_length), None

    p.forward_backward(name, ["rnnt_decoder"], fn, (h,), (length, tokens, token_length, key))


def profile_bestrq(p: Profiler, model, stream, key, masking):
    """BEST-RQ on the speech-only stream (`common.bestrq_terms`): inputs, towers, head + loss."""
    keys = jax.random.split(key, 5)

    def inputs_fn(variables, stream, rng_mask, rng_noise):
        return common.bestrq_inputs(model, variables, stream, (rng_mask, rng_noise), masking)

    inputs, feature_length, labels, label_length, masked = p.forward(
        "speech stream: BEST-RQ log-mel + targets + masking", inputs_fn, stream, keys[0], keys[1]
    )

    def speech_fn(variables, inputs, feature_length, rng):
        return common.bound(model, variables, rng).encode_speech_features(inputs, feature_length, train=True)

    e_s, frame_length = p.forward_backward(
        "speech stream: speech tower fwd+bwd",
        ["speech_tower"],
        speech_fn,
        (),
        (inputs, feature_length, keys[2]),
        encoder=True,
    )
    h = profile_shared(p, model, "speech stream: shared tower fwd+bwd", e_s, frame_length, keys[3])

    def head_fn(variables, h, frame_length, labels, label_length, masked):
        return common.bestrq_head_terms(model, variables, h, frame_length, labels, label_length, masked).loss, None

    p.forward_backward(
        "speech stream: BEST-RQ head + loss fwd+bwd",
        ["bestrq_head"],
        head_fn,
        (h,),
        (frame_length, labels, label_length, masked),
    )


def profile_objective(p: Profiler, model, objective, batch, key, step) -> None:
    """The pieces of `objective` (supervised, maestro or astra) on `batch`, in the objective's order."""
    name = getattr(objective, "__name__", "")
    keys = jax.random.split(key, 3)
    loss = TransducerLoss()
    if name == "supervised":
        ctc_weight = bound_or_default(objective, "ctc_weight") / bound_or_default(objective, "rnnt_weight")
        profile_paired_speech(p, model, batch["paired"], keys[0], ctc_weight=ctc_weight, loss=loss, step=step)
        return
    if name not in ("maestro", "astra"):
        raise ValueError(f"--profile knows the supervised, maestro and astra objectives; the recipe trains {name!r}.")
    shared = common.TextInjection()
    paired = batch.get("paired")
    if paired is not None:
        encoding = profile_paired_speech(p, model, paired, keys[0], ctc_weight=shared.ctc_weight, loss=loss, step=step)
        profile_text_side_paired(p, model, objective, paired, encoding, keys[1], loss)
    if "text" in batch:
        profile_text_stream(p, model, objective, batch["text"], keys[2], loss, step)
    if "speech" in batch and shared.bestrq_weight > 0:
        masking = shared.bestrq_masking or common.BestRQMasking()
        profile_bestrq(p, model, batch["speech"], jax.random.fold_in(key, 3), masking)


def profile_text_side_paired(p: Profiler, model, objective, stream, encoding, key, loss: TransducerLoss):
    """MAESTRO's modality matching or ASTRA's consistency on the paired stream: alignment, then the text side."""
    tokens, token_length = stream["tokens"], stream["token_length"]
    text = {"tokens": tokens, "token_length": token_length}
    if objective.__name__ == "maestro":
        aligner = bound_or_default(objective, "aligner")

        def align_fn(variables, encoding):
            return maestro_lib.paired_durations(
                model, variables, text, encoding, aligner=aligner, chunk_size=loss.chunk_size
            )

        durations = p.forward(f"paired: {aligner} alignment -> durations (fwd)", align_fn, encoding)

        def matching_fn(variables, e_s, frame_length, durations, rng):
            terms = maestro_lib.matching_terms_given_durations(
                model, variables, text, e_s, frame_length, durations, rng, matching_weight=1.0, duration_weight=0.1
            )
            return terms.loss, None

        p.forward_backward(
            "paired: text tower + duration + resampler + refiner + L_mm fwd+bwd",
            ["text_tower", "duration_model", "refiner"],
            matching_fn,
            (encoding.e_s,),
            (encoding.frame_length, durations, key),
        )
        return
    consistency = bound_or_default(objective, "consistency")
    aligner, distance = bound_or_default(objective, "aligner"), bound_or_default(objective, "distance")

    def align_fn(variables, encoding):
        return astra_lib.consistency_alignment(
            model, variables, text, encoding, consistency=consistency, aligner=aligner, chunk_size=loss.chunk_size
        )

    weights = p.forward(f"paired: {consistency} consistency alignment (fwd)", align_fn, encoding)

    def consistency_fn(variables, e_s, weights, rng):
        terms = astra_lib.consistency_given_alignment(
            model, variables, text, e_s, weights, rng, consistency=consistency, distance=distance
        )
        return terms.loss, None

    p.forward_backward(
        "paired: text tower + consistency fwd+bwd", ["text_tower"], consistency_fn, (encoding.e_s,), (weights, key)
    )


def profile_text_stream(p: Profiler, model, objective, stream, key, loss: TransducerLoss, step):
    """The text-only stream: MAESTRO's upsampled text or ASTRA's token-rate text, the shared tower and the RNN-T."""
    keys = jax.random.split(key, 5)
    text = {"tokens": stream["tokens"], "token_length": stream["token_length"]}
    mask_prob, mask_span = bound_or_default(objective, "text_mask_prob"), bound_or_default(objective, "text_mask_span")
    if objective.__name__ == "maestro":
        max_frames = stream["tokens"].shape[1] * bound_or_default(objective, "text_frames_per_token")

        def text_fn(variables, rng_text, rng_refine, rng_mask):
            upsampled, frame_length, _ = maestro_lib.unspoken_text_frames(
                model,
                variables,
                text,
                (rng_text, rng_refine, rng_mask),
                max_frames=max_frames,
                mask_prob=mask_prob,
                mask_span=mask_span,
            )
            return upsampled, frame_length

        x, length = p.forward_backward(
            "text stream: text tower + duration + resampler + refiner fwd+bwd",
            ["text_tower", "refiner"],
            text_fn,
            (),
            tuple(keys[:3]),
        )
    else:

        def text_fn(variables, rng_text, rng_mask):
            e_t = astra_lib.masked_token_rate_text(
                model, variables, text, (rng_text, rng_mask), mask_prob=mask_prob, mask_span=mask_span
            )
            return e_t, None

        x, _ = p.forward_backward("text stream: text tower fwd+bwd", ["text_tower"], text_fn, (), tuple(keys[:2]))
        length = stream["token_length"]
    h = profile_shared(p, model, "text stream: shared tower fwd+bwd", x, length, keys[3])
    profile_text_transducer(
        p,
        model,
        "text stream: RNN-T predictor + joint + loss fwd+bwd",
        h,
        length,
        stream["tokens"],
        stream["token_length"],
        keys[4],
        loss=loss,
        step=step,
    )


def profile_optimizer(p: Profiler, optimizer, state: trainer.TrainState) -> None:
    """Global-norm clipping + the optimizer update + apply_updates on a gradient tree of the params' shape."""

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), state.params)
    p._time("optimizer update (clip + AdamW)", jax.jit(update), (state.params, state.opt_state, grads), encoder=False)


@gin.configurable
def bench_train_step(
    *,
    model=None,
    objective=None,
    make_data=None,
    steps: int = 20,
    seed: int = 0,
    synthetic: bool = False,
    profile: bool = False,
    repeats: int = 10,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Times `steps` train steps after an AOT compile; returns the figures it prints.

    model / objective / make_data: default the recipe's train.* bindings. synthetic: random batches of the recipe's
    shapes instead of its data (`synthetic_batches`). profile: also time the step's pieces (`profile_objective`),
    each `repeats` times (median); figures["profile"] holds the rows. mesh: default `partitioning.make_mesh()`.
    """
    model = recipe_value("model") if model is None else model
    objective = recipe_value("objective") if objective is None else objective
    make_data = recipe_value("make_data") if make_data is None else make_data
    rules = partitioning.logical_axis_rules()
    mesh = partitioning.make_mesh() if mesh is None else mesh
    optimizer = trainer.make_optimizer()
    if synthetic:
        data = synthetic_batches(stream_shapes(make_data), model.config.vocab_size, seed)
    else:
        data = make_data(jax.process_index(), jax.process_count(), seed)
    local = next(data)
    setup = trainer.setup_train_step(model, optimizer, local, mesh, rules, seed=seed, use_ema=False)
    batch = partitioning.global_batch(local, mesh, rules)
    figures = {"objective": getattr(objective, "__name__", str(objective))}
    start = time.perf_counter()
    compiled, compile_figures = setup.compile(trainer.make_train_step(model, objective, optimizer))
    figures.update(compile_figures, compile_s=time.perf_counter() - start)
    if profile:
        figures["profile"] = profile_step(setup, compiled, model, objective, optimizer, local, repeats)
    state = setup.initial_state(local)
    state, step_metrics = compiled(state, batch)  # warm-up
    figures["first_step_loss"] = float(np.asarray(step_metrics["loss"]))
    jax.block_until_ready(step_metrics)
    waits = []
    start = time.perf_counter()
    for _ in range(steps):
        wait_start = time.perf_counter()
        next_batch = partitioning.global_batch(next(data), mesh, rules)
        waits.append(time.perf_counter() - wait_start)
        state, step_metrics = compiled(state, next_batch)
    jax.block_until_ready(step_metrics)
    figures["steps_per_second"] = steps / (time.perf_counter() - start)
    figures["input_wait_ms"] = 1e3 * float(np.median(waits)) if waits else 0.0
    examples_per_step = sum(next(iter(stream.values())).shape[0] for stream in batch.values())
    figures["examples_per_second"] = figures["steps_per_second"] * examples_per_step
    peak, source = metrics_lib.peak_flops_per_device(mesh.devices.flat[0])
    figures["peak_flops_per_device"], figures["peak_source"] = peak, source
    if "flops_per_step" in figures:
        figures["mfu"] = metrics_lib.model_flops_utilization(
            figures["flops_per_step"], figures["steps_per_second"], peak
        )
    if profile:
        summarise_profile(figures, peak)
    figures["final_loss"] = float(np.asarray(step_metrics["loss"]))
    figures["device"] = f"{jax.device_count()} x {mesh.devices.flat[0].device_kind}"
    return figures


def profile_step(setup: trainer.StepSetup, compiled, model, objective, optimizer, local, repeats: int) -> dict:
    """The pieces of one step on `local` (a fresh state's params) and the `compiled` step on the same batch."""
    mesh, rules = setup.mesh, setup.rules
    state = setup.initial_state(local)
    batch = partitioning.global_batch(local, mesh, rules)
    p = Profiler(state.variables(), repeats)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        profile_objective(p, model, objective, batch, jax.random.fold_in(state.rng, 1), jnp.asarray(state.step))
        profile_optimizer(p, optimizer, state)
    times, losses = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
        losses.append(float(np.asarray(metrics["loss"])))
    return {
        "rows": [dataclasses.asdict(row) for row in p.rows],
        "step_seconds": float(np.median(times)),
        "step_min_seconds": min(times),
        "step_loss": losses[0],
    }


def summarise_profile(figures: dict, peak: float) -> None:
    """Adds the pieces' sum, the encoder's share and MFU, and the input wait to figures["profile"]."""
    prof = figures["profile"]
    rows = prof["rows"]
    prof["sum_seconds"] = sum(row["seconds"] for row in rows)
    encoder = [row for row in rows if row["encoder"]]
    encoder_seconds = sum(row["seconds"] for row in encoder)
    prof["encoder_seconds"] = encoder_seconds
    prof["encoder_flops"] = sum(row["flops"] for row in encoder)
    prof["encoder_mfu"] = prof["encoder_flops"] / encoder_seconds / peak if encoder_seconds else 0.0
    prof["input_wait_seconds"] = figures["input_wait_ms"] / 1e3
    prof["peak_flops"] = peak


def format_profile(figures: dict) -> str:
    """The profile as a Markdown table: ms per piece, share of the compiled step, GFLOP/s."""
    prof = figures["profile"]
    step = prof["step_seconds"]

    def line(name, seconds, flops=None):
        rate = f"{flops / seconds / 1e9:.1f}" if flops and seconds else ""
        return f"| {name} | {1e3 * seconds:.1f} | {100 * seconds / step:.1f} | {rate} |"

    lines = [
        f"objective {figures['objective']}: compiled step {1e3 * step:.1f} ms"
        f" (min {1e3 * prof['step_min_seconds']:.1f})",
        "",
        "| piece | ms | % of step | GFLOP/s |",
        "|---|---|---|---|",
        *(line(row["name"], row["seconds"], row["flops"]) for row in prof["rows"]),
        line("input pipeline wait (next(data) + to device, per step)", prof["input_wait_seconds"]),
        line("sum of pieces (without input wait)", prof["sum_seconds"]),
        line("compiled train step", step, figures.get("flops_per_step")),
        "",
        f"encoder (towers fwd+bwd): {1e3 * prof['encoder_seconds']:.1f} ms = "
        f"{100 * prof['encoder_seconds'] / step:.1f}% of the step, "
        f"{prof['encoder_flops'] / prof['encoder_seconds'] / 1e9:.1f} GFLOP/s = {100 * prof['encoder_mfu']:.1f}% of "
        f"the {figures['peak_source']} ({prof['peak_flops'] / 1e9:.1f} GFLOP/s)",
    ]
    return "\n".join(lines)


def torch_peer_arguments(model, shapes: dict, lengths: dict, repeats: int) -> list[str]:
    """bench/torch_peer_step.py's arguments for the toy supervised model and paired batch of this run."""
    cfg = model.config
    paired = shapes["paired"]
    values = {
        "vocab_size": cfg.vocab_size,
        "model_dim": cfg.model_dim,
        "num_heads": cfg.num_heads,
        "ff_dim": cfg.ff_dim,
        "conv_kernel_size": cfg.conv_kernel_size,
        "num_layers": cfg.num_speech_layers + cfg.num_shared_layers,
        "subsampling_channels": cfg.subsampling_channels,
        "subsampling_factor": cfg.subsampling_factor,
        "prediction_embed_dim": cfg.prediction_embed_dim,
        "prediction_dim": cfg.prediction_dim,
        "joint_dim": cfg.joint_dim,
        "dropout": cfg.dropout_rate,
        "max_samples": paired["max_samples"],
        "max_tokens": paired["max_tokens"],
        "waveform_lengths": ",".join(str(int(x)) for x in lengths["waveform_length"]),
        "token_lengths": ",".join(str(int(x)) for x in lengths["token_length"]),
        "repeats": repeats,
        "threads": len(os.sched_getaffinity(0)),
    }
    return [f"--{name}={value}" for name, value in values.items()]


def compare_torch(python: str, model, objective, figures: dict, repeats: int) -> dict:
    """Runs bench/torch_peer_step.py under `python` (a torch side venv) on this run's padded paired shapes, with the
    lengths of the first `synthetic_batches` batch of those shapes (the padded shapes set both steps' cost), and
    returns its figures with the ratios to the JAX step (the profile's compiled step, else 1 / steps_per_second)."""
    if getattr(objective, "__name__", "") != "supervised":
        raise ValueError("--compare-torch compares the supervised recipe (the PyTorch peer trains RNN-T + CTC).")
    make_data = recipe_value("make_data")
    shapes = stream_shapes(make_data)
    lengths = next(synthetic_batches(shapes, model.config.vocab_size, 0))["paired"]
    args = torch_peer_arguments(model, shapes, lengths, repeats)
    result = subprocess.run([python, TORCH_PEER, *args], check=True, capture_output=True, text=True)
    peer = json.loads(result.stdout.strip().splitlines()[-1])
    jax_step = figures["profile"]["step_seconds"] if "profile" in figures else 1.0 / figures["steps_per_second"]
    peer["jax_step_seconds"] = jax_step
    peer["torch_rnnt_over_jax"] = peer["rnnt_step_seconds"] / jax_step
    peer["torch_ctc_over_jax"] = peer["ctc_step_seconds"] / jax_step
    return peer


def main(argv=None, *, mesh=None) -> int:
    """The command line above; mesh: default `partitioning.make_mesh()` (tests pass one device)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench/train_step.py", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--profile", action="store_true", help="time the step's pieces")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per piece (median)")
    parser.add_argument("--synthetic_batches", action="store_true", help="random batches of the recipe's shapes")
    parser.add_argument("--json_out", default=None, help="write the figures here as JSON")
    parser.add_argument("--compare-torch", dest="compare_torch", default=None, help="torch venv python")
    args, rest = parser.parse_known_args(argv)
    gin_files, bindings = parse_gin_flags(rest, prog="bench/train_step.py", description=__doc__.splitlines()[0])
    configure_gin(gin_files, bindings)
    figures = bench_train_step(profile=args.profile, repeats=args.repeats, synthetic=args.synthetic_batches, mesh=mesh)
    for name, value in figures.items():
        if name != "profile":
            print(f"{name:>28}: {value}")
    if "profile" in figures:
        print()
        print(format_profile(figures))
    if args.compare_torch:
        model, objective = recipe_value("model"), recipe_value("objective")
        figures["torch_peer"] = compare_torch(args.compare_torch, model, objective, figures, args.repeats)
        print()
        print(format_torch(figures["torch_peer"]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


def format_torch(peer: dict) -> str:
    """The PyTorch peer beside the JAX step."""

    def line(name, seconds, loss=None):
        loss = f"{loss:.3f}" if loss is not None else ""
        return f"| {name} | {1e3 * seconds:.1f} | {loss} | {seconds / peer['jax_step_seconds']:.2f} |"

    return "\n".join(
        [
            f"PyTorch peer ({peer['torch']}, {peer['threads']} threads, {peer['parameters']:,} parameters):",
            "",
            "| train step | ms | first loss per token | ms / JAX step's ms |",
            "|---|---|---|---|",
            line("JAX: the recipe's step (RNN-T + CTC)", peer["jax_step_seconds"]),
            line("torch: RNN-T (torchaudio rnnt_loss) + CTC", peer["rnnt_step_seconds"], peer["rnnt_loss_per_token"]),
            line("torch: CTC only, same encoder", peer["ctc_step_seconds"], peer["ctc_loss_per_token"]),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
