"""Plain statistics that the audit (feedback/) and the evaluations (eval/) share; no preftune imports.

- `wilson_interval`: the Wilson score interval of a binomial share;
- `least_squares_slope`: the slope of a least-squares line, over the last axis;
- `as_vector`, `check_same_length`: the input checks of the per-pair and per-prompt metrics.

Bootstrap intervals of a mean are in eval/stats.py.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) for the proportion ``successes / n``.

    ``successes`` may be fractional (ties count half). With ``p = successes / n`` and ``z`` the
    ``(1 + confidence) / 2`` normal quantile: ``(p + z^2/2n +- z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``,
    clipped to [0, 1].

    Edge rule: n must be an integer >= 1 and successes in [0, n]; anything else is a ValueError. With no
    trials (n == 0) there is no interval: a caller that reports "no data" decides what to write there
    (the audit writes null), rather than getting NaN from here.
    """
    if n < 1 or n != int(n):
        raise ValueError(
            f"n must be an integer >= 1, got {n}. Pass the number of trials (e.g. pairs evaluated)."
        )
    if not (math.isfinite(successes) and 0 <= successes <= n):
        raise ValueError(f"successes must be in [0, n={n}], got {successes}. Count successes among n trials.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}. Use e.g. 0.95.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half_width), min(1.0, center + half_width)


def least_squares_slope(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Slope b of the least-squares line y = a + b x, fitted over the last axis: (..., n) -> (...).

    b = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2), float64; NaN where x has no spread (one
    point, or all x equal). The intercept is mean y - b mean x. Leading axes are separate fits, e.g.
    bootstrap resamples (R, n) -> (R,).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim == 0:
        raise ValueError(f"x and y must have the same shape (..., n), got {x.shape} and {y.shape}.")
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], np.nan)
    dx = x - x.mean(axis=-1, keepdims=True)  # (..., n)
    dy = y - y.mean(axis=-1, keepdims=True)  # (..., n)
    sxx = (dx * dx).sum(axis=-1)  # (...)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, (dx * dy).sum(axis=-1) / sxx, np.nan)


def as_vector(values: ArrayLike, name: str, item: str) -> np.ndarray:
    """``values`` as a non-empty, finite float64 array of shape (N,), one value per ``item`` ("pair",
    "prompt"); otherwise a ValueError that says what to fix."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one value per {item}), got shape {array.shape}. Flatten it or pass one list."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty. Pass at least one {item}'s value.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s), first {array[bad[0]]} at index {bad[0]}. "
            f"Drop or fix those {item}s before evaluating."
        )
    return array


def check_same_length(item: str, **arrays: np.ndarray) -> None:
    """Raise if the arrays do not all have one value per ``item`` (the same first dimension)."""
    sizes = {name: len(array) for name, array in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Inputs must have one value per {item}, got lengths {sizes}. Align them by {item}.")
