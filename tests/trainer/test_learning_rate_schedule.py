"""The warmup-stable-decay schedule against its closed form (cosine: tests/trainer/test_trainer_step.py)."""

import numpy as np
import pytest

from maestro_jax import trainer


def closed_form(step: int, *, peak=2e-3, warmup=10, total=100, final=0.1, fraction=0.25) -> float:
    if step < warmup:
        return peak * step / warmup
    decay_start = total - round(fraction * total)
    if step < decay_start:
        return peak
    return peak + (final * peak - peak) * min((step - decay_start) / (total - decay_start), 1.0)


def test_wsd_matches_its_closed_form():
    schedule = trainer.make_learning_rate_schedule(
        peak_learning_rate=2e-3,
        warmup_steps=10,
        decay="wsd",
        total_steps=100,
        final_learning_rate_fraction=0.1,
        decay_fraction=0.25,
    )
    for step in [0, 3, 10, 11, 40, 74, 75, 76, 90, 99, 100, 150]:
        np.testing.assert_allclose(float(schedule(step)), closed_form(step), rtol=1e-5, err_msg=str(step))


def test_wsd_rejects_a_decay_fraction_outside_the_unit_interval():
    with pytest.raises(ValueError, match="decay_fraction"):
        trainer.make_learning_rate_schedule(warmup_steps=10, decay="wsd", total_steps=100, decay_fraction=0.0)
    with pytest.raises(ValueError, match="total_steps"):
        trainer.make_learning_rate_schedule(warmup_steps=10, decay="wsd", total_steps=None)
