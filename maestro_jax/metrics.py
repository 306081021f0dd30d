"""Training metrics: TensorBoard (tf.summary), metrics.jsonl, tqdm progress bar, loss PNG, and MFU.

Only process 0 writes; other processes get a writer whose methods do nothing. The model directory may be a URL
(gs://...: `paths`); TensorBoard reaches it through TensorFlow's own filesystems.
"""

import io
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import paths

# An object store cannot append: a remote metrics.jsonl is rewritten whole, at most this often (and on close).
REMOTE_JSONL_REWRITE_SECONDS = 60.0

# Dense bf16 peak FLOP/s per chip (vendor data sheets). Keys are substrings of `jax.Device.device_kind`, most
# specific first.
PEAK_FLOPS_BY_DEVICE_KIND: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # v6e
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def log_to_stderr() -> None:
    """Timestamped INFO logs of the maestro_jax package on stderr (step metrics, checkpoints, skipped examples)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("maestro_jax")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


def call_seconds(fn, *args, repeats: int) -> tuple[list[float], object]:
    """(wall seconds of each of `repeats` calls fn(*args), the warm-up call's output): one untimed call first, so a
    jitted fn's compile is not timed; every call waits for its result (jax.block_until_ready)."""
    out = jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - start)
    return seconds, out


def median_call_seconds(fn, *args, repeats: int) -> float:
    """Median wall seconds of one call of fn(*args) over `repeats` (call_seconds)."""
    return float(np.median(call_seconds(fn, *args, repeats=repeats)[0]))


def measure_cpu_matmul_peak(size: int = 512, repeats: int = 5) -> float:
    """FLOP/s of a jitted f32 [size, size] matmul on this CPU device (best of `repeats`)."""
    seconds, _ = call_seconds(jax.jit(lambda a: a @ a), jnp.ones((size, size), jnp.float32), repeats=repeats)
    return 2.0 * size**3 / min(seconds)


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): a table lookup by device_kind, or a matmul probe on CPU."""
    device = jax.devices()[0] if device is None else device
    for kind, flops in PEAK_FLOPS_BY_DEVICE_KIND:
        if kind.lower() in device.device_kind.lower():
            return flops, f"table[{kind}]"
    if device.platform == "cpu":
        return measure_cpu_matmul_peak(), "cpu matmul probe"
    raise ValueError(
        f"no peak FLOP/s known for device kind {device.device_kind!r}; add it to "
        "maestro_jax.metrics.PEAK_FLOPS_BY_DEVICE_KIND."
    )


def model_flops_utilization(flops_per_step_per_device: float, steps_per_second: float, peak_flops: float) -> float:
    """Achieved per-device FLOP/s over the device's peak."""
    return flops_per_step_per_device * steps_per_second / peak_flops


class MetricsWriter:
    """Writes scalars to TensorBoard event files and `metrics.jsonl` in `model_dir` (process 0 only).

    A local metrics.jsonl is appended to and flushed at every write. A remote one (`paths.is_url`) is kept in memory,
    rows already there included, and rewritten every REMOTE_JSONL_REWRITE_SECONDS and on close.
    """

    def __init__(self, model_dir: str, *, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.model_dir = paths.resolve(model_dir)
        self.jsonl_path = os.path.join(self.model_dir, "metrics.jsonl")
        self._summary_writer = None
        if not self.enabled:
            return
        paths.makedirs(self.model_dir)
        if paths.is_url(self.jsonl_path):
            self._jsonl = None
            remote = paths.as_path(self.jsonl_path)
            self._remote_text = remote.read_text() if remote.exists() else ""
            self._remote_written = time.monotonic()
        else:
            self._jsonl = open(self.jsonl_path, "a")
        if tensorboard:
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take accelerator memory from JAX
            self._tf = tf
            self._summary_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard"))

    @staticmethod
    def _metadata(plugin_name: str):
        # What tf.summary.scalar/text would attach, without needing the tensorboard package at write time.
        from tensorflow.core.framework import summary_pb2

        return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name))

    def write(self, step: int, scalars: dict):
        """Logs `scalars` (name -> number) at `step`."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        row = json.dumps({"step": int(step), **scalars}) + "\n"
        if self._jsonl is None:
            self._remote_text += row
            if time.monotonic() - self._remote_written >= REMOTE_JSONL_REWRITE_SECONDS:
                self._rewrite_remote_jsonl()
        else:
            self._jsonl.write(row)
            self._jsonl.flush()
        if self._summary_writer is not None:
            with self._summary_writer.as_default():
                for name, value in scalars.items():
                    self._tf.summary.write(name, value, step=int(step), metadata=self._metadata("scalars"))
            self._summary_writer.flush()

    def write_text(self, name: str, text: str, step: int = 0):
        """Logs text (e.g. the operative config) to TensorBoard."""
        if self.enabled and self._summary_writer is not None:
            with self._summary_writer.as_default():
                self._tf.summary.write(name, text, step=step, metadata=self._metadata("text"))
            self._summary_writer.flush()

    def _rewrite_remote_jsonl(self):
        paths.as_path(self.jsonl_path).write_text(self._remote_text)
        self._remote_written = time.monotonic()

    def close(self):
        if self.enabled:
            if self._jsonl is None:
                self._rewrite_remote_jsonl()
            else:
                self._jsonl.close()
            if self._summary_writer is not None:
                self._summary_writer.close()


def read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in paths.as_path(path).read_text().splitlines() if line.strip()]


def curve_names(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(loss terms, eval error rates) present in metrics rows: "loss" and every "*_loss" metric; every "eval/" metric
    whose name holds "wer" or "cer"."""
    keys = {k for row in rows for k in row}
    losses = sorted(k for k in keys if (k == "loss" or k.endswith("_loss")) and not k.startswith("eval/"))
    rates = sorted(k for k in keys if k.startswith("eval/") and ("wer" in k or "cer" in k))
    return losses, rates


def plot_loss_curves(jsonl_path: str, png_path: str) -> None:
    """Two panels against step: every loss term (log scale when all are positive) and the periodic eval WER/CER (%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl_path)
    losses, rates = curve_names(rows)
    fig, (loss_ax, rate_ax) = plt.subplots(1, 2, figsize=(12, 4.5))

    def draw(ax, names, scale=1.0):
        drawn = []
        for name in names:
            points = [(row["step"], scale * row[name]) for row in rows if name in row and np.isfinite(row[name])]
            if points:
                points = np.asarray(points)
                ax.plot(points[:, 0], points[:, 1], marker="." if len(points) < 30 else None, label=name)
                drawn.append(points[:, 1])
        if drawn:
            ax.legend(fontsize="small")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        return drawn

    drawn = draw(loss_ax, losses)
    loss_ax.set_title("training loss terms")
    if drawn and all(np.all(values > 0) for values in drawn):
        loss_ax.set_yscale("log")
    draw(rate_ax, rates, scale=100.0)
    rate_ax.set_title("evaluation error rate (%)" if rates else "no evaluation logged (train.eval_fn)")
    fig.tight_layout()
    png = io.BytesIO()  # matplotlib writes local files only; the bytes go through `paths` (png_path may be gs://)
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    paths.as_path(png_path).write_bytes(png.getvalue())


class ProgressBar:
    """tqdm bar over training steps showing loss and steps/s (tqdm adds the ETA); silent off process 0."""

    def __init__(self, *, initial: int, total: int, enabled: bool = True):
        self._bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(initial=initial, total=total, unit="step", dynamic_ncols=True)

    def update(self, steps: int, **postfix):
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self):
        if self._bar is not None:
            self._bar.close()
