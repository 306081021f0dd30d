"""Speech the synthetic corpus never holds: new voices, new words, and file formats other than its own.

    write_unseen_manifest(Path("runs/unseen")) -> Path("runs/unseen/unseen.jsonl")

Each sentence below is spoken by an espeak-ng voice+variant pair that no corpus split uses (variants m7, m8, klatt,
klatt2, whisper), at a speaking rate and pitch outside the corpus's ranges, and written twice: as espeak-ng's native
22.05 kHz output in stereo (left and right at different gains) and resampled to 16 kHz mono. The sentences mix corpus
words with words outside its lexicon, so their error rate says how far the model carries beyond the corpus. The
manifest is NeMo-style JSONL (`audio_filepath` relative to it, `text`), which `maestro-eval --manifest` reads.
"""

import json
import re
from pathlib import Path

import numpy as np
import soundfile

from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.data import audio_files, sentences, synthetic

SENTENCES = (
    "the old doctor gave the children some fresh bread",
    "my brother painted a small boat near the river",
    "please send the yellow umbrella to the airport tomorrow",
    "a tired cyclist drank lemonade beside the lighthouse",
    "their neighbour will repair the broken violin on friday",
    "the clever engineer measured every bridge in the valley",
)
# (speaker, words per minute, pitch): voice+variant pairs absent from synthetic.SPEAKERS, rates and pitches outside
# synthetic.SPEAKING_RATE_WPM and synthetic.PITCH.
VOICES = (
    ("en-us+m7", 205, 20),
    ("en-gb-x-rp+klatt", 135, 80),
    ("en-gb-scotland+m8", 210, 25),
    ("en-us-nyc+klatt2", 140, 75),
    ("en+whisper", 200, 90),
    ("en-gb-x-gbclan+m7", 130, 85),
)
STEREO_GAINS = (0.9, 0.6)


def out_of_lexicon_words(seed: int = 0) -> list[str]:
    """Words of SENTENCES that the corpus of this seed never uses, in order of first appearance."""
    vocabulary = sentences.split_vocabulary(seed)
    known = set(vocabulary.a) | set(vocabulary.b)
    words = []
    for sentence in SENTENCES:
        words.extend(w for w in sentence.split() if w not in known and w not in words)
    return words


def write_unseen_manifest(out_dir: Path) -> Path:
    """Speaks SENTENCES with VOICES into out_dir (22.05 kHz stereo and 16 kHz mono wav per sentence) and returns the
    manifest path out_dir/unseen.jsonl (2 rows per sentence). Reuses the files when the manifest already exists."""
    out_dir = Path(out_dir)
    manifest = out_dir / "unseen.jsonl"
    if manifest.exists():
        return manifest
    synthetic.check_espeak_installed()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (text, (speaker, rate, pitch)) in enumerate(zip(SENTENCES, VOICES, strict=True)):
        name = f"unseen-{index:02d}-{re.sub(r'[^a-z0-9]+', '_', speaker)}"
        native, native_rate = synthetic.speak(text, speaker, rate, pitch)
        native = np.clip(native, -1.0, 32767 / 32768)  # PCM_16 wraps values outside [-1, 1)
        stereo = np.stack([gain * native for gain in STEREO_GAINS], axis=1)
        soundfile.write(out_dir / f"{name}_22k_stereo.wav", stereo, native_rate, subtype="PCM_16")
        mono16 = np.clip(audio_files.resample(native, native_rate, SAMPLE_RATE_HZ), -1.0, 32767 / 32768)
        soundfile.write(out_dir / f"{name}_16k.wav", mono16, SAMPLE_RATE_HZ, subtype="PCM_16")
        for suffix in ("22k_stereo", "16k"):
            rows.append({"audio_filepath": f"{name}_{suffix}.wav", "text": text, "speaker": speaker})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest
