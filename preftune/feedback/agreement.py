"""Agreement statistics of pairwise ratings: pure functions over numpy arrays, one entry per rating.

- `krippendorff_alpha_binary`: inter-annotator agreement beyond chance (nominal, two values);
- `consensus_log_odds`: the Dawid-Skene log-odds of an item from the *other* ratings only
  (leave the rater's ratings out, or the rater's whole group), the reference against which
  each rater's agreement, fatigue and length bias are measured;
- `longer_prior`: P(the longer response is truly better), fitted to the ratings by EM;
- `slope_with_se`: a least-squares slope (`stats.least_squares_slope`) and its standard error
  (bootstrap or robust);
- `length_excess`: length bias against what an unbiased rater with the same flip rate would do;
- `group_divergence`: do raters of one group agree with each other more than across groups,
  beyond what their flip rates explain (a permutation test over annotators' group labels);
- `proportion_z_test`: a test of a share (its Wilson interval is `preftune.stats.wilson_interval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from preftune.stats import least_squares_slope


def proportion_z_test(successes: float, n: float, null: float = 0.5) -> tuple[float, float]:
    """(z, two-sided p) of the share successes / n against `null` (normal approximation);
    (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    z = (successes / n - null) / math.sqrt(null * (1 - null) / n)
    return z, two_sided_p(z)


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def bonferroni_z(num_tests: int, significance: float = 0.05) -> float:
    """The two-sided normal critical value that keeps the family-wise error of `num_tests` tests
    at `significance` (1.96 for one test at 0.05, 2.87 for 12)."""
    return NormalDist().inv_cdf(1 - significance / (2 * max(num_tests, 1)))


def detectable_effect(se: float, threshold: float, power: float = 0.8) -> float:
    """The smallest true effect whose estimate (normal, standard error `se`) exceeds `threshold` with
    probability `power`: threshold + z_power * se, z_power the `power` quantile of the standard normal
    (0.84 for 80%). A test that flags an estimate beyond max(z * se, a minimum effect) detects, with that
    power, true effects of at least detectable_effect(se, max(z * se, minimum effect)). NaN when `se` is."""
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}.")
    return threshold + NormalDist().inv_cdf(power) * se


def krippendorff_alpha_binary(item_index: np.ndarray, votes: np.ndarray) -> float:
    """Krippendorff's alpha for nominal data with two values, over items with >= 2 ratings.

    With m_u ratings of item u, of which n1_u are 1 and n0_u are 0, the coincidence matrix
    counts each ordered pair of ratings of an item with weight 1 / (m_u - 1):
        o_01 = o_10 = sum_u n0_u n1_u / (m_u - 1),   n_c = sum_k o_ck,   n = n_0 + n_1,
        D_o = (o_01 + o_10) / n,   D_e = 2 n_0 n_1 / (n (n - 1)),   alpha = 1 - D_o / D_e
            = 1 - (n - 1) * sum_u [n0_u n1_u / (m_u - 1)] / (n_0 n_1).
    NaN when no item has two ratings or all those ratings have one value.
    """
    m = np.bincount(item_index)
    ones = np.bincount(item_index, weights=votes.astype(np.float64), minlength=len(m))
    pairable = m >= 2
    m, ones = m[pairable].astype(np.float64), ones[pairable]
    zeros = m - ones
    n, n1 = m.sum(), ones.sum()
    n0 = n - n1
    if n < 2 or n0 == 0 or n1 == 0:
        return math.nan
    disagreement = (zeros * ones / (m - 1)).sum()
    return float(1 - (n - 1) * disagreement / (n0 * n1))


def consensus_log_odds(
    item_index: np.ndarray, evidence: np.ndarray, block: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each rating r, the log-odds that its item's "a" wins given only the ratings of that item
    outside r's block, and how many such ratings there are: ((R,) float64, (R,) int64).

    `evidence` (R,) is each vote's log-odds (`dawid_skene.vote_log_odds`); `block` (R,) ints say
    which ratings to leave out together: an annotator id per rating leaves out the rater's own
    ratings (a repeat rating of an item by the same rater is not "the others"), a group id per
    rating the rater's whole group. The prior is 0.5 (log-odds 0): which response is "a" is
    arbitrary, so an item whose other ratings are exactly split gets log-odds 0.
    """
    num_items = int(item_index.max()) + 1
    item_total = np.bincount(item_index, evidence, num_items)
    item_count = np.bincount(item_index, minlength=num_items)
    _, cell = np.unique(np.stack([item_index, block]), axis=1, return_inverse=True)
    cell = cell.reshape(-1)  # (R,) index of the (item, block) cell
    cell_total = np.bincount(cell, evidence)
    cell_count = np.bincount(cell)
    log_odds = item_total[item_index] - cell_total[cell]
    return log_odds, item_count[item_index] - cell_count[cell]


def slope_with_se(
    x: np.ndarray, y: np.ndarray, num_bootstrap: int = 0, rng: np.random.Generator | None = None
) -> tuple[float, float, float]:
    """Least-squares fit y = intercept + slope * x: (slope, standard error, intercept).

    The error is the standard deviation of the slope over `num_bootstrap` resamples of the
    (x, y) pairs, or, when num_bootstrap == 0, the heteroscedasticity-robust (HC0) formula
    sqrt(sum((x - mean x)^2 e^2)) / sum((x - mean x)^2). NaNs when x has no spread.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return math.nan, math.nan, math.nan
    dx = x - x.mean()
    sxx = (dx * dx).sum()
    if sxx <= 0:
        return math.nan, math.nan, math.nan
    slope = float(least_squares_slope(x, y))
    intercept = float(y.mean() - slope * x.mean())
    if num_bootstrap > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        picks = rng.integers(0, len(x), size=(num_bootstrap, len(x)))  # (B, n)
        slopes = least_squares_slope(x[picks], y[picks])  # (B,), NaN for a resample without spread
        return slope, float(np.nanstd(slopes, ddof=1)), intercept
    residuals = y - intercept - slope * x
    return slope, float(math.sqrt((dx * dx * residuals * residuals).sum()) / sxx), intercept


def longer_prior(item_index: np.ndarray, longer_evidence: np.ndarray, max_iter: int = 200) -> float:
    """P(the longer response of an item is truly better), the EM fixed point of
    pi = (sum_i P(longer wins | item i's ratings, pi) + 1) / (I + 2) over the items rated here.

    `longer_evidence` (R,) is each vote's log-odds oriented to "the longer response wins" (NaN rows,
    e.g. responses of equal length, are left out). 0.5 when no rating is left. Unlike the
    arbitrary "a", which response is longer is a property of the item, and longer answers are
    often better: an unbiased rater's expected share of longer choices depends on it.
    """
    keep = ~np.isnan(longer_evidence)
    if not keep.any():
        return 0.5
    _, item = np.unique(item_index[keep], return_inverse=True)
    total = np.bincount(item.reshape(-1), longer_evidence[keep])  # (I,) summed evidence per item
    prior = 0.5
    for _ in range(max_iter):
        posterior = 1 / (1 + np.exp(-(math.log(prior / (1 - prior)) + total)))
        new_prior = float((posterior.sum() + 1) / (len(total) + 2))
        if abs(new_prior - prior) < 1e-9:
            return new_prior
        prior = new_prior
    return prior


@dataclass(frozen=True)
class LengthExcess:
    """Length bias against an unbiased rater's expectation (see `length_excess`)."""

    excess: float
    """Share of the rater's verdicts given to the longer response whatever its quality (< 0: to the shorter)."""
    se: float
    chose_longer: float
    """Share of the rater's ratings that chose the longer response."""
    expected_longer: float
    """Same, expected of an unbiased rater with the rater's flip rate, given the others' ratings."""
    num: int


def length_excess(
    chose_longer: np.ndarray, longer_log_odds: np.ndarray, flip_rate: np.ndarray
) -> LengthExcess:
    """How much more often a rater chooses the longer response than an unbiased rater would.

    All arguments are (R,), NaN rows are left out. `chose_longer` is 1/0 per rating;
    `longer_log_odds` the log-odds that the longer response is truly better given the other
    ratings of the item (with the prior `longer_prior`); `flip_rate` the rater's flip rate f.
    With q = sigmoid(longer_log_odds), an unbiased rater chooses the longer one with probability
        E = (1 - f) q + f (1 - q),
    however noisy the rater and however often longer answers are better. A rater who gives a share
    L of verdicts to the longer response regardless chooses it with probability E + L (1 - E), so
        excess = sum(chose - E) / sum(1 - E)
    estimates L (and sum(chose - E) / sum(E) the share S given to the shorter one, reported as -S,
    when the rater chooses the longer less often than expected). The standard error is the
    ratio estimator's (delta method), a normal approximation.
    """
    keep = ~(np.isnan(chose_longer) | np.isnan(longer_log_odds) | np.isnan(flip_rate))
    chose, f = chose_longer[keep], np.clip(flip_rate[keep], 0.0, 1.0)
    n = len(chose)
    if n == 0:
        return LengthExcess(math.nan, math.nan, math.nan, math.nan, 0)
    q = 1 / (1 + np.exp(-longer_log_odds[keep]))
    expected = (1 - f) * q + f * (1 - q)  # (n,) an unbiased rater's P(chose longer)
    residual = chose - expected
    room = 1 - expected if residual.sum() >= 0 else expected  # what a bias towards one side can take
    if room.sum() <= 0:
        return LengthExcess(math.nan, math.nan, float(chose.mean()), float(expected.mean()), n)
    excess = float(residual.sum() / room.sum())
    se = math.sqrt(float(((residual - excess * room) ** 2).mean()) / n) / float(room.mean())
    return LengthExcess(excess, se, float(chose.mean()), float(expected.mean()), n)


@dataclass(frozen=True)
class GroupDivergence:
    """Within- against between-group agreement of pairs of ratings of one item, beyond chance."""

    within: float
    """Share of agreeing pairs among pairs of ratings by two annotators of the same group."""
    between: float
    """Same, for pairs of ratings by annotators of different groups."""
    within_expected: float
    """Mean agreement the raters' flip rates predict for the within pairs, (1 - f_i)(1 - f_j) + f_i f_j."""
    between_expected: float
    """Same, for the between pairs."""
    statistic: float
    """(within - within_expected) - (between - between_expected)."""
    p_value: float
    """Share of group relabellings (and the observed one) with a statistic at least as large; NaN
    without relabellings."""
    num_within: int
    num_between: int
    null_std: float = math.nan
    """Standard deviation of the statistic over the group relabellings: its standard error when groups do
    not matter, which sets the smallest excess agreement the test can detect."""


def rating_pairs(item_index: np.ndarray, rater: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i < j, of ratings of the same item by different raters: two (P,) arrays."""
    order = np.argsort(item_index, kind="stable")
    sorted_items = item_index[order]
    starts = np.flatnonzero(np.r_[True, sorted_items[1:] != sorted_items[:-1]])
    ends = np.r_[starts[1:], len(order)]
    firsts, seconds = [], []
    for start, end in zip(starts, ends, strict=True):
        members = order[start:end]
        if len(members) < 2:
            continue
        i, j = np.triu_indices(len(members), k=1)
        firsts.append(members[i])
        seconds.append(members[j])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    distinct = rater[first] != rater[second]
    return first[distinct], second[distinct]


def group_divergence(
    item_index: np.ndarray,
    votes: np.ndarray,
    rater: np.ndarray,
    rater_group: np.ndarray,
    flip_rate: np.ndarray,
    num_permutations: int,
    rng: np.random.Generator,
) -> GroupDivergence:
    """Do groups prefer systematically different responses? Compare how often two ratings of one
    item agree, beyond what the raters' flip rates predict, when their raters share a group
    (within) and when they do not (between).

    `rater` (R,) indexes the annotator of each rating, `rater_group` (A,) the group and
    `flip_rate` (A,) the Dawid-Skene flip rate of each annotator. Two raters who share the truth
    agree with probability (1 - f_i)(1 - f_j) + f_i f_j; the statistic compares the residual
    agreement (observed minus that) within and between groups, so a group of accurate raters
    and a group of noisy ones that share one notion of quality do not look divergent. Under the
    null (groups are exchangeable labels), shuffling `rater_group` over annotators leaves the
    statistic's distribution unchanged, so the p-value is the share of `num_permutations`
    shuffles (plus the observed labels) reaching the observed statistic. Annotator noise, item
    difficulty and which items each rater saw are kept as they are.
    """
    first, second = rating_pairs(item_index, rater)
    agree = (votes[first] == votes[second]).astype(np.float64)  # (P,)
    f_i, f_j = flip_rate[rater[first]], flip_rate[rater[second]]
    expected = (1 - f_i) * (1 - f_j) + f_i * f_j  # (P,)
    residual = agree - expected

    def statistic(groups: np.ndarray) -> tuple[float, float, np.ndarray]:
        same = groups[rater[first]] == groups[rater[second]]
        if same.all() or not same.any():
            return math.nan, math.nan, same
        return float(residual[same].mean()), float(residual[~same].mean()), same

    within, between, same = statistic(rater_group)
    observed = within - between
    n_within, n_between = int(same.sum()), int((~same).sum())
    if math.isnan(observed):
        return GroupDivergence(
            math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, n_within, n_between
        )
    shares = (
        float(agree[same].mean()),
        float(agree[~same].mean()),
        float(expected[same].mean()),
        float(expected[~same].mean()),
    )
    if num_permutations == 0:
        return GroupDivergence(*shares, observed, math.nan, n_within, n_between)
    null = []
    for _ in range(num_permutations):
        w, b, _ = statistic(rng.permutation(rater_group))
        null.append(w - b)
    null_values = np.array(null, dtype=np.float64)
    reached = 1 + int((null_values >= observed - 1e-12).sum())  # NaN (one group drawn) never reaches
    spread = float(np.nanstd(null_values)) if np.isfinite(null_values).sum() >= 2 else math.nan
    return GroupDivergence(
        *shares, observed, reached / (num_permutations + 1), n_within, n_between, null_std=spread
    )
