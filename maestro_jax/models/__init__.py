"""Towers, heads and the composed SpeechTextModel.

Importing this package registers the gin configurables ModelConfig and make_model.
"""

from maestro_jax.models.config import ModelConfig
from maestro_jax.models.model import SpeechTextModel, make_model

__all__ = ["ModelConfig", "SpeechTextModel", "make_model"]
