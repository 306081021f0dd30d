"""Frontend tests: log-mel against an independent NumPy float64 reference, padding invariance, SpecAugment,
normalisation and frame stacking."""

import functools
import importlib.util
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from maestro_jax import frontend

SAMPLE_RATE = 16000
ROOT = pathlib.Path(__file__).resolve().parents[1]
LOGMEL_FIXTURE = ROOT / "tests" / "fixtures" / "torchaudio_logmel.npz"
# Regenerate with: .venv-torch/bin/python bench/make_torchaudio_logmel_fixture.py
LOGMEL_FIXTURE_SCRIPT = ROOT / "bench" / "make_torchaudio_logmel_fixture.py"


def _chirp_with_harmonics(seconds: float) -> np.ndarray:
    """Deterministic speech-like stand-in: a gliding 100-250 Hz fundamental with 20 decaying harmonics, AM at 4 Hz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * (100 * t + 75 * t**2 / seconds)
    voiced = sum(np.sin(h * phase) / h for h in range(1, 21))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.2 * envelope * voiced).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """About 2 s of 16 kHz speech from espeak-ng (resampled with sox), or the chirp stand-in when they are missing."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        return _chirp_with_harmonics(2.0)
    folder = tmp_path_factory.mktemp("espeak")
    raw, resampled = folder / "raw.wav", folder / "speech16k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "the quick brown fox jumps over the lazy dog"], check=True)
    subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), str(resampled)], check=True)
    audio, rate = soundfile.read(resampled, dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1
    assert np.abs(audio).max() > 0.05, "espeak-ng produced (near) silence"
    return audio


# ---------------------------------------------------------------- independent NumPy reference (float64)


def _reference_filterbank(num_fft_bins=257, num_mel=80, sample_rate=16000, low=0.0, high=8000.0) -> np.ndarray:
    """Triangles by linear interpolation through (left, 0), (centre, 1), (right, 0) on the HTK mel grid."""
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    mel_step = (to_mel(high) - to_mel(low)) / (num_mel + 1)
    edges = [to_hz(to_mel(low) + i * mel_step) for i in range(num_mel + 2)]
    bins = np.arange(num_fft_bins) * (sample_rate / 2) / (num_fft_bins - 1)
    bank = np.zeros((num_fft_bins, num_mel))
    for m in range(num_mel):
        bank[:, m] = np.interp(bins, edges[m : m + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
    return bank


def _reference_log_mel(signal: np.ndarray) -> np.ndarray:
    """float64 log-mel of one unpadded signal [L] -> [T, 80], frame by frame."""
    window = np.hanning(401)[:400]  # periodic Hann = symmetric Hann of length + 1 without its last point
    bank = _reference_filterbank()
    frames = []
    start = 0
    while start + 400 <= len(signal):
        padded = np.zeros(512)
        padded[56:456] = signal[start : start + 400].astype(np.float64) * window  # centred, as torch.stft does
        power = np.abs(np.fft.rfft(padded)) ** 2
        frames.append(np.log(power @ bank + 1e-6))
        start += 160
    return np.asarray(frames).reshape(-1, 80)


@jax.jit
def _jit_log_mel(waveform, waveform_length):
    return frontend.log_mel_spectrogram(waveform, waveform_length)


def _pad_batch(signals, num_samples, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stack signals into f32[B, num_samples] with random garbage (not zeros) beyond each valid length."""
    waveform = rng.uniform(-1, 1, (len(signals), num_samples)).astype(np.float32)
    for row, signal in enumerate(signals):
        waveform[row, : len(signal)] = signal
    return waveform, np.asarray([len(s) for s in signals], np.int32)


# ---------------------------------------------------------------- log-mel


def test_num_frames_counts_whole_frames():
    for length in range(0, 1300, 7):
        brute = sum(1 for start in range(0, length, 160) if start + 400 <= length)
        assert frontend.num_frames(length) == brute, length
    lengths = jnp.asarray([0, 399, 400, 559, 560, 16000], jnp.int32)
    np.testing.assert_array_equal(frontend.num_frames(lengths), [0, 0, 1, 1, 2, 98])


def test_filterbank_matches_reference():
    np.testing.assert_allclose(frontend.htk_mel_filterbank(), _reference_filterbank(), atol=1e-6)
    np.testing.assert_allclose(
        frontend.htk_mel_filterbank(num_mel_bins=40, lower_hz=125.0, upper_hz=7600.0),
        _reference_filterbank(num_mel=40, low=125.0, high=7600.0),
        atol=1e-6,
    )


def test_window_is_periodic_hann():
    np.testing.assert_allclose(frontend.periodic_hann_window(400), np.hanning(401)[:400], atol=1e-7)


def test_log_mel_matches_numpy_reference(speech):
    short = speech[: len(speech) // 2 + 77]
    waveform, lengths = _pad_batch([speech, short], len(speech) + 1000, np.random.default_rng(0))
    features, feature_length = _jit_log_mel(jnp.asarray(waveform), jnp.asarray(lengths))
    features = np.asarray(features)

    assert features.shape == (2, frontend.num_frames(waveform.shape[1]), 80)
    assert features.dtype == np.float32
    for row, signal in enumerate([speech, short]):
        reference = _reference_log_mel(signal)
        assert feature_length[row] == len(reference)
        valid = features[row, : len(reference)]
        assert np.abs(valid - reference).max() <= 1e-3
        assert np.all(features[row, len(reference) :] == 0.0)
    # A real signal spans a wide log range, so the comparison is not trivially between near-constant values.
    assert np.ptp(features[0, : feature_length[0]]) > 10.0


def test_padding_never_changes_valid_frames(speech):
    signals = [speech[:12345], speech[:5000], speech[:399]]
    rng = np.random.default_rng(1)
    outputs = []
    for num_samples in (12345, 12345 + 160 * 7 + 33):
        waveform, lengths = _pad_batch(signals, num_samples, rng)
        outputs.append(jax.tree.map(np.asarray, _jit_log_mel(jnp.asarray(waveform), jnp.asarray(lengths))))
    (short_features, short_length), (long_features, long_length) = outputs
    np.testing.assert_array_equal(short_length, long_length)
    np.testing.assert_array_equal(short_length, [frontend.num_frames(len(s)) for s in signals])
    assert short_length[2] == 0
    for row, length in enumerate(short_length):
        np.testing.assert_allclose(short_features[row, :length], long_features[row, :length], atol=1e-5)
        assert np.all(long_features[row, length:] == 0.0)


def test_short_waveform_gives_no_frames():
    features, feature_length = frontend.log_mel_spectrogram(jnp.ones((2, 300)), jnp.asarray([300, 10]))
    assert features.shape == (2, 0, 80)
    np.testing.assert_array_equal(feature_length, [0, 0])


def _torchaudio_fixture_generator():
    spec = importlib.util.spec_from_file_location("make_torchaudio_logmel_fixture", LOGMEL_FIXTURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matches_stored_torchaudio_fixture():
    with np.load(LOGMEL_FIXTURE) as npz:
        signal, expected = npz["signal"], npz["log_mel"]
    features, feature_length = _jit_log_mel(jnp.asarray(signal)[None], jnp.asarray([len(signal)], jnp.int32))
    assert features.shape[1:] == expected.shape == (98, 80) and int(feature_length[0]) == 98
    assert np.abs(np.asarray(features[0]) - expected).max() <= 1e-3
    # The fixture spans silence (the log offset alone) to loud tones, so the comparison covers the whole range.
    assert expected.min() == pytest.approx(np.log(1e-6)) and np.ptp(expected) > 20.0


def test_matches_torchaudio(speech):
    pytest.importorskip("torch")
    pytest.importorskip("torchaudio")
    expected = _torchaudio_fixture_generator().torchaudio_log_mel(speech)
    features, _ = _jit_log_mel(jnp.asarray(speech)[None], jnp.asarray([len(speech)], jnp.int32))
    assert expected.shape == features.shape[1:]
    assert np.abs(np.asarray(features[0]) - expected).max() <= 1e-3


# ---------------------------------------------------------------- SpecAugment


@pytest.fixture(scope="module")
def feature_batch():
    """f32[4, 60, 80] strictly positive features (so a 0 mask is visible) and lengths incl. an empty example."""
    rng = np.random.default_rng(2)
    features = rng.uniform(1.0, 2.0, (4, 60, 80)).astype(np.float32)
    lengths = np.asarray([60, 41, 17, 0], np.int32)
    features[frontend.frame_mask(jnp.asarray(lengths), 60) == 0] = -7.0  # a recognisable pad value
    return jnp.asarray(features), jnp.asarray(lengths)


@functools.partial(jax.jit, static_argnames=("num_freq_masks", "num_time_masks", "max_time_ratio"))
def _jit_augment(rng, features, lengths, num_freq_masks=2, num_time_masks=10, max_time_ratio=0.05):
    return frontend.spec_augment(
        rng,
        features,
        lengths,
        num_freq_masks=num_freq_masks,
        num_time_masks=num_time_masks,
        max_time_ratio=max_time_ratio,
    )


def test_spec_augment_is_deterministic_per_key(feature_batch):
    features, lengths = feature_batch
    first = _jit_augment(jax.random.key(0), features, lengths)
    again = _jit_augment(jax.random.key(0), features, lengths)
    other = _jit_augment(jax.random.key(1), features, lengths)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_spec_augment_masks_only_valid_frames(feature_batch):
    features, lengths = feature_batch
    valid = np.asarray(frontend.frame_mask(lengths, 60))
    for seed in range(5):
        out = np.asarray(_jit_augment(jax.random.key(seed), features, lengths, max_time_ratio=0.2))
        np.testing.assert_array_equal(out[~valid], np.asarray(features)[~valid])
        changed = out != np.asarray(features)
        assert np.all(out[changed] == 0.0)
        assert changed.any()


def test_time_masks_respect_adaptive_width(feature_batch):
    features, lengths = feature_batch
    full_length_fraction = []
    for seed in range(20):
        out = np.asarray(_jit_augment(jax.random.key(seed), features, lengths, num_freq_masks=0))
        masked_frames = np.all(out == 0.0, axis=-1)
        # Time masks cover whole frames: every frame is masked in all channels or in none.
        np.testing.assert_array_equal(masked_frames, np.any(out == 0.0, axis=-1))
        for row, length in enumerate(np.asarray(lengths)):
            assert masked_frames[row].sum() <= 10 * int(np.floor(0.05 * length))
        full_length_fraction.append(masked_frames[0].mean())
    # 10 masks of width U{0..3} in 60 frames cover about 1 - (1 - 1.5 / 60) ** 10 = 22% of the frames on average.
    assert 0.15 <= np.mean(full_length_fraction) <= 0.3


def test_freq_masks_are_shared_by_all_valid_frames(feature_batch):
    features, lengths = feature_batch
    channel_fraction = []
    for seed in range(20):
        out = np.asarray(_jit_augment(jax.random.key(seed), features, lengths, num_time_masks=0))
        for row, length in enumerate(np.asarray(lengths)[:3]):
            masked_channels = out[row, :length] == 0.0
            np.testing.assert_array_equal(masked_channels, np.broadcast_to(masked_channels[0], masked_channels.shape))
            assert masked_channels[0].sum() <= 2 * 27
            channel_fraction.append(masked_channels[0].mean())
    # Two masks of width U{0..27} in 80 channels cover about 1 - (1 - 13.5 / 80) ** 2 = 31% of the channels.
    assert 0.22 <= np.mean(channel_fraction) <= 0.4


def test_spec_augment_with_no_masks_is_identity(feature_batch):
    features, lengths = feature_batch
    out = _jit_augment(jax.random.key(4), features, lengths, num_freq_masks=0, num_time_masks=0)
    np.testing.assert_array_equal(out, features)


# ---------------------------------------------------------------- normalisation and stacking


def test_normalize_features_matches_numpy(feature_batch):
    features, lengths = feature_batch
    out = np.asarray(jax.jit(frontend.normalize_features)(features, lengths))
    for row, length in enumerate(np.asarray(lengths)):
        valid = np.asarray(features[row, :length], np.float64)
        if length:
            expected = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + 1e-5)
            np.testing.assert_allclose(out[row, :length], expected, atol=1e-4)
        assert np.all(out[row, length:] == 0.0)


def test_stack_frames_matches_loop(feature_batch):
    features, lengths = feature_batch
    stacked, stacked_length = jax.jit(functools.partial(frontend.stack_frames, factor=4))(features, lengths)
    np.testing.assert_array_equal(stacked_length, np.asarray(lengths) // 4)
    assert stacked.shape == (4, 15, 320)
    source = np.asarray(features)
    for row, length in enumerate(np.asarray(stacked_length)):
        for s in range(15):
            expected = source[row, 4 * s : 4 * s + 4].reshape(-1) if s < length else np.zeros(320)
            np.testing.assert_array_equal(stacked[row, s], expected)
