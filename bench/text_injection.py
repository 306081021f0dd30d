"""The toy paper table: does text injection help words never heard in paired speech? And does SONAR retrieve?

    .venv/bin/python bench/text_injection.py [--workdir runs/text_injection] [--branch_step 2000] [--steps 2000]
        [--sonar_text_steps 2000] [--sonar_speech_steps 6000] [--jobs 4] [--systems supervised,maestro,astra,sonar]
        [--decoder rnnt_beam] [--beam_size 8] [--fusion_weights 0,0.15,0.3,0.45] [--length_rewards 0,0.3,0.6,0.9]
        [--gin_file EXTRA.gin ...] [--gin.NAME=VALUE ...]

Protocol: a supervised trunk (paired speech only, gin/experiments/toy_supervised.gin at the peak learning rate)
trains to `--branch_step`, where it already listens; every system then branches from the trunk's params
(gin/runs/toy_branch.gin) and trains `--steps` more on the medium synthetic corpus with one model size and one
schedule (gin/experiments/toy_*.gin, which share gin/runs/toy_table.gin): paired-only supervised RNN-T (the control),
MAESTRO and ASTRA (both adding the unspoken-text and untranscribed-speech streams). Each is scored for WER/CER on
test_in_vocab and test_text_only_vocab (every utterance of the latter holds words that occur only in text_train) plus
the recall of those text-only words, decoded with `--decoder` (RNN-T beam search of 8 by default: the prediction
network is where text injection puts what it learnt of spelling, and greedy decoding commits to each piece before
it can weigh the word), with shallow fusion of the model's own internal LM and a per-label reward whose weights each
system picks on dev from the `--fusion_weights` x `--length_rewards` grid ("0" and "0": plain beam search; dev holds
in-vocabulary words only, so the choice never sees a text-only word; the plain beam's scores are kept too). SONAR
trains stage 1 (text auto-encoder on text_train, from scratch) and stage 2 (the trunk's speech and shared towers + a
fresh pooler on paired_train) and scores speech->text retrieval error on both test splits. `--branch_step 0` trains
every system from scratch instead. WORKDIR/dev_wer.png plots dev WER against step for the trunk and every branch.

Each stage runs in its own process; `--jobs` chains run at once, each pinned to its share of the CPU cores. Results
land in WORKDIR/<stage>/result.json; rerunning resumes training from checkpoints and skips finished stages, then
prints the table (Markdown) and writes WORKDIR/table.md. `--gin_file`/`--gin.` go to every stage after its
experiment file (the test runs the tiny model on the tiny corpus this way).
"""

import argparse
import collections
import functools
import json
import os
import subprocess
import sys
import time

from maestro_jax.data import corpus_layout
from maestro_jax.gin_utils import gin_bindings
from maestro_jax.inference import DECODERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = corpus_layout.TEST_SPLITS
SPEECH_SYSTEMS = ("supervised", "maestro", "astra")
TRUNK = "trunk"  # the shared supervised steps every branch starts from
BRANCH_GIN = "gin/runs/toy_branch.gin"
# A system is a chain of stages run one after the other; each stage is one experiment file.
CHAINS = {
    "supervised": ("supervised",),
    "maestro": ("maestro",),
    "astra": ("astra",),
    "sonar": ("sonar_text", "sonar_speech"),
}


def experiment_file(stage: str) -> str:
    return f"gin/experiments/toy_{'supervised' if stage == TRUNK else stage}.gin"


def stage_config(stage: str, workdir: str, steps: int, branch_step: int) -> tuple[list[str], list[str]]:
    """(gin files after the experiment file, bindings) that make `stage` a trunk, a branch of the trunk or (with
    branch_step 0, and for SONAR's text stage) a run from scratch."""
    bindings = [f"MODEL_DIR = '{os.path.join(workdir, stage)}'", f"TRAIN_STEPS = {steps}", "train.progress_bar = False"]
    trunk_dir = os.path.join(workdir, TRUNK)
    if stage == TRUNK:
        # The stable phase of toy_table.gin's warmup-stable-decay schedule: the branches decay over their own steps.
        return [], bindings + ["make_learning_rate_schedule.decay = 'constant'"]
    if stage == "sonar_speech":
        bindings.append(f"SONAR_TEACHER_CHECKPOINT = '{os.path.join(workdir, 'sonar_text')}'")
    if stage == "sonar_text" or not branch_step:
        return [], bindings
    bindings += [
        f"init_params_from_checkpoint.checkpoint = '{trunk_dir}'",
        f"init_params_from_checkpoint.step = {branch_step}",
    ]
    if stage == "sonar_speech":
        # The teacher, then the trunk's towers; the pooler has the teacher's embedding size and starts fresh.
        bindings += [
            "train.init_hooks = [@init_teacher_from_checkpoint, @init_params_from_checkpoint]",
            "init_params_from_checkpoint.modules = ('speech_tower', 'shared_tower')",
        ]
    return [BRANCH_GIN], bindings


