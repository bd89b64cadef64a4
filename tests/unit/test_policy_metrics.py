"""Policy evaluation metrics (preftune/eval/policy_metrics.py) against hand-computed values."""

import math

import numpy as np
import pytest

from preftune.eval.policy_metrics import (
    _LC_L2_PENALTY,
    _fit_penalized_logistic,
    distinct_n,
    length_controlled_win_rate,
    length_controlled_win_rate_ci,
    mean_ci,
    paired_bootstrap_ci,
    sequence_kl,
    win_rate,
    win_rate_ci,
)
from preftune.eval.stats import bootstrap_mean_ci


def _length_only_judge_data():
    """50 prompts where the judge prefers the longer response and nothing else matters.

    Length differences d: +2 (15 prompts), +8 (15), -3 (10), 0 (10). Outcome = sign(d): the longer
    response wins, equal lengths tie. Plain win rate (30 + 0.5 * 10) / 50 = 0.7.
    """
    length_diffs = np.array([2] * 15 + [8] * 15 + [-3] * 10 + [0] * 10, dtype=float)
    baseline_lengths = np.full(50, 20.0)
    scores = np.sign(length_diffs)  # 1 win, -1 loss, 0 tie against a baseline score of 0
    return scores, np.zeros(50), baseline_lengths + length_diffs, baseline_lengths


# --- win_rate ----------------------------------------------------------------------------------------


def test_win_rate_counts_ties_half():
    """(1, 2, 3, 3) vs (0, 2, 4, 3): win, tie, loss, tie -> (1 + 0.5 + 0 + 0.5) / 4 = 0.5."""
    assert win_rate([1.0, 2.0, 3.0, 3.0], [0.0, 2.0, 4.0, 3.0]) == 0.5


