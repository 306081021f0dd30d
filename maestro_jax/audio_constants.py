"""The package's audio contract: every waveform it reads or writes (batches, corpora, manifests once read, exports)
is mono f32 in [-1, 1] at this rate. Other modules import it from here; none defines its own."""

SAMPLE_RATE_HZ = 16000
