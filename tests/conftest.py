"""Test-wide setup: 8 simulated CPU devices, quiet TensorFlow, deterministic defaults."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # after the environment above: jax reads XLA_FLAGS when first imported

SLOW_TESTS_VARIABLE = "MAESTRO_SLOW_TESTS"


def pytest_configure(config):
    config.addinivalue_line("markers", f"slow: minutes long; runs only with {SLOW_TESTS_VARIABLE}=1 (README.md)")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests are skipped unless MAESTRO_SLOW_TESTS=1: CI keeps its time, the README says how."""
    if os.environ.get(SLOW_TESTS_VARIABLE) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow: run with {SLOW_TESTS_VARIABLE}=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def fresh_gin_config_per_file():
    """Each test file starts from an empty, unlocked gin config: pytest-xdist (scripts/test.sh) runs the files in a
    different order on each worker, and a run that finalized gin in one file must not lock the next file's."""
    import gin

    # clear_config() also unlocks; `with gin.unlock_config(): gin.clear_config()` would not: unlock_config restores
    # the locked state on exit (a finalized config stayed locked for the next file: CI failed on that).
    gin.clear_config()
    yield
