"""The gin data entry points: synthetic streams and LibriSpeech streams (mock TFDS data) give contract batches."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from maestro_jax.data import pipeline, synthetic


def check_contract(batch, streams, batch_size):
    assert set(batch) == set(streams)
    for name, stream in batch.items():
        if name != "text":
            assert stream["waveform"].dtype == np.float32 and stream["waveform"].shape[0] == batch_size
            assert np.all(stream["waveform_length"] <= stream["waveform"].shape[1])
            assert np.all(stream["waveform_length"] > 0)
        if name != "speech":
            assert stream["tokens"].dtype == np.int32
            assert np.all(stream["token_length"] > 0)
            valid = np.arange(stream["tokens"].shape[1])[None, :] < stream["token_length"][:, None]
            assert np.all(stream["tokens"][~valid] == 0) and np.all(stream["tokens"][valid] > 0)


def test_synthetic_streams_follow_the_contract():
    corpus_dir = synthetic.cached_corpus("tiny")
    pipeline.synthetic_corpus(corpus_dir=str(corpus_dir), size="tiny")
    import gin

    with gin.unlock_config():
        gin.bind_parameter("synthetic_corpus.corpus_dir", str(corpus_dir))
    try:
        with pipeline.synthetic_streams(0, 1, 0, paired_batch_size=2, speech_batch_size=3, text_batch_size=4) as data:
            batch = next(data)
            spm_path = str(corpus_dir / "spm" / "spm.model")
            assert data.tokenizer_files == {"paired": spm_path, "text": spm_path}
    finally:
        gin.clear_config()
    check_contract({"paired": batch["paired"]}, ["paired"], 2)
    check_contract({"speech": batch["speech"]}, ["speech"], 3)
    check_contract({"text": batch["text"]}, ["text"], 4)


def test_synthetic_streams_bucket_audio_and_refuse_buckets_across_hosts():
    corpus_dir = synthetic.cached_corpus("tiny")
    import gin

    with gin.unlock_config():
        gin.bind_parameter("synthetic_corpus.corpus_dir", str(corpus_dir))
    try:
        buckets = (1.0, 2.0, 3.0)
        allowed = {int(seconds * 16000) for seconds in buckets} | {int(6.0 * 16000)}
        widths = set()
        with pipeline.synthetic_streams(
            0, 1, 0, streams=("paired", "text"), paired_batch_size=2, text_batch_size=4, bucket_seconds=buckets
        ) as data:
            for _ in range(12):
                batch = next(data)
                paired = batch["paired"]
                width = paired["waveform"].shape[1]
                # The smallest allowed length that holds the longest utterance of the batch.
                assert width == min(w for w in allowed if w >= paired["waveform_length"].max())
                assert batch["text"]["tokens"].shape[1] == 64  # text is never bucketed
                widths.add(width)
        assert len(widths) > 1
        with pytest.raises(ValueError, match="bucket_seconds"):
            pipeline.synthetic_streams(0, 2, 0, streams=("paired",), bucket_seconds=buckets)
    finally:
        gin.clear_config()


def test_librispeech_streams_on_mock_data(monkeypatch):
    spm_path = synthetic.cached_corpus("tiny") / "spm" / "spm.model"
    # mock_data fakes the records but not the prepared-dataset marker librispeech_streams checks first.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=6):
        with pipeline.librispeech_streams(
            0,
            1,
            0,
            tokenizer_path=str(spm_path),
            paired_splits=("dev_clean",),
            speech_splits=("dev_other",),
            streams=("paired", "speech", "text"),
            paired_batch_size=2,
            speech_batch_size=2,
            text_batch_size=2,
            max_seconds=60.0,
            max_tokens=4096,
            prefetch=0,
        ) as data:
            batch = next(data)
            assert data.tokenizer_files == {"paired": str(spm_path), "text": str(spm_path)}
    for name in ("paired", "speech", "text"):
        check_contract({name: batch[name]}, [name], 2)


def test_librispeech_text_stream_without_prepared_lm_text_names_the_bindings(tmp_path):
    """seqio would start downloading and preparing the 4 GB LibriSpeech-LM text on every host instead."""
    spm_path = synthetic.cached_corpus("tiny") / "spm" / "spm.model"
    with pytest.raises(
        ValueError,
        match=(
            r"stream 'text' is requested \(librispeech_streams.streams=\('text',\), i.e. STREAMS\) but TFDS "
            rf"'librispeech_lm:0.\*.\*' under {tmp_path} is not prepared.*librispeech_streams.tfds_data_dir "
            r"\(TFDS_DATA_DIR\).*drop 'text' from STREAMS"
        ),
    ):
        pipeline.librispeech_streams(
            0, 1, 0, tokenizer_path=str(spm_path), tfds_data_dir=str(tmp_path), streams=("text",)
        )
