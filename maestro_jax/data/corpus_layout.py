"""The layout of a synthetic corpus directory (docs/CONTRACTS.md): its splits and where each file lives.

    raw/<split>.jsonl, raw/<split>/*.wav   what the TFDS builder reads (text_train rows have no audio)
    manifests/<split>.jsonl                 NeMo-style manifests of the audio splits
    spm/spm.model                           the sentencepiece tokenizer
    tfds/                                   the prepared TFDS data_dir
    vocab.json, summary.json                the vocabulary split and the build summary (written last)

The builder (synthetic.py), the TFDS builder (tfds_synthetic.py), the seqio tasks and evaluation all read these names
from here. synthetic.source_fingerprint hashes this file: a changed layout rebuilds cached corpora.
"""

import os

SPLITS = ("paired_train", "speech_train", "text_train", "dev", "test_in_vocab", "test_text_only_vocab")
AUDIO_SPLITS = ("paired_train", "speech_train", "dev", "test_in_vocab", "test_text_only_vocab")
TRAIN_SPLITS = ("paired_train", "speech_train", "text_train")
# The held-out test splits that evaluation scores by default: words heard in paired training, and words only in text.
TEST_SPLITS = ("test_in_vocab", "test_text_only_vocab")

RAW_DIR = "raw"
MANIFESTS_DIR = "manifests"
TFDS_DIR = "tfds"
TOKENIZER_DIR = "spm"
TOKENIZER_FILE = os.path.join(TOKENIZER_DIR, "spm.model")
VOCAB_FILE = "vocab.json"
SUMMARY_FILE = "summary.json"
