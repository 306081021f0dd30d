"""Parameter counts per tower, from abstract shapes (jax.eval_shape: nothing is allocated)."""

from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.models.config import ModelConfig
from maestro_jax.models.model import SpeechTextModel

TOWERS = (
    "speech_tower",
    "text_tower",
    "duration_model",
    "refiner",
    "shared_tower",
    "rnnt_decoder",
    "ctc_head",
    "pooler",
    "bestrq_head",
)
MODEL_GIN_DIR = Path(__file__).resolve().parents[2] / "gin" / "models"


def example_batch(*, batch_size: int = 1, num_samples: int = 16000, num_tokens: int = 8) -> dict:
    """A zero "paired" batch of the contract's shapes (1 s of audio, 8 tokens) for init and eval_shape."""
    return {
        "paired": {
            "waveform": jnp.zeros((batch_size, num_samples), jnp.float32),
            "waveform_length": jnp.full((batch_size,), num_samples, jnp.int32),
            "tokens": jnp.ones((batch_size, num_tokens), jnp.int32),
            "token_length": jnp.full((batch_size,), num_tokens, jnp.int32),
        }
    }


def abstract_variables(config: ModelConfig) -> dict:
    """ShapeDtypeStructs of SpeechTextModel(config)'s variables, boxed with their logical partitioning."""
    model = SpeechTextModel(config)
    return jax.eval_shape(model.init, jax.random.key(0), example_batch())


def count_parameters(config: ModelConfig) -> dict[str, int]:
    """Trainable parameters per tower (keys of TOWERS), plus "speech+shared", "total" and "frozen" (BEST-RQ)."""
    variables = abstract_variables(config)

    def size(tree) -> int:
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))

    params = variables["params"]
    unknown = set(params) - set(TOWERS)
    if unknown:
        raise RuntimeError(f"parameters outside the known towers: {sorted(unknown)}; add them to sizes.TOWERS.")
    counts = {tower: size(params.get(tower, {})) for tower in TOWERS}
    counts["speech+shared"] = counts["speech_tower"] + counts["shared_tower"]
    counts["total"] = size(params)
    counts["frozen"] = size(variables.get("frozen", {}))
    return counts


def model_config_from_gin(path: str | Path) -> ModelConfig:
    """ModelConfig as bound by one gin file (e.g. gin/models/small.gin). Clears gin's global config before and after."""
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        return ModelConfig()
    finally:
        gin.clear_config()