def test_win_rate_is_paired_by_prompt():
    """(3, 1, 2, 5, 0) vs (1, 1, 4, 2, 0): win, tie, loss, win, tie -> (2 + 2 * 0.5) / 5 = 0.6.

    Comparing every policy score with every baseline score instead would give 13 / 25 = 0.52.
    """
    assert win_rate([3.0, 1.0, 2.0, 5.0, 0.0], [1.0, 1.0, 4.0, 2.0, 0.0]) == pytest.approx(0.6, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_win_rate_is_symmetric(seed):
    rng = np.random.default_rng(seed)
    scores, baseline_scores = rng.integers(0, 4, size=(2, 37)).astype(float)  # many ties
    assert win_rate(scores, baseline_scores) + win_rate(baseline_scores, scores) == pytest.approx(
        1.0, abs=1e-12
    )


@pytest.mark.parametrize(
    ("scores", "baseline_scores", "message"),
    [
        ([], [], "scores is empty"),
        ([1.0, math.nan], [0.0, 0.0], r"scores has 1 non-finite value\(s\), first nan at index 1"),
        ([[1.0, 2.0]], [[0.0, 0.0]], r"scores must be 1-D .* got shape \(1, 2\)"),
        ([1.0, 2.0], [0.0], r"got lengths \{'scores': 2, 'baseline_scores': 1\}"),
    ],
)
def test_win_rate_rejects_bad_input(scores, baseline_scores, message):
    with pytest.raises(ValueError, match=message):
        win_rate(scores, baseline_scores)


# --- paired_bootstrap_ci -----------------------------------------------------------------------------


def test_paired_bootstrap_keeps_pairs_together():
    """b = a + 1 on every prompt, so mean(a - b) is -1 on every paired resample: interval (-1, -1).

    Resampling a and b with independent indices would spread the interval over several units.
    """
    values_a = np.random.default_rng(0).normal(0.0, 5.0, size=40)
    low, high = paired_bootstrap_ci(values_a, values_a + 1.0, lambda a, b: float(np.mean(a - b)))
    assert (low, high) == pytest.approx((-1.0, -1.0), abs=1e-12)


def test_paired_bootstrap_resamples_rows_of_2d_values():
    """Rows (x, 2x) stay rows: mean(col 1 - 2 * col 0) + mean(col 0 - b) is 0 on every resample."""
    x = np.arange(10.0)
    low, high = paired_bootstrap_ci(
        np.column_stack((x, 2 * x)),
        x,
        lambda a, b: float(np.mean(a[:, 1] - 2 * a[:, 0]) + np.mean(a[:, 0] - b)),
    )
    assert (low, high) == (0.0, 0.0)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    values_a, values_b = rng.normal(size=(2, 30))

    def mean_difference(a, b):
        return float(np.mean(a - b))

    first = paired_bootstrap_ci(values_a, values_b, mean_difference, num_resamples=300, seed=7)
    assert paired_bootstrap_ci(values_a, values_b, mean_difference, num_resamples=300, seed=7) == first
    assert paired_bootstrap_ci(values_a, values_b, mean_difference, num_resamples=300, seed=8) != first


def test_paired_bootstrap_of_one_prompt_is_a_point():
    """With N = 1 every resample is the original prompt, so both ends equal the statistic."""
    assert paired_bootstrap_ci([3.0], [1.0], lambda a, b: float(a[0] - b[0])) == (2.0, 2.0)


def test_paired_bootstrap_widens_with_confidence():
    rng = np.random.default_rng(2)
    values_a, values_b = rng.normal(size=(2, 50))
    narrow = paired_bootstrap_ci(values_a, values_b, win_rate, confidence=0.8, num_resamples=500)
    wide = paired_bootstrap_ci(values_a, values_b, win_rate, confidence=0.99, num_resamples=500)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_paired_bootstrap_rejects_a_statistic_that_is_not_finite():
    with pytest.raises(ValueError, match=r"statistic returned a non-finite value \(nan\) on 20 of 20"):
        paired_bootstrap_ci([1.0, 2.0], [0.0, 1.0], lambda a, b: math.nan, num_resamples=20)


@pytest.mark.parametrize(
    ("values_a", "values_b", "kwargs", "message"),
    [
        ([1.0, 2.0], [1.0], {}, r"got lengths \{'values_a': 2, 'values_b': 1\}"),
        ([], [], {}, r"values_a must have shape \(N,\) or \(N, K\) with N >= 1 prompts, got shape \(0,\)"),
        (1.0, 1.0, {}, r"values_a must have shape .* got shape \(\)"),
        ([1.0], [1.0], {"confidence": 1.0}, r"confidence must be in \(0, 1\), got 1.0"),
        ([1.0], [1.0], {"num_resamples": 0}, "num_resamples must be an integer >= 1, got 0"),
        ([1.0], [1.0], {"num_resamples": 10.5}, "num_resamples must be an integer >= 1, got 10.5"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(values_a, values_b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_ci(values_a, values_b, win_rate, **kwargs)


# --- win_rate_ci -------------------------------------------------------------------------------------


def test_win_rate_ci_contains_the_estimate_and_narrows_with_more_data():
    """Repeating the 20 prompts 10 times shrinks the bootstrap spread by about sqrt(10) ~= 3.2."""
    rng = np.random.default_rng(3)
    scores, baseline_scores = rng.integers(0, 5, size=(2, 20)).astype(float)
    point, (low, high) = win_rate_ci(scores, baseline_scores)
    assert point == win_rate(scores, baseline_scores)
    assert low < point < high
    big_point, (big_low, big_high) = win_rate_ci(np.tile(scores, 10), np.tile(baseline_scores, 10))
    assert big_point == pytest.approx(point, abs=1e-12)
    assert big_low < big_point < big_high
    assert big_high - big_low < 0.5 * (high - low)


def test_win_rate_ci_width_matches_the_normal_approximation():
    """300 wins and 100 losses: p = 0.75, bootstrap sd ~= sqrt(p (1 - p) / 400) = 0.02165, so the 95%
    interval spans ~= 2 * 1.96 * 0.02165 = 0.0849. 2000 resamples estimate it within a few percent; 10%.
    """
    scores = np.array([1.0] * 300 + [0.0] * 100)
    point, (low, high) = win_rate_ci(scores, np.full(400, 0.5))
    assert point == 0.75
    assert high - low == pytest.approx(2 * 1.959964 * math.sqrt(0.75 * 0.25 / 400), rel=0.1)
    assert (low + high) / 2 == pytest.approx(0.75, abs=0.01)


def test_win_rate_ci_of_all_wins_is_a_point():
    assert win_rate_ci([2.0, 3.0, 4.0], [1.0, 1.0, 1.0]) == (1.0, (1.0, 1.0))


# --- length_controlled_win_rate ----------------------------------------------------------------------


def test_lc_win_rate_reads_the_fit_at_zero_length_difference():
    """Two length groups make the logistic model saturated (two parameters, two groups), so the fit
    passes through both groups' empirical logits and sigmoid(a) is their linear interpolation at d = 0.

    d = +3 on 4 prompts with 3 wins (logit ln 3); d = -1 on 2 prompts, a win and a loss (logit 0).
    At d = 0, a quarter of the way from -1 to 3: a = ln(3) / 4, LC = 1 / (1 + 3^(-1/4)) = 0.568235.
    Plain win rate (3 + 1) / 6 = 0.667. The penalty (1e-3 against a curvature of ~1.5) moves LC by
    ~1e-5, hence abs=1e-4.
    """
    scores = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    baseline_scores = [0.5] * 6
    lengths = [13, 13, 13, 13, 9, 9]
    baseline_lengths = [10, 10, 10, 10, 10, 10]
    assert win_rate(scores, baseline_scores) == pytest.approx(4 / 6)
    expected = 1 / (1 + 3 ** (-0.25))
    assert length_controlled_win_rate(scores, baseline_scores, lengths, baseline_lengths) == pytest.approx(
        expected, abs=1e-4
    )


def test_lc_win_rate_counts_a_tie_as_half_a_win_and_half_a_loss():
    """As above with the d = -1 group a single tie (target 1/2, logit 0): same interpolation, 0.568235.

    Counting the tie as a loss (or a win) would drive that group's logit towards -inf (+inf) and give
    LC = 0.020 (0.988).
    """
    scores = [1.0, 1.0, 1.0, 0.0, 0.5]
    lengths = [13, 13, 13, 13, 9]
    lc = length_controlled_win_rate(scores, [0.5] * 5, lengths, [10] * 5)
    assert lc == pytest.approx(1 / (1 + 3 ** (-0.25)), abs=1e-4)


def test_lc_win_rate_removes_a_pure_length_preference():
    """Judge prefers the longer response and the policy is usually longer: plain 0.7, LC ~= 0.5.

    The ties at d = 0 pin the curve at 0.5 there. The data are otherwise separable, so the slope b grows
    until the penalty stops it (b ~= 13 here); the separated prompts then leave residuals summing to at
    most 1e-3 * b / min|d / s| ~= 0.026, which the 10 ties absorb: |LC - 0.5| <= that / 10 ~= 0.003.
    Tolerance 0.01.
    """
    scores, baseline_scores, lengths, baseline_lengths = _length_only_judge_data()
    assert win_rate(scores, baseline_scores) == pytest.approx(0.7)
    lc = length_controlled_win_rate(scores, baseline_scores, lengths, baseline_lengths)
    assert lc == pytest.approx(0.5, abs=0.01)


def test_lc_win_rate_removes_a_noisy_length_preference():
    """4000 prompts, P(win) = sigmoid(2 d / s) with d ~ N(30, 40): the judge looks at length only and
    the policy is longer on average, so plain ~= 0.71. Fisher standard error of LC here:
    0.25 * sqrt([I^-1]_aa) ~= 0.012; tolerance 0.05 is 4 standard errors.
    """
    rng = np.random.default_rng(0)
    baseline_lengths = np.full(4000, 200.0)
    lengths = np.clip(np.round(baseline_lengths + rng.normal(30.0, 40.0, size=4000)), 0, None)
    length_diffs = lengths - baseline_lengths
    wins = rng.random(4000) < 1 / (1 + np.exp(-2 * length_diffs / length_diffs.std()))
    scores = wins.astype(float)
    baseline_scores = np.full(4000, 0.5)
    assert win_rate(scores, baseline_scores) > 0.68
    assert length_controlled_win_rate(scores, baseline_scores, lengths, baseline_lengths) == pytest.approx(
        0.5, abs=0.05
    )


def test_lc_win_rate_equals_plain_when_outcomes_ignore_length():
    """Wins and losses see the same length differences (-3, 1, 5): wins thrice, losses once.

    Then sum_i (t_i - p) x_i = 0 at b = 0, so the fit has b = 0 and sigmoid(a) = mean(t) = 0.75, up to
    the penalty: 12 (0.75 - sigmoid(a)) = 1e-3 * a with a ~= 1.1, a shift of ~1e-4 in LC.
    """
    length_diffs = np.array([-3, 1, 5] * 4, dtype=float)
    scores = np.array([1.0] * 9 + [0.0] * 3)
    baseline_lengths = np.full(12, 10.0)
    lc = length_controlled_win_rate(
        scores, np.full(12, 0.5), baseline_lengths + length_diffs, baseline_lengths
    )
    assert lc == pytest.approx(0.75, abs=3e-4)


def test_lc_win_rate_with_equal_lengths_is_the_plain_win_rate():
    """All d = 0 (s falls back to 1): only the intercept matters, sigmoid(a) = (2 + 0.5) / 4."""
    lc = length_controlled_win_rate([1.0, 1.0, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5], [7, 7, 7, 7], [7, 7, 7, 7])
    assert lc == pytest.approx(0.625, abs=3e-4)


def test_lc_win_rate_is_stable_on_separable_data():
    """All wins: the unpenalised fit would send a to +inf. With the penalty 4 e^-a ~= 1e-3 a, a ~= 6.4."""
    lengths, baseline_lengths = [5, 3, 9, 2], [4, 4, 4, 4]
    with np.errstate(all="raise"):
        all_wins = length_controlled_win_rate([1.0] * 4, [0.0] * 4, lengths, baseline_lengths)
        all_losses = length_controlled_win_rate([0.0] * 4, [1.0] * 4, lengths, baseline_lengths)
    assert math.isfinite(all_wins) and 0.99 < all_wins < 1.0
    assert math.isfinite(all_losses) and 0.0 < all_losses < 0.01
    many_wins = length_controlled_win_rate(
        np.ones(1000), np.zeros(1000), np.arange(1000) % 7, np.full(1000, 3)
    )
    assert 0.9999 < many_wins < 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lc_fit_is_the_stationary_point_of_the_penalized_likelihood(seed):
    """The objective is strictly concave, so its maximiser is where the gradient
    X^T (t - sigmoid(X theta)) - l2 theta vanishes; heavy-tailed x and soft targets (ties) included.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_cauchy(80)
    x = x / x.std()
    targets = rng.integers(0, 3, size=80) / 2
    intercept, slope = _fit_penalized_logistic(x, targets, _LC_L2_PENALTY)
    design = np.column_stack((np.ones(80), x))
    probs = 1 / (1 + np.exp(-(design @ np.array([intercept, slope]))))
    gradient = design.T @ (targets - probs) - _LC_L2_PENALTY * np.array([intercept, slope])
    np.testing.assert_allclose(gradient, 0.0, atol=1e-8)


def test_lc_win_rate_of_all_ties_is_one_half():
    assert length_controlled_win_rate([1.0] * 5, [1.0] * 5, [1, 5, 9, 2, 30], [4] * 5) == pytest.approx(0.5)


def test_lc_win_rate_is_symmetric_and_ignores_the_length_unit():
    """Swapping policy and baseline flips the targets and d, so (a, b) -> (-a, -b) and LC -> 1 - LC.
    d / s does not change when lengths are counted in characters (x4) instead of tokens.
    """
    rng = np.random.default_rng(4)
    scores, baseline_scores = rng.integers(0, 3, size=(2, 60)).astype(float)
    lengths, baseline_lengths = rng.integers(5, 80, size=(2, 60)).astype(float)
    lc = length_controlled_win_rate(scores, baseline_scores, lengths, baseline_lengths)
    swapped = length_controlled_win_rate(baseline_scores, scores, baseline_lengths, lengths)
    assert lc + swapped == pytest.approx(1.0, abs=1e-9)
    in_characters = length_controlled_win_rate(scores, baseline_scores, 4 * lengths, 4 * baseline_lengths)
    assert in_characters == pytest.approx(lc, abs=1e-9)


def test_lc_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="baseline_lengths must be >= 0, got minimum -2.0"):
        length_controlled_win_rate([1.0], [0.0], [3], [-2])
    with pytest.raises(ValueError, match=r"got lengths .*'lengths': 1"):
        length_controlled_win_rate([1.0, 2.0], [0.0, 0.0], [3], [4, 4])
    with pytest.raises(ValueError, match="lengths has 1 non-finite"):
        length_controlled_win_rate([1.0], [0.0], [math.inf], [4])


# --- length_controlled_win_rate_ci -------------------------------------------------------------------


def test_lc_ci_excludes_the_length_bias_that_the_plain_ci_keeps():
    """On the length-only data the plain interval sits around 0.7 and excludes 0.5; the length-controlled
    one contains its estimate and stays within the penalty's 0.01 of 0.5 (see the test above): a resample
    lacks the ties at d = 0 with probability 0.8^50 ~= 1e-5.
    """
    data = _length_only_judge_data()
    plain, (plain_low, plain_high) = win_rate_ci(data[0], data[1], num_resamples=300)
    assert 0.5 < plain_low < plain < plain_high
    lc, (low, high) = length_controlled_win_rate_ci(*data, num_resamples=300)
    assert lc == length_controlled_win_rate(*data)
    assert 0.49 < low <= lc <= high < 0.51


def test_lc_ci_is_deterministic_and_narrows_with_more_data():
    rng = np.random.default_rng(5)
    scores, baseline_scores = rng.normal(size=(2, 30))
    lengths, baseline_lengths = rng.integers(5, 80, size=(2, 30)).astype(float)
    first = length_controlled_win_rate_ci(
        scores, baseline_scores, lengths, baseline_lengths, num_resamples=200
    )
    again = length_controlled_win_rate_ci(
        scores, baseline_scores, lengths, baseline_lengths, num_resamples=200
    )
    assert first == again
    lc, (low, high) = first
    assert low < lc < high
    big = [np.tile(values, 8) for values in (scores, baseline_scores, lengths, baseline_lengths)]
    big_lc, (big_low, big_high) = length_controlled_win_rate_ci(*big, num_resamples=200)
    assert big_lc == pytest.approx(lc, abs=1e-3)
    assert big_high - big_low < 0.6 * (high - low)


# --- sequence_kl -------------------------------------------------------------------------------------


def test_sequence_kl_mean_and_standard_error():
    """Log-ratios (0.5, 1.5, -0.5, 2.5): mean 1.0, squared deviations 0.25 + 0.25 + 2.25 + 2.25 = 5,
    sample std sqrt(5 / 3), standard error sqrt(5 / 3) / 2 = sqrt(5 / 12).
    """
    mean, standard_error = sequence_kl([0.5, 1.5, -0.5, 2.5])
    assert mean == 1.0
    assert standard_error == pytest.approx(math.sqrt(5 / 12), abs=1e-15)


def test_sequence_kl_of_one_sample_has_zero_standard_error():
    assert sequence_kl([0.3]) == (0.3, 0.0)


def test_sequence_kl_estimates_the_kl_between_two_gaussians():
    """pi = N(1, 1), pi_ref = N(0, 1): log pi(y) - log pi_ref(y) = y - 1/2, KL = 1/2. With y ~ pi the
    mean is within 4 standard errors of 1/2 (and the standard error is ~= 1 / sqrt(2000)).
    """
    samples = np.random.default_rng(6).normal(1.0, 1.0, size=2000)
    mean, standard_error = sequence_kl(samples - 0.5)
    assert standard_error == pytest.approx(1 / math.sqrt(2000), rel=0.1)
    assert abs(mean - 0.5) < 4 * standard_error


def test_sequence_kl_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="logratios is empty"):
        sequence_kl([])
    with pytest.raises(ValueError, match="logratios has 1 non-finite"):
        sequence_kl([0.1, -math.inf])


# --- mean_ci -----------------------------------------------------------------------------------------


def test_mean_ci_is_the_mean_with_the_stats_bootstrap_interval():
    """Values (1, 2, 3, 6): mean 3; the interval is eval.stats.bootstrap_mean_ci's for the same seed."""
    mean, (low, high) = mean_ci([1.0, 2.0, 3.0, 6.0], confidence=0.9, num_resamples=500, seed=3)
    assert mean == 3.0
    assert (mean, low, high) == bootstrap_mean_ci([1.0, 2.0, 3.0, 6.0], 0.9, 500, 3)
    assert 1.0 <= low < mean < high <= 6.0


def test_mean_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="values has 1 non-finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="num_resamples must be an integer >= 1, got True"):
        mean_ci([1.0], num_resamples=True)


# --- distinct_n --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "n", "expected"),
    [
        (["a b a b"], 2, 2 / 3),  # ab, ba, ab -> 2 distinct of 3
        (["a b a b"], 1, 2 / 4),  # a, b, a, b
        (["a b a b"], 4, 1.0),  # one 4-gram
        (["a b", "b a", "a b"], 2, 2 / 3),  # per text: ab | ba | ab; crossing texts would add bb, aa -> 4/5
        (["a  b\tc\n", "c b"], 1, 3 / 5),  # any whitespace separates words: a b c c b
        (["A a"], 1, 1.0),  # case-sensitive
    ],
)
def test_distinct_n_closed_form(texts, n, expected):
    assert distinct_n(texts, n) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("texts", [[], [""], ["a", "  "], ["one"]])
def test_distinct_n_without_ngrams_is_zero(texts):
    assert distinct_n(texts, 2) == 0.0


def test_distinct_n_rejects_bad_input():
    with pytest.raises(TypeError, match="got one string 'a b'"):
        distinct_n("a b", 1)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got int"):
        distinct_n(["a", 3], 1)  # type: ignore[list-item]
    for n in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n!r}"):
            distinct_n(["a b"], n)  # type: ignore[arg-type]
