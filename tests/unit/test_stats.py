"""Statistics shared by the audit and the evaluations (preftune/stats.py) against hand-computed values."""

import math

import numpy as np
import pytest

from preftune.stats import least_squares_slope, wilson_interval

# --- wilson_interval ---------------------------------------------------------------------------------


def test_wilson_8_of_10_at_95_percent():
    """z = 1.959964, z^2 = 3.841459, denominator 1 + z^2/10 = 1.384146.

    center = (0.8 + 0.192073) / 1.384146 = 0.716740;
    half = 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578 -> (0.490162, 0.943318).
    """
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6)
    assert high == pytest.approx(0.943318, abs=1e-6)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_wilson_matches_its_formula_at_another_confidence():
    z = 2.5758293035489004  # normal quantile at 0.995, i.e. 99% two-sided
    p, n = 3 / 7, 7
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(3, 7, confidence=0.99) == pytest.approx((center - half, center + half), abs=1e-12)


@pytest.mark.parametrize("k", [0, 1, 2.5, 4, 7, 10])
def test_wilson_is_symmetric_under_swapping_successes_and_failures(k):
    low, high = wilson_interval(k, 10)
    mirrored_low, mirrored_high = wilson_interval(10 - k, 10)
    assert low == pytest.approx(1 - mirrored_high, abs=1e-12)
    assert high == pytest.approx(1 - mirrored_low, abs=1e-12)


def test_wilson_at_the_boundaries_stays_in_unit_interval_and_touches_it():
    """At p = 0 the lower bound is exactly 0 and the upper is z^2/n / (1 + z^2/n)."""
    z2 = 1.959963984540054**2
    low, high = wilson_interval(0, 5)
    assert low == pytest.approx(0.0, abs=1e-15) and low >= 0.0
    assert high == pytest.approx((z2 / 5) / (1 + z2 / 5), abs=1e-12)
    low, high = wilson_interval(5, 5)
    assert high == pytest.approx(1.0, abs=1e-15) and high <= 1.0


def test_wilson_narrows_with_more_data_and_widens_with_confidence():
    narrow = wilson_interval(80, 100)
    wide = wilson_interval(8, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    loose = wilson_interval(8, 10, confidence=0.99)
    assert loose[0] < wide[0] and loose[1] > wide[1]


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "message"),
    [
        (1, 0, 0.95, "n must be an integer >= 1, got 0"),
        (0, 0, 0.95, "n must be an integer >= 1, got 0"),  # no trials: no interval, not NaN
        (1, 2.5, 0.95, "n must be an integer >= 1, got 2.5"),
        (11, 10, 0.95, r"successes must be in \[0, n=10\], got 11"),
        (-1, 10, 0.95, r"successes must be in \[0, n=10\], got -1"),
        (math.nan, 10, 0.95, "got nan"),
        (5, 10, 1.0, r"confidence must be in \(0, 1\), got 1.0"),
        (5, 10, 0.0, r"confidence must be in \(0, 1\), got 0.0"),
        (5, 10, math.nan, r"confidence must be in \(0, 1\), got nan"),
    ],
)
def test_wilson_rejects_bad_input(successes, n, confidence, message):
    with pytest.raises(ValueError, match=message):
        wilson_interval(successes, n, confidence)


# --- least_squares_slope -----------------------------------------------------------------------------


def test_least_squares_slope_closed_form():
    """x (0, 1, 2, 3), y (1, 3, 2, 6): means 1.5 and 3; dx (-1.5, -0.5, 0.5, 1.5), dy (-2, 0, -1, 3);
    sum dx dy = 3 + 0 - 0.5 + 4.5 = 7, sum dx^2 = 5 -> slope 1.4."""
    assert float(least_squares_slope([0, 1, 2, 3], [1.0, 3.0, 2.0, 6.0])) == pytest.approx(1.4, abs=1e-15)


def test_least_squares_slope_of_a_line_and_through_two_points():
    x = np.array([3.0, 7.0, 8.0, 20.0])
    assert float(least_squares_slope(x, 0.9 - 0.2 * x)) == pytest.approx(-0.2, abs=1e-12)
    assert float(least_squares_slope([10, 30], [0.5, 0.1])) == pytest.approx(-0.02, abs=1e-15)


def test_least_squares_slope_fits_each_row_of_a_batch_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    batched = least_squares_slope(x, y)
    assert batched.shape == (5,)
    for row in range(5):
        assert batched[row] == pytest.approx(np.polyfit(x[row], y[row], 1)[0], abs=1e-12)


def test_least_squares_slope_is_nan_without_spread_and_warns_nothing():
    with np.errstate(all="raise"):
        assert math.isnan(float(least_squares_slope([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])))
        assert math.isnan(float(least_squares_slope([5.0], [1.0])))
        assert least_squares_slope(np.zeros((3, 0)), np.zeros((3, 0))).shape == (3,)


def test_least_squares_slope_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        least_squares_slope([1.0, 2.0, 3.0], [1.0, 2.0])
