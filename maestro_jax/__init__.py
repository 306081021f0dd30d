"""maestro_jax: joint speech-text pretraining in JAX/Flax.

`register_configurables()` imports every gin-configurable module, so that a gin file can bind any of them without
"no configurable matching" surprises; every CLI calls it before parsing gin. It is a function rather than an import
here so that `maestro_jax.export.load` (and anything else that only runs a model) never pulls in TensorFlow and seqio.
"""

import importlib

__version__ = "0.1.0"

CONFIGURABLE_MODULES = (
    "maestro_jax.models",
    "maestro_jax.models.sonar_text",
    "maestro_jax.objectives.supervised",
    "maestro_jax.objectives.bestrq",
    "maestro_jax.objectives.maestro",
    "maestro_jax.objectives.astra",
    "maestro_jax.objectives.sonar",
    "maestro_jax.partitioning",
    "maestro_jax.trainer",
    "maestro_jax.train",
    "maestro_jax.warm_start",
    "maestro_jax.distributed",
    "maestro_jax.inference",
    "maestro_jax.evaluation",
    "maestro_jax.data.pipeline",
)


def register_configurables() -> None:
    """Imports every module that defines gin configurables (idempotent)."""
    for name in CONFIGURABLE_MODULES:
        importlib.import_module(name)
