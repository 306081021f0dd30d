"""bench/text_injection.py: the text-only-word recall, logged training time and table against hand counts, and one
end-to-end run of the paired-only and SONAR chains on the tiny model and corpus (two processes pinned to their own
cores) whose results are rescored from the stages' run directories, then a rerun that resumes from the finished
stages."""

import importlib.util
import json
import math
import os

import gin
import pytest

from maestro_jax import evaluation, metrics
from maestro_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("text_injection", os.path.join(REPO, "bench", "text_injection.py"))
text_injection = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(text_injection)


def test_text_only_word_recall_counts_each_occurrence_once():
    rows = [
        {"reference": "the zebra saw a zebra", "hypothesis": "the zebra saw a cat"},  # 1 of 2 zebras
        {"reference": "paris and oslo", "hypothesis": "oslo and paris and oslo"},  # both, extra oslo not counted
        {"reference": "a cat", "hypothesis": ""},  # no text-only word: not in the denominator
    ]
    got = text_injection.text_only_word_recall(rows, {"zebra", "paris", "oslo"})
    assert got == {"recall": 3 / 4, "num_words": 4.0}
    assert math.isnan(text_injection.text_only_word_recall(rows[2:], {"zebra"})["recall"])


def test_table_reports_relative_change_against_paired_only():
    def speech(in_vocab, text_only, recall):
        return {
            "steps": 10,
            "train_seconds": 60.0,
            "metrics": {"test_in_vocab": {"wer": in_vocab}, "test_text_only_vocab": {"wer": text_only}},
            "text_only_words": {"recall": recall},
            "decoder": "rnnt_beam 8",
        }

    results = {
        "supervised": speech(0.2, 0.4, 0.1),
        "maestro": speech(0.2, 0.3, 0.5),
        "sonar_text": {"steps": 5, "train_seconds": 30.0},
        "sonar_speech": {
            "steps": 10,
            "train_seconds": 90.0,
            "metrics": {"test_in_vocab": {"retrieval_error": 0.02}, "test_text_only_vocab": {"retrieval_error": 0.1}},
        },
    }
    table = text_injection.format_table(results)
    assert "| maestro | 10 | rnnt_beam 8 | 1.0 | 20.00 | 30.00 | 50.0 | -25.0 % |" in table
    assert "| supervised | 10 | rnnt_beam 8 | 1.0 | 20.00 | 40.00 | 10.0 |  |" in table
    assert "| SONAR | 5 / 10 | 2.0 | test_in_vocab 2.0 % / test_text_only_vocab 10.0 % |" in table


def test_branches_count_the_trunk_in_steps_time_and_dev_wer_curve(tmp_path):
    def write(stage, rows):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    write("trunk", [{"step": 5, "eval/dev/wer": 0.9}, {"step": 10, "eval/dev/wer": 0.5}, {"step": 10, "loss": 1.0}])
    write(
        "maestro",
        [{"step": 5, "eval/dev/wer": 0.4}, {"step": 10, "eval/dev/wer": 0.3}, {"step": 15, "eval/dev/wer": 0.2}],
    )
    results = {
        "trunk": {"steps": 10, "train_seconds": 120.0},
        "maestro": {
            "steps": 10,
            "branch_step": 10,
            "train_seconds": 60.0,
            "metrics": {"test_in_vocab": {"wer": 0.1}, "test_text_only_vocab": {"wer": 0.2}},
            "text_only_words": {"recall": 0.5},
        },
    }
    assert "| maestro | 10 + 10 | rnnt_greedy | 3.0 | 10.00 | 20.00 | 50.0 |  |" in text_injection.format_table(results)
    curves = text_injection.dev_wer_curves(str(tmp_path), results)
    # The branch's curve starts at the trunk's last point and stops at the step it is scored at.
    assert curves == {
        "trunk (supervised)": ([5, 10], [90.0, 50.0]),
        "maestro": ([10, 15, 20], [50.0, 40.0, 30.0]),
    }
    text_injection.plot_dev_wer(str(tmp_path), results, str(tmp_path / "dev_wer.png"))
    assert (tmp_path / "dev_wer.png").stat().st_size > 1000


