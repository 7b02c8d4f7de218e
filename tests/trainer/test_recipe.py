"""trainer/recipe.py: the optimizer's warm-up and schedule."""

from __future__ import annotations

import pytest

from trainer.recipe import Recipe, learning_rate_schedule


def test_warmup_schedule_rises_linearly_over_the_first_epoch_then_decays():
    schedule = learning_rate_schedule(1e-3, recipe=Recipe(), steps_per_epoch=10, epochs=5)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(5e-4)  # Mid warm-up.
    assert float(schedule(10)) == pytest.approx(1e-3)  # End of warm-up: the peak.
    assert float(schedule(30)) == pytest.approx(5e-4, rel=1e-3)  # Halfway through the cosine.
    assert float(schedule(50)) == pytest.approx(0.0, abs=1e-9)  # The last step.
    constant = learning_rate_schedule(
        1e-3, recipe=Recipe(warmup_epochs=0.5, schedule="constant"), steps_per_epoch=10, epochs=5
    )
    assert [round(float(constant(s)), 8) for s in (0, 5, 30, 50)] == [0.0, 1e-3, 1e-3, 1e-3]
