"""loss_curves.png: which metrics become curves, and that both panels are drawn from a metrics.jsonl; the timing
helper the benchmarks share."""

import json

import matplotlib.image

from maestro_jax import metrics


def test_curves_are_every_loss_term_and_eval_error_rates(tmp_path):
    rows = [
        {"step": 50, "loss": 3.0, "rnnt_loss": 2.5, "ctc_loss": 5.0, "grad_norm": 9.0, "learning_rate": 1e-3},
        {"step": 100, "loss": 2.0, "rnnt_loss": 1.5, "ctc_loss": 4.0, "grad_norm": 7.0, "learning_rate": 1e-3},
        {"step": 100, "eval/dev/wer": 0.9, "eval/dev/cer": 0.5, "eval/retrieval_count": 3.0},
    ]
    assert metrics.curve_names(rows) == (["ctc_loss", "loss", "rnnt_loss"], ["eval/dev/cer", "eval/dev/wer"])
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    png = tmp_path / "curves.png"
    metrics.plot_loss_curves(str(path), str(png))
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 2 * height  # two panels side by side


def test_call_seconds_times_every_call_but_the_warm_up():
    calls = []

    def fn(x):
        calls.append(x)
        return x + 1

    seconds, out = metrics.call_seconds(fn, 2, repeats=3)
    assert out == 3 and calls == [2, 2, 2, 2]  # one warm-up, three timed
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    calls.clear()
    assert metrics.median_call_seconds(fn, 5, repeats=4) >= 0 and calls == [5] * 5