def test_logged_train_seconds_sums_logged_intervals_up_to_the_step(tmp_path):
    rows = [
        {"step": 2, "steps_per_second": 4.0},  # steps 1-2: 0.5 s
        {"step": 3, "eval/wer": 0.5},  # an eval row has no rate
        {"step": 5, "steps_per_second": 1.5},  # steps 3-5: 2 s
        {"step": 6, "steps_per_second": 0.5},  # after the step asked for
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert text_injection.logged_train_seconds(str(tmp_path), 5) == pytest.approx(2.5)


def test_core_sets_are_disjoint_when_there_are_enough_cores():
    sets = text_injection.core_sets(2)
    if len(os.sched_getaffinity(0)) >= 2:
        assert not sets[0] & sets[1] and sets[0] and sets[1]
    else:
        assert sets[0] == sets[1]


def test_end_to_end_on_the_tiny_corpus_then_resume(tmp_path, capsys):
    corpus_dir = synthetic.cached_corpus("tiny")
    argv = [
        "--workdir",
        str(tmp_path),
        "--branch_step",
        "2",
        "--steps",
        "2",
        "--sonar_text_steps",
        "2",
        "--sonar_speech_steps",
        "3",
        "--systems",
        "supervised,sonar",
        "--beam_size",
        "2",
        "--fusion_weights",
        "0,0.5",
        "--length_rewards",
        "0",
        "--gin_file=gin/models/tiny.gin",
        "--gin_file=gin/models/sonar_text_tiny.gin",
        "--gin.CORPUS_SIZE='tiny'",
        f"--gin.CORPUS_DIR='{corpus_dir}'",
        "--gin.CHECKPOINT_EVERY_STEPS=2",
        "--gin.train.eval_fn=None",  # the periodic dev-WER hook is tested in test_evaluation.py
        "--gin.WARMUP_STEPS=1",  # toy_table.gin's cosine decay needs total steps (2) > warm-up steps
    ]
    assert text_injection.main(argv) == 0, [
        open(tmp_path / f).read()[-3000:] for f in os.listdir(tmp_path) if ".log" in f
    ]
    results = text_injection.load_results(str(tmp_path))
    assert set(results) == {"trunk", "supervised", "sonar_text", "sonar_speech"}
    # Both branches started from the trunk's step-2 params (SONAR's from its towers only, after its teacher).
    for stage in ("supervised", "sonar_speech"):
        assert results[stage]["branch_step"] == 2
        log = (tmp_path / f"{stage}.log").read_text()
        assert f"warm start from {tmp_path / 'trunk' / 'checkpoints'} step 2" in log, log[-2000:]
    assert results["supervised"]["steps"] == 2 and results["sonar_speech"]["steps"] == 3
    assert "branch_step" not in results["sonar_text"]
    # The fusion weight was chosen on dev from the grid, and the test splits scored with it.
    fusion = results["supervised"]["fusion"]
    assert [p["ilm_fusion_weight"] for p in fusion["grid"]] == [0.0, 0.5] and fusion["length_reward"] == 0.0
    assert fusion["wer"] == min(p["wer"] for p in fusion["grid"])
    chosen = fusion["ilm_fusion_weight"]
    expected_decoder = "rnnt_beam 2" + (f", ILM fusion {chosen:g} + 0/label" if chosen else "")
    assert results["supervised"]["decoder"] == expected_decoder
    assert ("plain_beam_metrics" in results["supervised"]) == bool(chosen)
    # The results are those of the stage's own run directory: its metrics.jsonl, hypotheses and checkpoint.
    supervised = results["supervised"]
    model_dir = str(tmp_path / "supervised")
    assert supervised["train_seconds"] == text_injection.logged_train_seconds(model_dir, 2) > 0
    rows = metrics.read_jsonl(os.path.join(model_dir, "hypotheses.jsonl"))
    for split in text_injection.SPLITS:
        split_rows = [row for row in rows if row["source"] == split]
        scored = supervised["metrics"][split]
        rescored = evaluation.error_rates([r["reference"] for r in split_rows], [r["hypothesis"] for r in split_rows])
        assert len(split_rows) == scored["num_utterances"] == 16
        assert (scored["wer"], scored["cer"]) == (rescored["wer"], rescored["cer"])
    text_only_rows = [
        {k: evaluation.normalize_transcript(row[k]) for k in ("reference", "hypothesis")}
        for row in rows
        if row["source"] == "test_text_only_vocab"
    ]
    vocabulary = json.loads((corpus_dir / "vocab.json").read_text())
    recall = text_injection.text_only_word_recall(text_only_rows, set(vocabulary["B"]))
    assert recall["num_words"] > 0 and supervised["text_only_words"] == recall
    try:
        rescored = evaluation.retrieval_errors(
            model_dir=str(tmp_path / "sonar_speech"), splits=["test_in_vocab"], checkpoint_step=3, progress=False
        )
    finally:
        with gin.unlock_config():
            gin.clear_config()
    assert results["sonar_speech"]["metrics"]["test_in_vocab"] == rescored["test_in_vocab"]
    assert (tmp_path / "table.md").read_text() == text_injection.format_table(results) + "\n"
    capsys.readouterr()
    assert text_injection.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("done before; skipped") == 4
    with pytest.raises(SystemExit):
        text_injection.parse_args(["--systems", "supervised,nope"])


def test_a_stage_stopped_short_is_not_scored(tmp_path, monkeypatch):
    """train() also returns after a SIGTERM save; the stage must then fail, not write a result for its steps."""
    from maestro_jax import train

    monkeypatch.setattr(train, "train", lambda: None)  # as if preempted before the first checkpoint
    try:
        with pytest.raises(SystemExit, match=r"\[supervised\] stopped at step 0 of 5 \(preempted\?\)"):
            text_injection.run_stage("supervised", str(tmp_path), 5, 0, ["gin/models/tiny.gin"], [])
    finally:
        with gin.unlock_config():
            gin.clear_config()
    assert not (tmp_path / "supervised" / "result.json").exists()
