"""maestro_jax: joint speech-text pretraining in JAX/Flax.

Importing the package imports every gin-configurable module, so that a gin file can bind any of them without
"no configurable matching" surprises. Heavy optional pieces (TensorFlow-backed data) are imported by maestro_jax.data.
"""

__version__ = "0.1.0"
