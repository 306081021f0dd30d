"""Log-mel (and SpecAugment) throughput in seconds of audio per second on the default JAX device.

Usage: python bench/frontend.py [--batch 8] [--seconds 15] [--repeats 20]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import frontend, metrics
from maestro_jax.audio_constants import SAMPLE_RATE_HZ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="examples per call")
    parser.add_argument("--seconds", type=float, default=15.0, help="audio per example (seconds)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls after the warm-up call")
    args = parser.parse_args()

    num_samples = int(args.seconds * SAMPLE_RATE_HZ)
    rng = np.random.default_rng(0)
    waveform = jnp.asarray(rng.uniform(-0.5, 0.5, (args.batch, num_samples)).astype(np.float32))
    waveform_length = jnp.full((args.batch,), num_samples, jnp.int32)
    audio_seconds = args.batch * args.seconds

    log_mel = jax.jit(frontend.log_mel_spectrogram)
    augmented = jax.jit(
        lambda key, x, n: frontend.spec_augment(key, *frontend.log_mel_spectrogram(x, n)[:2]),
    )
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), B={args.batch}, {args.seconds:g} s each")
    seconds = metrics.median_call_seconds(log_mel, waveform, waveform_length, repeats=args.repeats)
    print(f"log-mel:               {seconds * 1e3:8.2f} ms/call  {audio_seconds / seconds:12.0f} s audio/s")
    key = jax.random.key(0)
    seconds = metrics.median_call_seconds(augmented, key, waveform, waveform_length, repeats=args.repeats)
    print(f"log-mel + SpecAugment: {seconds * 1e3:8.2f} ms/call  {audio_seconds / seconds:12.0f} s audio/s")


if __name__ == "__main__":
    main()
