"""TFDS builder `maestro_synthetic` over the raw files that `maestro-data synth` writes (DIR/raw).

Importing this module registers the builder, after which `tfds.builder("maestro_synthetic", data_dir=DIR/tfds,
config="tiny")` and `seqio.TfdsDataSource("maestro_synthetic/tiny:1.0.0", tfds_data_dir=DIR/tfds)` read the prepared
corpus. Features: `id`, `speaker`, `text` (Text) and `audio`
(int16 [N] at 16 kHz; N = 0 for text_train rows).
"""

import json
from pathlib import Path

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from maestro_jax.audio_constants import SAMPLE_RATE_HZ
from maestro_jax.data.corpus_layout import SPLITS


class Int16Audio(tfds.features.Audio):
    """tfds.features.Audio that applies its `encoding` to in-memory arrays.

    tfds 4.9 returns numpy audio unencoded, so int16 PCM would be stored as 8-10 byte varints instead of 2 bytes.
    """

    def encode_example(self, audio_or_path_or_fobj):
        if isinstance(audio_or_path_or_fobj, np.ndarray):
            return tfds.features.Tensor.encode_example(self, audio_or_path_or_fobj)
        return super().encode_example(audio_or_path_or_fobj)


class MaestroSynthetic(tfds.core.GeneratorBasedBuilder):
    """Synthetic espeak-ng speech and generated English text for joint speech-text pretraining."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="tiny", description="Test-sized corpus (~150 utterances)."),
        tfds.core.BuilderConfig(name="small", description="Demo corpus (~4,600 utterances, 30,000 text sentences)."),
        tfds.core.BuilderConfig(
            name="medium", description="Learnable corpus (~16,600 utterances, 100,000 text sentences)."
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `maestro-data synth --size <config> --out DIR`; it writes DIR/raw (the manual_dir) and prepares this "
        "dataset into DIR/tfds."
    )

    def __init__(self, *, raw_dir: str | Path | None = None, **kwargs):
        """`raw_dir`: the DIR/raw folder to read; defaults to the download config's manual_dir."""
        self._raw_dir = Path(raw_dir) if raw_dir else None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "speaker": tfds.features.Text(),
                    "text": tfds.features.Text(),
                    "audio": Int16Audio(
                        shape=(None,), dtype=np.int16, sample_rate=SAMPLE_RATE_HZ, encoding=tfds.features.Encoding.BYTES
                    ),
                }
            ),
            description="Synthetic speech-text corpus: see data/README.md.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        raw_dir = self._raw_dir or Path(dl_manager.manual_dir)
        return {split: self._generate_examples(raw_dir, split) for split in SPLITS}

    def _generate_examples(self, raw_dir: Path, split: str):
        jsonl = Path(raw_dir) / f"{split}.jsonl"
        if not jsonl.exists():
            raise FileNotFoundError(f"{jsonl} is missing; rebuild the corpus with `maestro-data synth --force`")
        with open(jsonl) as f:
            for line in f:
                row = json.loads(line)
                audio = np.zeros([0], np.int16)
                if row["audio"]:
                    audio, rate = soundfile.read(Path(raw_dir) / row["audio"], dtype="int16")
                    if rate != SAMPLE_RATE_HZ or audio.ndim != 1:
                        raise ValueError(
                            f"{row['audio']} in {jsonl} is {rate} Hz with shape {audio.shape}; "
                            f"expected mono {SAMPLE_RATE_HZ} Hz (rebuild with `maestro-data synth --force`)"
                        )
                yield row["id"], {"id": row["id"], "speaker": row["speaker"], "text": row["text"], "audio": audio}


def prepare(raw_dir: Path, data_dir: Path, config: str) -> MaestroSynthetic:
    """Prepares builder config `config` from `raw_dir` into the TFDS data_dir `data_dir`."""
    builder = MaestroSynthetic(raw_dir=raw_dir, data_dir=str(data_dir), config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(raw_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return builder