def text_only_word_recall(rows: list[dict], text_only_words: set[str]) -> dict[str, float]:
    """Share of text-only words in the references that the hypothesis of the same utterance contains (as many times).

    rows: {"reference", "hypothesis"} after the evaluation normaliser. Returns {"recall", "num_words"}.
    """
    found = total = 0
    for row in rows:
        wanted = collections.Counter(w for w in row["reference"].split() if w in text_only_words)
        heard = collections.Counter(row["hypothesis"].split())
        total += sum(wanted.values())
        found += sum(min(count, heard[word]) for word, count in wanted.items())
    return {"recall": found / total if total else float("nan"), "num_words": float(total)}


# ---------------------------------------------------------------- one stage (a child process)


def run_stage(
    stage: str,
    workdir: str,
    steps: int,
    branch_step: int,
    gin_files: list[str],
    bindings: list[str],
    *,
    decoder: str = "rnnt_beam",
    beam_size: int = 8,
    fusion_weights: tuple[float, ...] = (0.0,),
    length_rewards: tuple[float, ...] = (0.0,),
) -> dict:
    """Trains one stage to `steps` (resuming) and evaluates it; returns and writes its result.json.

    With rnnt_beam and a fusion grid other than (0,) x (0,), the internal-LM fusion weight and length reward are
    chosen on dev (`evaluation.tune_fusion`: dev has only in-vocabulary words, so the choice never sees a text-only
    word) and the test splits are scored with them; result["plain_beam_metrics"] keeps the plain beam's scores.
    """
    from maestro_jax import checkpoints, evaluation, train
    from maestro_jax.gin_utils import configure_gin
    from maestro_jax.metrics import log_to_stderr

    log_to_stderr()

    model_dir = os.path.join(workdir, stage)
    stage_files, stage_bindings = stage_config(stage, workdir, steps, branch_step)
    configure_gin([experiment_file(stage), *stage_files, *gin_files], stage_bindings + bindings)
    train.train()  # resumes; returns at once when the stage already holds `steps` (or more: re-scoring)
    saved = checkpoints.checkpoint_steps(os.path.join(model_dir, "checkpoints"))
    if not saved or max(saved) < steps:
        # train() also returns after a preemption save (SIGTERM): that stage is not finished and must not be scored.
        raise SystemExit(f"[{stage}] stopped at step {max(saved, default=0)} of {steps} (preempted?); rerun to resume")
    # Scored at exactly `steps` (kept by KEEP_CHECKPOINTS), so a run cut short can be scored at a common earlier step.
    result = {"stage": stage, "steps": steps, "train_seconds": logged_train_seconds(model_dir, steps)}
    if branch_step and stage not in (TRUNK, "sonar_text"):
        result["branch_step"] = branch_step
    start = time.perf_counter()
    if stage in SPEECH_SYSTEMS:
        hypotheses = os.path.join(model_dir, "hypotheses.jsonl")
        score = functools.partial(
            evaluation.evaluate,
            model_dir=model_dir,
            splits=SPLITS,
            decoder=decoder,
            beam_size=beam_size,
            checkpoint_step=steps,
            progress=False,
        )
        fusion = {"ilm_fusion_weight": 0.0, "length_reward": 0.0}
        if decoder == "rnnt_beam" and (any(fusion_weights) or any(length_rewards)):
            result["fusion"] = evaluation.tune_fusion(
                model_dir=model_dir,
                weights=fusion_weights,
                rewards=length_rewards,
                beam_size=beam_size,
                checkpoint_step=steps,
            )
            fusion = {key: result["fusion"][key] for key in fusion}
            if any(fusion.values()):
                result["plain_beam_metrics"] = score()
        result["metrics"] = score(out=hypotheses, **fusion)
        result["decoder"] = decoder if decoder != "rnnt_beam" else f"rnnt_beam {beam_size}"
        if any(fusion.values()):
            result["decoder"] += f", ILM fusion {fusion['ilm_fusion_weight']:g} + {fusion['length_reward']:g}/label"
        with open(hypotheses) as f:
            rows = [row for row in map(json.loads, f) if row["source"] == "test_text_only_vocab"]
        normalized = [{k: evaluation.normalize_transcript(row[k]) for k in ("reference", "hypothesis")} for row in rows]
        result["text_only_words"] = text_only_word_recall(normalized, corpus_text_only_words())
    elif stage == "sonar_speech":
        result["metrics"] = evaluation.retrieval_errors(
            model_dir=model_dir, splits=SPLITS, checkpoint_step=steps, progress=False
        )
    result["eval_seconds"] = time.perf_counter() - start
    with open(os.path.join(model_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def logged_train_seconds(model_dir: str, step: int) -> float:
    """Training time to `step` from the run's metrics.jsonl (logged steps/s per interval; compile excluded), so a
    resumed or re-scored run still reports the time its steps took."""
    seconds, previous = 0.0, 0
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        for record in map(json.loads, f):
            if "steps_per_second" in record and previous < record["step"] <= step:
                seconds += (record["step"] - previous) / record["steps_per_second"]
                previous = record["step"]
    return seconds


def corpus_text_only_words() -> set[str]:
    """The synthetic corpus's B words (text_train only) of the corpus named by the current gin config."""
    from maestro_jax.data import pipeline

    corpus_dir, _ = pipeline.synthetic_corpus()
    with open(os.path.join(corpus_dir, corpus_layout.VOCAB_FILE)) as f:
        return set(json.load(f)["B"])


# ---------------------------------------------------------------- the orchestrator


def core_sets(jobs: int) -> list[set[int]]:
    """This process's CPUs split into `jobs` disjoint sets (one per concurrent chain); fewer CPUs than jobs: shared."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < jobs:
        return [set(cpus)] * jobs
    share = len(cpus) // jobs
    return [set(cpus[i * share : (i + 1) * share]) for i in range(jobs)]


def stage_command(stage: str, args: argparse.Namespace, passthrough: list[str]) -> list[str]:
    steps = {
        "sonar_text": args.sonar_text_steps,
        "sonar_speech": args.sonar_speech_steps or args.steps,
        TRUNK: args.branch_step,
    }.get(stage, args.steps)
    command = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--workdir", args.workdir]
    command += ["--steps", str(steps), "--branch_step", str(args.branch_step)]
    command += ["--decoder", args.decoder, "--beam_size", str(args.beam_size)]
    command += ["--fusion_weights", args.fusion_weights, "--length_rewards", args.length_rewards]
    return command + passthrough


def run_chains(chains: list[list[str]], jobs: int, args: argparse.Namespace, passthrough: list[str]) -> None:
    """Runs each chain of stages, `jobs` chains at once, each stage a child process pinned to a core set; logs go to
    WORKDIR/<stage>.log. Raises if a stage fails."""
    pending = [list(chain) for chain in chains]
    running: dict[int, tuple[subprocess.Popen, list[str], str]] = {}  # slot -> (process, rest of chain, stage)
    slots = core_sets(jobs)
    failures = []
    while pending or running:
        for slot, cores in enumerate(slots):
            if slot in running or not pending:
                continue
            chain = pending.pop(0)
            running[slot] = start_stage(chain, cores, args, passthrough)
        time.sleep(2)
        for slot, (process, rest, stage) in list(running.items()):
            if process.poll() is None:
                continue
            del running[slot]
            if process.returncode != 0:
                failures.append(f"{stage} (exit {process.returncode}, log {os.path.join(args.workdir, stage)}.log)")
            elif rest:
                running[slot] = start_stage(rest, slots[slot], args, passthrough)
    if failures:
        raise RuntimeError("stages failed: " + "; ".join(failures))


def start_stage(chain: list[str], cores: set[int], args, passthrough) -> tuple[subprocess.Popen, list[str], str]:
    stage, rest = chain[0], chain[1:]
    if os.path.exists(os.path.join(args.workdir, stage, "result.json")):
        print(f"[{stage}] done before; skipped", flush=True)
        return subprocess.Popen(["true"]), rest, stage
    print(f"[{stage}] starting on cpus {sorted(cores)}; log {os.path.join(args.workdir, stage)}.log", flush=True)
    log = open(os.path.join(args.workdir, f"{stage}.log"), "a")  # a rerun appends: the training log survives
    process = subprocess.Popen(
        stage_command(stage, args, passthrough),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    return process, rest, stage


def load_results(workdir: str) -> dict[str, dict]:
    results = {}
    for stage in [TRUNK] + [s for chain in CHAINS.values() for s in chain]:
        path = os.path.join(workdir, stage, "result.json")
        if os.path.exists(path):
            with open(path) as f:
                results[stage] = json.load(f)
    return results


def steps_and_seconds(result: dict, results: dict[str, dict]) -> tuple[str, float]:
    """A stage's steps ("trunk + branch" for a branch) and training seconds (the trunk's included)."""
    if not result.get("branch_step"):
        return str(result["steps"]), result["train_seconds"]
    trunk_seconds = results.get(TRUNK, {}).get("train_seconds", float("nan"))
    return f"{result['branch_step']} + {result['steps']}", trunk_seconds + result["train_seconds"]


def dev_wer_curves(workdir: str, results: dict[str, dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, dev WER %)} from each speech stage's metrics.jsonl (the trainer's periodic RNN-T greedy eval),
    a branch's steps counted from the start of the trunk and its curve starting at the trunk's point there."""
    from maestro_jax.metrics import read_jsonl

    def curve(stage: str, offset: int, up_to: int | None = None) -> tuple[list[int], list[float]]:
        path = os.path.join(workdir, stage, "metrics.jsonl")
        rows = [r for r in read_jsonl(path) if "eval/dev/wer" in r] if os.path.exists(path) else []
        kept = {r["step"]: 100 * r["eval/dev/wer"] for r in rows if up_to is None or r["step"] <= up_to}
        points = sorted(kept.items())
        return [offset + step for step, _ in points], [wer for _, wer in points]

    curves = {}
    branch_step = max((r.get("branch_step", 0) for r in results.values()), default=0)
    if branch_step:
        curves[f"{TRUNK} (supervised)"] = curve(TRUNK, 0, branch_step)
    for system in SPEECH_SYSTEMS:
        if system in results:
            steps, wers = curve(system, results[system].get("branch_step", 0), results[system]["steps"])
            trunk = curves.get(f"{TRUNK} (supervised)")
            if results[system].get("branch_step") and trunk and trunk[0] and trunk[0][-1] == branch_step:
                steps, wers = [branch_step, *steps], [trunk[1][-1], *wers]
            curves[system] = (steps, wers)
    return curves


def plot_dev_wer(workdir: str, results: dict[str, dict], out: str) -> None:
    """Writes a PNG of dev WER (RNN-T greedy) against step for the trunk and every speech system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = dev_wer_curves(workdir, results)
    if not any(steps for steps, _ in curves.values()):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (steps, wers) in curves.items():
        ax.plot(steps, wers, marker="o", label=name, linestyle="--" if name.startswith(TRUNK) else "-")
    ax.set_xlabel("training step (trunk + branch)")
    ax.set_ylabel("dev WER % (RNN-T greedy)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Toy paper table: dev WER by step (bench/text_injection.py)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def format_table(results: dict[str, dict]) -> str:
    """Markdown: WER per test split, text-only-word recall and relative WER change vs paired-only; SONAR rows."""
    lines = [
        "| system | steps | decoder | train min | test_in_vocab WER % | test_text_only_vocab WER % "
        "| text-only words recalled % | text_only_vocab WER vs paired-only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baseline = results.get("supervised", {}).get("metrics", {}).get("test_text_only_vocab", {}).get("wer")
    for system in SPEECH_SYSTEMS:
        if system not in results:
            continue
        result = results[system]
        steps, seconds = steps_and_seconds(result, results)
        wer = {split: result["metrics"][split]["wer"] for split in SPLITS}
        change = f"{100 * (wer[SPLITS[1]] / baseline - 1):+.1f} %" if baseline and system != "supervised" else ""
        lines.append(
            f"| {system} | {steps} | {result.get('decoder', 'rnnt_greedy')} | {seconds / 60:.1f} | "
            f"{100 * wer[SPLITS[0]]:.2f} | "
            f"{100 * wer[SPLITS[1]]:.2f} | {100 * result['text_only_words']['recall']:.1f} | {change} |"
        )
    if "sonar_speech" in results:
        sonar = results["sonar_speech"]
        speech_steps, seconds = steps_and_seconds(sonar, results)
        minutes = (seconds + results.get("sonar_text", {}).get("train_seconds", 0.0)) / 60
        errors = " / ".join(
            f"{s} {100 * sonar['metrics'][s]['retrieval_error']:.1f} %"
            + (
                f" (cosine {100 * sonar['metrics'][s]['retrieval_error_cosine']:.1f} %)"
                if "retrieval_error_cosine" in sonar["metrics"][s]
                else ""
            )
            for s in SPLITS
        )
        steps = f"{results.get('sonar_text', {}).get('steps', '?')} / {speech_steps}"
        lines += [
            "",
            "| system | steps (text / speech) | train min | speech->text retrieval error (xsim, ratio margin) |",
            "|---|---|---|---|",
            f"| SONAR | {steps} | {minutes:.1f} | {errors} |",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/text_injection")
    parser.add_argument("--branch_step", type=int, default=2000, help="trunk steps every branch starts from (0: none)")
    parser.add_argument("--steps", type=int, default=2000, help="train steps of every speech stage after the trunk")
    parser.add_argument("--sonar_text_steps", type=int, default=2000, help="train steps of SONAR stage 1")
    # Stage 2 with its contrastive term: xsim 2.0% / 3.0% on the test splits after 6,000 steps, while the 4,000-step
    # checkpoint of that run (before its decay) leaves 7.0% / 12.5% (BENCHMARKS.md, "xsim with LASER's margin").
    parser.add_argument(
        "--sonar_speech_steps", type=int, default=6000, help="train steps of SONAR stage 2 (0: --steps)"
    )
    parser.add_argument(
        "--jobs", type=int, default=len(CHAINS), help="chains run at once (each pinned to its CPU share)"
    )
    parser.add_argument("--systems", default=",".join(CHAINS), help=f"comma-separated subset of {list(CHAINS)}")
    parser.add_argument("--decoder", default="rnnt_beam", choices=DECODERS, help="how test splits are transcribed")
    parser.add_argument("--beam_size", type=int, default=8, help="hypotheses kept by rnnt_beam")
    # Shallow fusion with the model's internal LM, tuned on dev (BENCHMARKS.md, "Internal-LM fusion"): "0" and "0"
    # give the plain beam search.
    parser.add_argument(
        "--fusion_weights", default="0,0.15,0.3,0.45", help="rnnt_beam: internal-LM fusion weights tried on dev"
    )
    parser.add_argument("--length_rewards", default="0,0.3,0.6,0.9", help="rnnt_beam: per-label rewards tried on dev")
    parser.add_argument("--gin_file", action="append", default=[], help="extra gin file for every stage")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(rest, parser)
    unknown = set(args.systems.split(",")) - set(CHAINS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {list(CHAINS)}")
    args.workdir = os.path.abspath(args.workdir)
    return args, bindings


def float_list(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, bindings = parse_args(argv)
    if args.stage:
        os.chdir(REPO)
        run_stage(
            args.stage,
            args.workdir,
            args.steps,
            args.branch_step,
            args.gin_file,
            bindings,
            decoder=args.decoder,
            beam_size=args.beam_size,
            fusion_weights=float_list(args.fusion_weights),
            length_rewards=float_list(args.length_rewards),
        )
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    passthrough = [f"--gin_file={f}" for f in args.gin_file] + [a for a in argv if a.startswith("--gin.")]
    start = time.perf_counter()
    if args.branch_step:  # the trunk first, on every core: each branch starts from its checkpoint
        run_chains([[TRUNK]], 1, args, passthrough)
    run_chains([CHAINS[system] for system in args.systems.split(",")], args.jobs, args, passthrough)
    results = load_results(args.workdir)
    table = format_table(results)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    plot_dev_wer(args.workdir, results, os.path.join(args.workdir, "dev_wer.png"))
    print(f"\n{table}\n\nwall time {(time.perf_counter() - start) / 60:.1f} min; results in {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
