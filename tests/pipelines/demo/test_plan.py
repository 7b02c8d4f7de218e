"""The glasses set's plan: the latent vector determines each face's attributes."""

from __future__ import annotations

import numpy as np

from pipelines.demo import plan


def test_the_latent_vector_also_determines_the_other_attributes() -> None:
    vector, traits = plan.face_latent(3, 17, True)
    again, same = plan.face_latent(3, 17, True)
    assert np.array_equal(vector, again) and traits == same
    hair = [plan.face_latent(3, i, False)[1].hair_color for i in range(1, 300)]
    direction = plan.latent_directions(3)[plan._TRAITS.index("hair_color")]
    projections = [plan.face_latent(3, i, False)[0] @ direction for i in range(1, 300)]
    assert np.corrcoef(hair, projections)[0, 1] > 0.95
