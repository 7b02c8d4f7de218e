"""Robust outliers: each audited statistic's z-score against the data set's median and MAD, and
the reasons (``blurry``, ``constant``, ...) for the ones beyond the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pipelines.records import ImageQuality

# Audited statistic -> (reason when far below the median, reason when far above).
OUTLIER_REASONS: dict[str, tuple[str | None, str]] = {
    "sharpness": ("blurry", "oversharp"),
    "anisotropy": ("directional_blur", "directional_blur"),
    "brightness": ("dark", "bright"),
    "contrast": ("low_contrast", "high_contrast"),
    "saturated": (None, "saturated"),
    "constancy": (None, "constant"),
    "atypicality": (None, "atypical"),
}
# Smallest MAD used per statistic: where nearly every image agrees (no saturated pixels at
# all, say), the MAD is 0 and any difference would be "infinitely" far out.
# Constancy's floor is 5% of the pixels: flat backgrounds make a few percent of one grey value
# common in clean photos (26 of 1485 clean demo faces were "constant" with a 0.5% floor).
_MAD_FLOORS = {
    "sharpness": 0.05,
    "anisotropy": 0.05,
    "brightness": 1.0,
    "contrast": 1.0,
    "saturated": 0.005,
    "constancy": 0.05,
    "atypicality": 0.05,
}
_MAD_TO_SIGMA = 0.6745


def robust_values(quality: ImageQuality) -> dict[str, float]:
    """The audited statistics on the scale their z-scores use (sharpness is heavy-tailed: log)."""
    values = {
        "sharpness": math.log1p(quality.sharpness),
        "anisotropy": quality.anisotropy,
        "brightness": quality.brightness,
        "contrast": quality.contrast,
        "saturated": quality.saturated,
        "constancy": quality.constancy,
    }
    if not math.isnan(quality.atypicality):
        values["atypicality"] = quality.atypicality
    return values


def robust_z(values: Mapping[str, float], medians: Mapping[str, float], mads: Mapping[str, float]) -> dict[str, float]:
    """0.6745 (x - median) / MAD per statistic (the MAD floored, see ``_MAD_FLOORS``)."""
    return {
        name: _MAD_TO_SIGMA * (value - medians[name]) / max(mads[name], _MAD_FLOORS[name])
        for name, value in values.items()
        if name in medians and name in mads
    }


def outlier_reasons(z: Mapping[str, float], threshold: float) -> list[str]:
    """The reasons (``blurry``, ``constant``, ...) for the z-scores beyond ``threshold``."""
    reasons = []
    for name, score in sorted(z.items()):
        low, high = OUTLIER_REASONS[name]
        if score > threshold:
            reasons.append(high)
        elif score < -threshold and low:
            reasons.append(low)
    return reasons
