"""Speech frontend on device: waveform -> log-mel, SpecAugment, per-utterance normalisation, frame stacking.

Definition of `log_mel_spectrogram` (16 kHz input; all arithmetic in float32):
  1. Frame t (t = 0 .. T-1) is the 400 samples `waveform[160 t : 160 t + 400]` (25 ms window, 10 ms hop, no centring,
     no dither, no pre-emphasis, no DC removal), so T = 1 + (N - 400) // 160 for a padded array of N samples.
  2. Multiply by the periodic Hann window w[n] = 0.5 - 0.5 cos(2 pi n / 400), n = 0 .. 399.
  3. Zero-pad to 512 samples and take the real FFT: 257 bins k * 31.25 Hz, k = 0 .. 256. torch.stft centres a window
     shorter than n_fft inside the 512-sample frame; the power spectrum does not depend on where the zeros go.
  4. Power spectrum |X_k|^2 (not normalised by the window or the FFT size).
  5. 80 triangular HTK mel filters, unnormalised, from 0 Hz to 8 kHz, exactly torchaudio.functional.melscale_fbanks(
     n_freqs=257, f_min=0, f_max=8000, n_mels=80, sample_rate=16000, norm=None, mel_scale="htk"):
     mel(f) = 2595 log10(1 + f / 700); 82 points f_0 .. f_81 equally spaced in mel give the edges and centres in Hz,
     and filter m (0-based) at FFT bin frequency f is
     max(0, min((f - f_m) / (f_{m+1} - f_m), (f_{m+2} - f) / (f_{m+2} - f_{m+1}))).
  6. features = log(mel_power + 1e-6) (natural log).
Frame t is valid when it lies wholly inside the waveform's valid samples: feature_length = max(0, 1 + (L - 400) // 160)
for L = waveform_length; frames at t >= feature_length (including those straddling the valid end) are set to 0.
Samples beyond waveform_length therefore never change a valid frame.

torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, center=False,
f_min=0, f_max=8000, n_mels=80, power=2, norm=None, mel_scale="htk") gives the same frames for the waveform padded
with (512 - 400) / 2 = 56 zeros on each side (its window sits 56 samples into each 512-sample frame).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.audio_constants import SAMPLE_RATE_HZ

FRAME_LENGTH = 400  # samples (25 ms)
FRAME_STEP = 160  # samples (10 ms)
FFT_LENGTH = 512
NUM_MEL_BINS = 80
LOG_OFFSET = 1e-6


def num_frames(num_samples, *, frame_length: int = FRAME_LENGTH, frame_step: int = FRAME_STEP):
    """Number of whole frames in `num_samples` samples: max(0, 1 + (num_samples - frame_length) // frame_step).

    Works on Python ints (static shapes) and on integer arrays (per-example lengths, e.g. i32[B]).
    """
    if isinstance(num_samples, int | np.integer):
        return max(0, 1 + (int(num_samples) - frame_length) // frame_step)
    return jnp.maximum(0, 1 + (num_samples - frame_length) // frame_step)


def hz_to_htk_mel(hz):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def htk_mel_to_hz(mel):
    """Inverse of `hz_to_htk_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def htk_mel_filterbank(
    *,
    num_fft_bins: int = FFT_LENGTH // 2 + 1,
    num_mel_bins: int = NUM_MEL_BINS,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    lower_hz: float = 0.0,
    upper_hz: float = 8000.0,
) -> np.ndarray:
    """Unnormalised triangular HTK mel filters as float32 [F, M] (F = num_fft_bins, M = num_mel_bins).

    Same values as torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"): FFT bin k sits at
    k * (sample_rate / 2) / (F - 1) Hz; filter edges are M + 2 points equally spaced in HTK mel.
    """
    if not 0.0 <= lower_hz < upper_hz <= sample_rate_hz / 2:
        raise ValueError(
            f"mel filterbank needs 0 <= lower_hz < upper_hz <= sample_rate_hz / 2; got lower_hz={lower_hz}, "
            f"upper_hz={upper_hz}, sample_rate_hz={sample_rate_hz}. Change the frontend's lower_hz/upper_hz."
        )
    bin_hz = np.linspace(0.0, sample_rate_hz / 2, num_fft_bins)
    edge_hz = htk_mel_to_hz(np.linspace(hz_to_htk_mel(lower_hz), hz_to_htk_mel(upper_hz), num_mel_bins + 2))
    edge_gap = np.diff(edge_hz)  # [M + 1]
    offset = edge_hz[None, :] - bin_hz[:, None]  # [F, M + 2]
    rising = -offset[:, :-2] / edge_gap[:-1]
    falling = offset[:, 2:] / edge_gap[1:]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def periodic_hann_window(length: int) -> np.ndarray:
    """Periodic Hann window f32[length]: 0.5 - 0.5 cos(2 pi n / length) (torch.hann_window's default)."""
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


def frame_mask(length: jax.Array, max_length: int) -> jax.Array:
    """bool[B, T] that is True at positions t < length[b] (T = max_length)."""
    return jnp.arange(max_length)[None, :] < length[:, None]


def _frame_signal(waveform: jax.Array, num_output_frames: int, frame_length: int, frame_step: int) -> jax.Array:
    """f32[B, N] -> f32[B, T, frame_length] overlapping frames, built from hop-sized blocks (no gather)."""
    blocks_per_frame = math.ceil(frame_length / frame_step)
    num_blocks = num_output_frames + blocks_per_frame - 1
    batch, num_samples = waveform.shape
    needed = num_blocks * frame_step
    # The zeros only reach the tail of the last frames' final block, which is cut off below.
    if needed > num_samples:
        waveform = jnp.pad(waveform, ((0, 0), (0, needed - num_samples)))
    blocks = waveform[:, :needed].reshape(batch, num_blocks, frame_step)
    frames = jnp.concatenate([blocks[:, k : k + num_output_frames] for k in range(blocks_per_frame)], axis=-1)
    return frames[..., :frame_length]


def log_mel_spectrogram(
    waveform: jax.Array,
    waveform_length: jax.Array,
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    frame_length: int = FRAME_LENGTH,
    frame_step: int = FRAME_STEP,
    fft_length: int = FFT_LENGTH,
    num_mel_bins: int = NUM_MEL_BINS,
    lower_hz: float = 0.0,
    upper_hz: float = 8000.0,
    log_offset: float = LOG_OFFSET,
) -> tuple[jax.Array, jax.Array]:
    """Log-mel features of a padded batch, as defined in the module docstring (defaults = that definition).

    Args:
      waveform: f32[B, N] samples in [-1, 1] at `sample_rate_hz`, any values beyond `waveform_length`.
      waveform_length: i32[B] valid samples per example.
    Returns:
      features f32[B, T, M] natural-log mel power, 0 at invalid frames; T = num_frames(N), M = num_mel_bins.
      feature_length i32[B] = min(T, num_frames(waveform_length)).
    """
    if waveform.ndim != 2:
        raise ValueError(f"log_mel_spectrogram expects waveform f32[B, N]; got shape {waveform.shape}.")
    if frame_length > fft_length:
        raise ValueError(f"frame_length={frame_length} samples exceeds fft_length={fft_length}; raise fft_length.")
    batch, num_samples = waveform.shape
    num_output_frames = num_frames(num_samples, frame_length=frame_length, frame_step=frame_step)
    feature_length = jnp.minimum(
        num_frames(waveform_length.astype(jnp.int32), frame_length=frame_length, frame_step=frame_step),
        num_output_frames,
    ).astype(jnp.int32)
    if num_output_frames == 0:
        return jnp.zeros((batch, 0, num_mel_bins), jnp.float32), feature_length

    frames = _frame_signal(waveform.astype(jnp.float32), num_output_frames, frame_length, frame_step)
    frames = frames * jnp.asarray(periodic_hann_window(frame_length))
    spectrum = jnp.fft.rfft(frames, n=fft_length, axis=-1)  # complex64 [B, T, fft_length // 2 + 1]
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    filterbank = htk_mel_filterbank(
        num_fft_bins=fft_length // 2 + 1,
        num_mel_bins=num_mel_bins,
        sample_rate_hz=sample_rate_hz,
        lower_hz=lower_hz,
        upper_hz=upper_hz,
    )
    # HIGHEST: default matmul precision is bf16 on TPU and TF32 on recent GPUs, too coarse for the log of small powers.
    mel_power = jnp.einsum("btf,fm->btm", power, jnp.asarray(filterbank), precision=jax.lax.Precision.HIGHEST)
    features = jnp.log(mel_power + log_offset)
    features = jnp.where(frame_mask(feature_length, num_output_frames)[..., None], features, 0.0)
    return features, feature_length


def normalize_features(features: jax.Array, feature_length: jax.Array, *, epsilon: float = 1e-5) -> jax.Array:
    """Per-utterance, per-channel mean/variance normalisation over valid frames.

    Args:
      features: f32[B, T, M]; feature_length: i32[B].
    Returns:
      f32[B, T, M]: (x - mean) / sqrt(var + epsilon) at valid frames, 0 at padding; an example with no valid
      frames comes back all zeros.
    """
    features = features.astype(jnp.float32)
    valid = frame_mask(feature_length, features.shape[1])[..., None]
    count = jnp.maximum(feature_length, 1).astype(jnp.float32)[:, None, None]
    mean = jnp.sum(jnp.where(valid, features, 0.0), axis=1, keepdims=True) / count
    centred = jnp.where(valid, features - mean, 0.0)
    variance = jnp.sum(jnp.square(centred), axis=1, keepdims=True) / count
    return centred * jax.lax.rsqrt(variance + epsilon)


def _random_bands(
    rng: jax.Array, max_width: jax.Array, extent: jax.Array, num_bands: int
) -> tuple[jax.Array, jax.Array]:
    """Start and width i32[B, K] of K bands per example: width ~ U{0..max_width[b]}, start ~ U{0..extent[b] - width}."""
    width_rng, start_rng = jax.random.split(rng)
    shape = (max_width.shape[0], num_bands)
    max_width = max_width[:, None].astype(jnp.float32)
    width = jnp.floor(jax.random.uniform(width_rng, shape) * (max_width + 1.0))
    width = jnp.minimum(width, max_width)
    room = extent[:, None].astype(jnp.float32) - width
    start = jnp.minimum(jnp.floor(jax.random.uniform(start_rng, shape) * (room + 1.0)), room)
    return start.astype(jnp.int32), width.astype(jnp.int32)


def _band_mask(start: jax.Array, width: jax.Array, size: int) -> jax.Array:
    """bool[B, size]: union of the K bands [start, start + width) given as i32[B, K]."""
    position = jnp.arange(size)[None, None, :]
    inside = (position >= start[..., None]) & (position < (start + width)[..., None])
    return jnp.any(inside, axis=1)


def spec_augment(
    rng: jax.Array,
    features: jax.Array,
    feature_length: jax.Array,
    *,
    num_freq_masks: int = 2,
    max_freq_width: int = 27,
    num_time_masks: int = 10,
    max_time_ratio: float = 0.05,
    mask_value: float = 0.0,
) -> jax.Array:
    """SpecAugment (Park et al. 2019) with length-adaptive time masks (Park et al. 2020); no time warping.

    Each example draws its own masks. A frequency mask covers channels [f0, f0 + w) with w ~ U{0..max_freq_width}
    and f0 ~ U{0..M - w}, on every valid frame. A time mask covers frames [t0, t0 + w) with
    w ~ U{0..floor(max_time_ratio * L)} for that example's length L and t0 ~ U{0..L - w}, so it stays inside the
    valid frames. Masked values become `mask_value` (0 suits normalised features); padding is returned unchanged.

    Args:
      rng: PRNG key; the same key gives the same masks.
      features: f32[B, T, M]; feature_length: i32[B].
    Returns:
      f32[B, T, M] with masked valid positions set to `mask_value`.
    """
    batch, max_frames, num_channels = features.shape
    feature_length = jnp.minimum(feature_length.astype(jnp.int32), max_frames)
    freq_rng, time_rng = jax.random.split(rng)
    masked = jnp.zeros((batch, max_frames, num_channels), bool)
    if num_freq_masks > 0:
        max_width = jnp.full((batch,), min(max_freq_width, num_channels), jnp.int32)
        start, width = _random_bands(freq_rng, max_width, jnp.full((batch,), num_channels), num_freq_masks)
        masked = masked | _band_mask(start, width, num_channels)[:, None, :]
    if num_time_masks > 0:
        max_width = jnp.floor(max_time_ratio * feature_length.astype(jnp.float32)).astype(jnp.int32)
        start, width = _random_bands(time_rng, max_width, feature_length, num_time_masks)
        masked = masked | _band_mask(start, width, max_frames)[:, :, None]
    masked = masked & frame_mask(feature_length, max_frames)[..., None]
    return jnp.where(masked, jnp.asarray(mask_value, features.dtype), features)


def stack_frames(features: jax.Array, feature_length: jax.Array, *, factor: int) -> tuple[jax.Array, jax.Array]:
    """Concatenate `factor` consecutive frames with stride `factor` (e.g. 4 x 10 ms -> 40 ms frames).

    Args:
      features: [B, T, D]; feature_length: i32[B].
    Returns:
      stacked [B, T // factor, factor * D] where stacked[b, s] = concat(features[b, factor s : factor (s + 1)]),
      zero where the group holds any invalid frame; stacked_length i32[B] = feature_length // factor (trailing
      frames that do not fill a group are dropped, so padding never leaks into a valid stacked frame).
    """
    if factor < 1:
        raise ValueError(f"stack_frames needs factor >= 1; got factor={factor}.")
    batch, max_frames, dim = features.shape
    num_groups = max_frames // factor
    stacked = features[:, : num_groups * factor].reshape(batch, num_groups, factor * dim)
    stacked_length = (jnp.minimum(feature_length, max_frames) // factor).astype(jnp.int32)
    stacked = jnp.where(frame_mask(stacked_length, num_groups)[..., None], stacked, 0)
    return stacked, stacked_length
