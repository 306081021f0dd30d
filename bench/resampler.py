"""The corpus resampler (`synthetic.resample`) against scipy's `resample_poly` (what `audio_files.resample` calls).

    .venv/bin/python bench/resampler.py

22.05 kHz -> 16 kHz (espeak-ng's rate to the model's): a 9.5 kHz tone (above the new Nyquist: it must vanish), a
1 kHz tone's error against the analytic sine, the 7 kHz passband gain, and the time per 4 s of noise.
"""

import time

import numpy as np
from scipy import signal

from maestro_jax.data import audio_files, synthetic

RATE = 22050


def level_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x[2000:-2000] ** 2)) + 1e-20))


def tone(hz: float, seconds: float = 3.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(RATE * seconds)) / RATE).astype(np.float32)


def main() -> None:
    resamplers = {
        "synthetic.resample (Kaiser sinc, beta 8.6, 16 zero crossings)": lambda x: synthetic.resample(x, RATE, 16000),
        "scipy resample_poly, default window (audio_files.resample)": lambda x: audio_files.resample(x, RATE),
        "scipy resample_poly, Kaiser beta 8.6": lambda x: signal.resample_poly(x, 320, 441, window=("kaiser", 8.6)),
    }
    noise = np.random.default_rng(0).standard_normal(RATE * 4).astype(np.float32)
    for name, resample in resamplers.items():
        alias = level_db(resample(tone(9500)))
        out = resample(tone(1000))
        error = level_db(out - np.sin(2 * np.pi * 1000 * np.arange(len(out)) / 16000))
        passband = level_db(resample(tone(7000))) - level_db(tone(7000))
        start = time.perf_counter()
        for _ in range(5):
            resample(noise)
        ms = (time.perf_counter() - start) / 5 * 1000
        print(f"{name}: 9.5 kHz alias {alias:.1f} dB, 1 kHz error {error:.1f} dB, ", end="")
        print(f"7 kHz gain {passband:.2f} dB, {ms:.1f} ms per 4 s")


if __name__ == "__main__":
    main()
