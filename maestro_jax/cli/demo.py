"""`maestro-demo`: the main job. Builds the medium synthetic corpus (cached), trains the toy RNN-T + CTC model on its
paired speech, evaluates it on the held-out test splits and on speech from voices and words outside the corpus
(`data/unseen_speech.py`: 22.05 kHz stereo and 16 kHz files), exports it, checks the export transcribes like the
checkpoint, and prints a summary.

maestro-demo [--gin_file gin/experiments/demo.gin] [--export_dir DIR] [--gin.NAME=VALUE ...]

Rerunning resumes: training continues from the model directory's latest checkpoint, and is skipped once that
reached TRAIN_STEPS, so a second run only evaluates and exports.
"""

import argparse
import logging
import os
import sys
import time

import gin

from maestro_jax import evaluation, export, train
from maestro_jax.data import pipeline, unseen_speech
from maestro_jax.gin_utils import GinConfigError, configure_gin, gin_bindings

DEFAULT_GIN_FILE = "gin/experiments/demo.gin"
EXPORT_CHECK_SPLIT = "test_in_vocab"
UNSEEN_SOURCE = "unseen_voices_and_words"  # the summary's name for data/unseen_speech.py's manifest


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="maestro-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", help=f"experiment gin file(s) (default {DEFAULT_GIN_FILE})")
    parser.add_argument("--export_dir", help="where the export goes (default MODEL_DIR/export)")
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(rest, parser)
    args.gin_file = args.gin_file or [DEFAULT_GIN_FILE]
    return args, bindings


def gin_value(name: str):
    """The value bound to `name` in the current gin config, with a macro (`%MODEL_DIR`) resolved."""
    value = gin.query_parameter(name)
    return value.scoped_configurable_fn() if isinstance(value, gin.config.ConfigurableReference) else value


def format_summary(
    results: dict[str, dict[str, float]], *, steps: int, seconds: dict[str, float], export_dir: str, export_wer: float
) -> str:
    """The demo's closing table: WER/CER per split, then steps, wall time per phase and the export path."""
    lines = ["", "=== maestro-demo summary ===", evaluation.format_table(results), ""]
    lines.append(f"train steps          {steps}")
    for phase, value in seconds.items():
        lines.append(f"wall time {phase:<10} {value / 60:6.1f} min")
    lines.append(f"export               {export_dir}")
    lines.append(
        f"export WER {EXPORT_CHECK_SPLIT} {100 * export_wer:.2f} % (checkpoint: "
        f"{100 * results[EXPORT_CHECK_SPLIT]['wer']:.2f} %)"
    )
    return "\n".join(lines)


def run(gin_files: list[str], bindings: list[str], export_dir: str | None = None) -> dict:
    """Runs every phase of the main job; returns {"results", "steps", "seconds", "export_dir", "export_wer"}."""
    start = time.perf_counter()
    configure_gin(gin_files, bindings)
    corpus_dir, size = pipeline.synthetic_corpus()
    print(f"corpus: {corpus_dir} ({size})", flush=True)
    seconds = {"corpus": time.perf_counter() - start}
    model_dir = gin_value("train.model_dir")
    steps = int(train.train().step)  # resumes; returns at once when model_dir already holds TRAIN_STEPS
    seconds["train"] = time.perf_counter() - start - sum(seconds.values())
    unseen = str(unseen_speech.write_unseen_manifest(os.path.join(model_dir, "unseen_speech")))
    results = evaluation.evaluate(model_dir=model_dir, splits=evaluation.DEFAULT_SPLITS, manifests=[unseen])
    results[UNSEEN_SOURCE] = results.pop(unseen)
    seconds["eval"] = time.perf_counter() - start - sum(seconds.values())
    export_dir = export.export_model_dir(model_dir, export_dir or os.path.join(model_dir, "export"))
    export_results = evaluation.evaluate(export_dir=export_dir, splits=[EXPORT_CHECK_SPLIT])
    seconds["export"] = time.perf_counter() - start - sum(seconds.values())
    seconds["total"] = time.perf_counter() - start
    return {
        "results": results,
        "steps": steps,
        "seconds": seconds,
        "export_dir": export_dir,
        "export_wer": export_results[EXPORT_CHECK_SPLIT]["wer"],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("maestro_jax").setLevel(logging.INFO)
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        outcome = run(args.gin_file, bindings, args.export_dir)
    except GinConfigError as error:
        print(f"maestro-demo: {error}", file=sys.stderr)
        return 2
    print(format_summary(**outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
