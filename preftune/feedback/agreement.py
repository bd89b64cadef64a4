"""Agreement statistics of pairwise ratings: pure functions over numpy arrays, one entry per rating.

- `krippendorff_alpha_binary`: inter-annotator agreement beyond chance (nominal, two values);
- `consensus_log_odds`: the Dawid-Skene log-odds of an item from the *other* ratings only
  (leave one rating out, or leave the rater's whole group out), the reference against which
  each rater's agreement, fatigue and length bias are measured;
- `slope_with_se`: a least-squares slope and its standard error (bootstrap or robust);
- `length_excess`: length bias with the quality signal taken out by the consensus;
- `group_divergence`: do raters of one group agree with each other more than across groups
  (a permutation test over annotators' group labels);
- `wilson_interval`, `proportion_z_test`: intervals and tests of a share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share; (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / n
    center = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


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
    item_index: np.ndarray, evidence: np.ndarray, prior: float, block: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each rating r, the log-odds that its item's "a" wins given only the ratings of that item
    outside r's block, and how many such ratings there are: ((R,) float64, (R,) int64).

    `evidence` (R,) is each vote's log-odds (`dawid_skene.vote_log_odds`); `block` (R,) ints say
    which ratings to leave out together: `np.arange(R)` leaves out just the rating itself, a
    group id per rating leaves out the rater's whole group.
    """
    num_items = int(item_index.max()) + 1
    item_total = np.bincount(item_index, evidence, num_items)
    item_count = np.bincount(item_index, minlength=num_items)
    _, cell = np.unique(np.stack([item_index, block]), axis=1, return_inverse=True)
    cell = cell.reshape(-1)  # (R,) index of the (item, block) cell
    cell_total = np.bincount(cell, evidence)
    cell_count = np.bincount(cell)
    log_odds = math.log(prior / (1 - prior)) + item_total[item_index] - cell_total[cell]
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
    dx = x - x.mean()
    sxx = (dx * dx).sum()
    if len(x) < 3 or sxx <= 0:
        return math.nan, math.nan, math.nan
    slope = float((dx * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    if num_bootstrap > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        picks = rng.integers(0, len(x), size=(num_bootstrap, len(x)))  # (B, n)
        xb, yb = x[picks], y[picks]
        dxb = xb - xb.mean(axis=1, keepdims=True)
        sxxb = (dxb * dxb).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            slopes = (dxb * (yb - yb.mean(axis=1, keepdims=True))).sum(axis=1) / sxxb
        return slope, float(np.nanstd(slopes, ddof=1)), intercept
    residuals = y - intercept - slope * x
    return slope, float(math.sqrt((dx * dx * residuals * residuals).sum()) / sxx), intercept


@dataclass(frozen=True)
class LengthExcess:
    """Length bias measured against a consensus (see `length_excess`)."""

    excess: float
    """P(chose longer | consensus: shorter is better) - P(chose shorter | consensus: longer is better)."""
    se: float
    longer_when_shorter_better: float
    num_shorter_better: int
    shorter_when_longer_better: float
    num_longer_better: int


def length_excess(chose_longer: np.ndarray, consensus_longer: np.ndarray) -> LengthExcess:
    """How much more a rater errs towards the longer response than towards the shorter one.

    `chose_longer` and `consensus_longer` (R,) are 1/0 per rating (NaN rows are left out):
    did the rater, and does the consensus, prefer the longer response. A rater who disagrees
    with the consensus at the same rate whichever response is longer has excess 0, however
    noisy; a rater who likes length errs towards the longer one more often (excess > 0).
    Raw "chosen is longer" shares cannot tell that apart from longer responses being better.
    """
    keep = ~(np.isnan(chose_longer) | np.isnan(consensus_longer))
    chose, says = chose_longer[keep], consensus_longer[keep]
    shorter_better, longer_better = chose[says == 0], chose[says == 1]
    n1, n2 = len(shorter_better), len(longer_better)
    if n1 == 0 or n2 == 0:
        return LengthExcess(math.nan, math.nan, math.nan, n1, math.nan, n2)
    p1, p2 = float(shorter_better.mean()), float(1 - longer_better.mean())
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return LengthExcess(p1 - p2, se, p1, n1, p2, n2)


@dataclass(frozen=True)
class GroupDivergence:
    """Within- against between-group agreement of pairs of ratings of one item."""

    within: float
    """Share of agreeing pairs among pairs of ratings by two annotators of the same group."""
    between: float
    """Same, for pairs of ratings by annotators of different groups."""
    statistic: float
    """within - between."""
    p_value: float
    """Share of group relabellings (and the observed one) with a statistic at least as large."""
    num_within: int
    num_between: int


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
    num_permutations: int,
    rng: np.random.Generator,
) -> GroupDivergence:
    """Do groups prefer systematically different responses? Compare how often two ratings of one
    item agree when their raters share a group (within) and when they do not (between).

    `rater` (R,) indexes the annotator of each rating, `rater_group` (A,) the group of each
    annotator. Under the null (groups are exchangeable labels), shuffling `rater_group` over
    annotators leaves the statistic's distribution unchanged, so the p-value is the share of
    `num_permutations` shuffles (plus the observed labels) reaching the observed statistic.
    Annotator noise, item difficulty and which items each rater saw are kept as they are.
    """
    first, second = rating_pairs(item_index, rater)
    agree = (votes[first] == votes[second]).astype(np.float64)

    def statistic(groups: np.ndarray) -> tuple[float, float, int, int]:
        same = groups[rater[first]] == groups[rater[second]]
        n_same, n_diff = int(same.sum()), int((~same).sum())
        if n_same == 0 or n_diff == 0:
            return math.nan, math.nan, n_same, n_diff
        return float(agree[same].mean()), float(agree[~same].mean()), n_same, n_diff

    within, between, n_within, n_between = statistic(rater_group)
    observed = within - between
    if math.isnan(observed):
        return GroupDivergence(within, between, observed, math.nan, n_within, n_between)
    reached = 1
    for _ in range(num_permutations):
        w, b, _, _ = statistic(rng.permutation(rater_group))
        reached += int(w - b >= observed - 1e-12)
    return GroupDivergence(within, between, observed, reached / (num_permutations + 1), n_within, n_between)
