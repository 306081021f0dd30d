"""Write tests/fixtures/torchaudio_logmel.npz: a fixed 1 s signal and torchaudio's log-mel of it.

Needs torch + torchaudio (not in the JAX venv), e.g.

  .venv-torch/bin/python bench/make_torchaudio_logmel_fixture.py

The signal (`fixture_signal`, f32[16000]) holds a harmonic 150 Hz tone under a 3 Hz envelope, exact silence (the
log offset alone) and white noise with a 3 kHz tone, so the features span a wide log range. Keys: "signal" f32[N],
"log_mel" f32[T, 80] (T = 98 whole 25 ms frames at a 10 ms hop). tests/test_frontend.py compares the frontend
against the stored arrays, and imports `torchaudio_log_mel` from here for its live comparison.
"""

import argparse
import os

import numpy as np

SAMPLE_RATE = 16000
LOG_OFFSET = 1e-6
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "torchaudio_logmel.npz")


def fixture_signal(seed: int = 0) -> np.ndarray:
    """f32[16000]: 0-0.4 s harmonic tone, 0.4-0.6 s silence, 0.6-1.0 s white noise plus a 3 kHz tone."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    voiced = sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 16))
    voiced *= 0.25 * (1 - np.cos(2 * np.pi * 3 * t))
    noisy = 0.05 * np.random.default_rng(seed).standard_normal(len(t)) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    signal = np.where(t < 0.4, voiced, 0.0) + np.where(t >= 0.6, noisy, 0.0)
    return signal.astype(np.float32)


def torchaudio_log_mel(signal: np.ndarray) -> np.ndarray:
    """log(torchaudio MelSpectrogram power + 1e-6) of one unpadded signal [N] -> f32[T, 80], in float64 inside.

    The frontend's definition: 400-sample periodic Hann window, hop 160, 512-point FFT, 80 HTK mel bins over
    0-8000 Hz without normalisation, whole frames only.
    """
    import torch
    import torchaudio

    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=512,
        win_length=400,
        hop_length=160,
        center=False,
        f_min=0.0,
        f_max=8000.0,
        n_mels=80,
        power=2.0,
        norm=None,
        mel_scale="htk",
    ).double()
    # torch.stft puts the 400-sample window 56 samples into each 512-sample frame; 56 zeros each side realign it.
    padded = np.pad(np.asarray(signal, np.float64), (56, 56))
    with torch.no_grad():
        power = transform(torch.from_numpy(padded)).numpy().T
    return np.log(power + LOG_OFFSET).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="npz path to write")
    args = parser.parse_args()
    signal = fixture_signal()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, signal=signal, log_mel=torchaudio_log_mel(signal))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
