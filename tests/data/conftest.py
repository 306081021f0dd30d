"""Shared fixtures for data tests; `tiny_corpus` is what other test files use to get a real corpus directory."""

from pathlib import Path

import pytest

from maestro_jax.data import synthetic


@pytest.fixture(scope="session")
def tiny_corpus() -> Path:
    """The tiny synthetic corpus (seed 0), built once per version of the generator sources under
    /tmp/maestro_jax_corpora (override with $MAESTRO_CORPUS_CACHE) and reused across test runs."""
    return synthetic.cached_corpus("tiny", seed=0)
