"""Toy model, objective and resumable batcher for trainer tests (the real ones plug in the same way through gin).

A 2-layer MLP regression with logically partitioned params and a "frozen" collection; batches are a deterministic
function of (seed, global step), so any number of shards reassembles the same global batch.
"""

import json
import os
import subprocess
import sys
import time

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEATURES = 16
HIDDEN = 32


@gin.configurable
class ToyMLP(nn.Module):
    """x f32[B, F] -> prediction f32[B, F] through a frozen input projection and a 2-layer MLP."""

    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, batch, train: bool = False):
        x = batch["x"]
        projection = self.variable(
            "frozen", "projection", lambda: jax.random.normal(self.make_rng("params"), (x.shape[-1], x.shape[-1]))
        )
        x = x @ projection.value / np.sqrt(x.shape[-1])
        kernel_init = nn.initializers.lecun_normal()
        h = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "mlp")))(x)
        h = nn.with_logical_constraint(jnp.tanh(h), ("batch", "mlp"))
        y = nn.Dense(x.shape[-1], kernel_init=nn.with_logical_partitioning(kernel_init, ("mlp", "embed")))(h)
        return nn.with_logical_constraint(y, ("batch", "embed"))


@gin.configurable
def toy_objective(model, variables, batch, rng, step, *, noise: float = 0.01):
    """Mean squared error with a little rng-driven target noise (so a resumed run must restore the rng)."""
    prediction = model.apply(variables, batch, train=True)
    target = batch["y"] + noise * jax.random.normal(rng, batch["y"].shape)
    per_example = jnp.mean((prediction - target) ** 2, axis=-1)
    loss = jnp.mean(per_example)
    return loss, {"mse": loss, "step_seen": step.astype(jnp.float32)}


@gin.configurable
class ToyBatcher:
    """Shard `shard_index` of `num_shards` of a global batch of `global_batch_size` examples per step.

    nan_at_steps: global batch positions whose inputs are NaN (to exercise the non-finite guard).
    delay_s: sleep per batch (lets a test signal a subprocess mid-run).
    """

    def __init__(self, shard_index, num_shards, seed, *, global_batch_size=16, nan_at_steps=(), delay_s=0.0):
        if global_batch_size % num_shards:
            raise ValueError(f"global_batch_size {global_batch_size} not divisible by {num_shards} shards")
        self.shard_index, self.num_shards, self.seed = shard_index, num_shards, seed
        self.global_batch_size = global_batch_size
        self.nan_at_steps = set(nan_at_steps)
        self.delay_s = delay_s
        self.position = 0
        self.true_weights = np.random.default_rng(seed + 1000).normal(size=(FEATURES, FEATURES)) / np.sqrt(FEATURES)

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.position])
        x = rng.normal(size=(self.global_batch_size, FEATURES)).astype(np.float32)
        y = np.tanh(x @ self.true_weights).astype(np.float32)
        if self.position in self.nan_at_steps:
            x[:] = np.nan
        self.position += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        local = slice(self.shard_index * self.local_batch_size, (self.shard_index + 1) * self.local_batch_size)
        return {"x": x[local], "y": y[local]}

    @property
    def local_batch_size(self):
        return self.global_batch_size // self.num_shards

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])

    @staticmethod
    def combine_states(states):
        """Every process holds the global position, so a run resumes on any process count that divides the batch."""
        positions = {int(state["position"]) for state in states}
        if len(positions) != 1:
            raise ValueError(f"the processes saved different positions {sorted(positions)}")
        return {"position": positions.pop()}


@gin.configurable
class StreamFeatures:
    """ToyMLP batches {"x", "y"} from the speech stream of a real data entry point (`make_streams`, e.g.
    pipeline.synthetic_streams): x f32[B, F] = each utterance's length in seconds and its mean |waveform| (x10) over
    F - 1 equal segments, so that a different utterance gives a different step; y = tanh(x @ W) as in ToyBatcher.
    State, combine_states and close are the batcher's."""

    def __init__(self, shard_index, num_shards, seed, *, make_streams=gin.REQUIRED):
        self.streams = make_streams(shard_index, num_shards, seed)
        self.true_weights = np.random.default_rng(seed + 1000).normal(size=(FEATURES, FEATURES)) / np.sqrt(FEATURES)

    def __iter__(self):
        return self

    def __next__(self):
        speech = next(self.streams)["speech"]
        x = np.zeros([len(speech["waveform_length"]), FEATURES], np.float32)
        for row, (waveform, length) in enumerate(zip(speech["waveform"], speech["waveform_length"])):
            segments = np.array_split(np.abs(waveform[:length]), FEATURES - 1)
            x[row] = [length / 16000, *(10 * segment.mean() for segment in segments)]
        return {"x": x, "y": np.tanh(x @ self.true_weights).astype(np.float32)}

    def get_state(self):
        return self.streams.get_state()

    def set_state(self, state):
        self.streams.set_state(state)

    def combine_states(self, states):
        return self.streams.combine_states(states)

    def close(self):
        self.streams.close()


def write_gin(path, model_dir, *, train_steps, extra=""):
    """A gin file that trains the toy setup (used by subprocess tests through maestro-train)."""
    text = f"""
import trainer_toy
train.model = @ToyMLP()
train.objective = @toy_objective
train.make_data = @ToyBatcher
train.model_dir = '{model_dir}'
train.train_steps = {train_steps}
train.log_every_steps = 1
train.progress_bar = False
train.tensorboard = False
make_learning_rate_schedule.peak_learning_rate = 0.01
make_learning_rate_schedule.warmup_steps = 2
{extra}
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def cli_env(num_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), REPO_ROOT])
    return env


def start_cli(gin_file, *, num_devices=1, bindings=()):
    """Starts `python -m maestro_jax.cli.train` in a subprocess (stdout+stderr to a log next to the gin file)."""
    log = open(gin_file + ".log", "ab")
    args = [sys.executable, "-m", "maestro_jax.cli.train", f"--gin_file={gin_file}", *bindings]
    return subprocess.Popen(args, cwd=REPO_ROOT, env=cli_env(num_devices), stdout=log, stderr=subprocess.STDOUT)


def read_log(gin_file):
    with open(gin_file + ".log") as f:
        return f.read()


def last_logged_step(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[-1]["step"] if rows else 0
