"""Confidence intervals for evaluation metrics."""

from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(
    values: list[float] | np.ndarray, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval: (mean, low, high)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("Cannot compute a confidence interval of no values.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    resampled = data[rng.integers(0, data.size, size=(num_resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(data.mean()), float(low), float(high)
