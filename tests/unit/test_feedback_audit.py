"""Tests of the feedback audit: statistics on hand-computed cases, Dawid-Skene on simulated panels
with known flip rates, the fatigue / length-bias / clean-panel verdicts, ratings and hygiene.

Simulated panels (`_simulate`) are drawn with numpy and fixed seeds: 12 annotators, 1500 items,
each rated by 3 distinct random annotators (about 375 ratings per annotator), a true winner per
item independent of the responses' lengths.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from preftune.data import DataError, PairExample
from preftune.feedback.agreement import (
    consensus_log_odds,
    group_divergence,
    krippendorff_alpha_binary,
    length_excess,
    proportion_z_test,
    slope_with_se,
)
from preftune.feedback.audit import run_audit
from preftune.feedback.config import AuditConfig
from preftune.feedback.dawid_skene import DawidSkeneResult, dawid_skene, vote_log_odds
from preftune.feedback.hygiene import hygiene_stats, load_audit_pairs, normalize_text, prompt_overlap
from preftune.feedback.rater_audit import AuditThresholds, annotator_audit, length_bias, position_bias
from preftune.feedback.ratings import Ratings, ratings_from_rows

FLIPS = np.linspace(0.05, 0.35, 12)


def _simulate(
    flips: np.ndarray = FLIPS,
    num_items: int = 1500,
    per_item: int = 3,
    fatigue: dict[int, float] | None = None,
    length_group_bias: float = 0.0,
    group_b_disagrees: float = 0.0,
    seed: int = 0,
) -> tuple[Ratings, np.ndarray]:
    """Ratings of a simulated panel, and each item's true winner (1 = "a").

    Annotator j errs with probability flips[j] + fatigue[j] * order / session_length. Annotators
    6..11 form group "B"; with `length_group_bias` = L, a B rater picks the longer response with
    probability L before anything else (so L = 0.3 means 30% of their verdicts are "the longer one").
    On a share `group_b_disagrees` of the items, group B's true winner is the other response.
    """
    rng = np.random.default_rng(seed)
    fatigue = fatigue or {}
    truth = (rng.random(num_items) < 0.5).astype(np.int64)
    a_words, b_words = rng.integers(5, 40, num_items), rng.integers(5, 40, num_items)
    item_index = np.repeat(np.arange(num_items), per_item)
    raters = np.concatenate([rng.choice(len(flips), per_item, replace=False) for _ in range(num_items)])
    order = np.zeros(len(raters))
    session = np.zeros(len(raters))
    for j in range(len(flips)):
        mine = np.flatnonzero(raters == j)
        order[mine] = rng.permutation(len(mine))
        session[mine] = len(mine)
    flip = flips[raters] + np.array([fatigue.get(int(j), 0.0) for j in raters]) * order / session
    in_b = raters >= 6
    b_truth = np.where(rng.random(num_items) < group_b_disagrees, 1 - truth, truth)
    seen = np.where(in_b, b_truth[item_index], truth[item_index])
    votes = np.where(rng.random(len(raters)) < flip, 1 - seen, seen)
    longer_vote = (a_words[item_index] > b_words[item_index]).astype(np.int64)
    biased = (
        in_b & (rng.random(len(raters)) < length_group_bias) & (a_words[item_index] != b_words[item_index])
    )
    votes = np.where(biased, longer_vote, votes)
    ratings = Ratings(
        items=list(range(num_items)),
        item_index=item_index.astype(np.int64),
        votes=votes.astype(np.int64),
        annotators=[f"a{j:02d}" for j in raters],
        groups=["B" if j >= 6 else "A" for j in raters],
        order=order,
        chose_first=-np.ones(len(raters), dtype=np.int64),
        a_words=a_words[item_index].astype(np.int64),
        b_words=b_words[item_index].astype(np.int64),
        rows=np.arange(1, len(raters) + 1),
    )
    return ratings, truth


def _warnings(flags: list[dict[str, str]]) -> list[str]:
    return [flag["finding"] for flag in flags if flag["severity"] == "warning"]


# ----------------------------------------------------------------------------- statistics


def test_proportion_z_test():
    """60 of 100 against 0.5: z = 0.1 / sqrt(0.25 / 100) = 2, two-sided p = erfc(2 / sqrt 2) = 0.0455."""
    z, p = proportion_z_test(60, 100)
    assert z == pytest.approx(2.0) and p == pytest.approx(0.04550, abs=1e-5)


def test_krippendorff_alpha_hand_computed():
    """Items [1, 1], [1, 0], [0, 0, 0]: n = 7, n_1 = 3, n_0 = 4; only item 2 disagrees, with
    n0 n1 / (m - 1) = 1, so alpha = 1 - (n - 1) * 1 / (n_0 n_1) = 1 - 6 / 12 = 0.5."""
    items = np.array([0, 0, 1, 1, 2, 2, 2])
    votes = np.array([1, 1, 1, 0, 0, 0, 0])
    assert krippendorff_alpha_binary(items, votes) == pytest.approx(0.5)
    # single-rated items are not pairable and change nothing
    assert krippendorff_alpha_binary(np.r_[items, 3, 4], np.r_[votes, 1, 0]) == pytest.approx(0.5)
    assert krippendorff_alpha_binary(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_binary(np.array([0, 1]), np.array([1, 0])))


def test_krippendorff_alpha_matches_pairwise_coincidence_loop():
    """The closed form equals the coincidence matrix built by looping over ordered pairs of ratings."""
    rng = np.random.default_rng(3)
    items = np.repeat(np.arange(40), rng.integers(1, 5, 40))
    votes = rng.integers(0, 2, len(items))
    o = np.zeros((2, 2))
    for u in np.unique(items):
        values = votes[items == u]
        if len(values) < 2:
            continue
        for i in range(len(values)):
            for j in range(len(values)):
                if i != j:
                    o[values[i], values[j]] += 1 / (len(values) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    expected = 1 - (o[0, 1] + o[1, 0]) / n / (2 * n_c[0] * n_c[1] / (n * (n - 1)))
    assert krippendorff_alpha_binary(items, votes) == pytest.approx(expected)


def test_consensus_log_odds_leaves_out_the_block():
    """Item 0 has evidence [1, 2, 4], item 1 [8]; with prior 0.5 (log-odds 0), leaving each rating
    out gives [6, 5, 3] and [0] (no others); leaving out group blocks [g0, g0, g1] gives [4, 4, 3]."""
    items = np.array([0, 0, 0, 1])
    evidence = np.array([1.0, 2.0, 4.0, 8.0])
    log_odds, others = consensus_log_odds(items, evidence, np.arange(4))
    np.testing.assert_allclose(log_odds, [6, 5, 3, 0])
    np.testing.assert_array_equal(others, [2, 2, 2, 0])
    log_odds, others = consensus_log_odds(items, evidence, np.array([0, 0, 1, 0]))
    np.testing.assert_allclose(log_odds, [4, 4, 3, 0])
    np.testing.assert_array_equal(others, [1, 1, 2, 0])


def test_slope_with_se():
    """A noiseless line has its slope and zero error; the robust error matches the sandwich formula."""
    x = np.linspace(0, 1, 11)
    slope, se, intercept = slope_with_se(x, 0.9 - 0.2 * x)
    assert (
        slope == pytest.approx(-0.2) and intercept == pytest.approx(0.9) and se == pytest.approx(0, abs=1e-12)
    )
    rng = np.random.default_rng(0)
    y = 0.5 + 0.1 * x + rng.normal(0, 0.1, len(x))
    slope, se, intercept = slope_with_se(x, y)
    dx, e = x - x.mean(), y - intercept - slope * x
    assert se == pytest.approx(math.sqrt((dx**2 * e**2).sum()) / (dx**2).sum())
    _, boot_se, _ = slope_with_se(np.tile(x, 20), np.tile(y, 20), num_bootstrap=400, rng=rng)
    assert boot_se == pytest.approx(se / math.sqrt(20), rel=0.3)
    assert math.isnan(slope_with_se(np.ones(5), np.arange(5.0))[0])


def test_length_excess_hand_computed():
    """Others' log-odds 0 (q = 0.5) on 2 ratings and log(3) (q = 0.75) on 2, flip rate 0.2:
    E = 0.5 and 0.8 * 0.75 + 0.2 * 0.25 = 0.65. The rater chose longer on all 4: residuals
    [0.5, 0.5, 0.35, 0.35], room 1 - E = [0.5, 0.5, 0.35, 0.35], excess = 1.7 / 1.7 = 1 with se 0.
    Choosing longer on 1 and 0 and 1 and 0: residual sum 0.5 - 0.5 + 0.35 - 0.65 = -0.3 < 0, so
    room = E, sum 2.3: excess -0.3 / 2.3; se from (residual - excess * E) by the delta method."""
    q_log_odds = np.array([0.0, 0.0, math.log(3), math.log(3), np.nan])
    flips = np.full(5, 0.2)
    result = length_excess(np.array([1, 1, 1, 1, 0.0]), q_log_odds, flips)
    assert result.excess == pytest.approx(1.0) and result.se == pytest.approx(0.0, abs=1e-12)
    assert result.num == 4 and result.expected_longer == pytest.approx(0.575)
    result = length_excess(np.array([1, 0, 1, 0, 1.0]), q_log_odds, flips)
    expected = np.array([0.5, 0.5, 0.65, 0.65])
    residual = np.array([1, 0, 1, 0]) - expected
    excess = -0.3 / 2.3
    se = math.sqrt(((residual - excess * expected) ** 2).mean() / 4) / expected.mean()
    assert result.excess == pytest.approx(excess) and result.se == pytest.approx(se)
    assert math.isnan(length_excess(np.array([np.nan]), np.array([0.0]), np.array([0.1])).excess)


def test_length_excess_is_zero_for_a_noisy_rater_when_longer_answers_are_better():
    """The reviewer's case (lb.py): 3000 items, longer truly better on 80%, 12 unbiased raters with
    flip rate 0.3, 3 per item. The others' consensus is noisy, so "chose longer while the others
    prefer the shorter" is common; against E = (1 - f) q + f (1 - q) with the fitted P(longer wins)
    no rater shows a length bias. The earlier measure gave excesses of 0.06-0.21 and flagged 4 raters."""
    rng = np.random.default_rng(0)
    longer_better = rng.random(3000) < 0.8
    item_index = np.repeat(np.arange(3000), 3)
    raters = np.concatenate([rng.choice(12, 3, replace=False) for _ in range(3000)])
    chose_longer = np.where(rng.random(9000) < 0.3, ~longer_better[item_index], longer_better[item_index])
    a_longer = rng.random(3000) < 0.5
    votes = (chose_longer == a_longer[item_index]).astype(np.int64)
    ratings = Ratings(
        items=list(range(3000)),
        item_index=item_index,
        votes=votes,
        annotators=[f"a{j:02d}" for j in raters],
        groups=[None] * 9000,
        order=np.full(9000, np.nan),
        chose_first=-np.ones(9000, dtype=np.int64),
        a_words=np.where(a_longer, 8, 3)[item_index],
        b_words=np.where(a_longer, 3, 8)[item_index],
        rows=np.arange(1, 9001),
    )
    audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=0)
    assert not [f for f in _warnings(audit.flags) if "length" in f], audit.flags
    biases = [audit.metrics[f"annotators/a{j:02d}/length_bias"] for j in range(12)]
    assert max(abs(b) for b in biases) < 0.08, biases


def test_annotator_audit_flags_a_length_biased_annotator():
    """a05 gives 30% of its verdicts to the longer response whatever its quality; the others are clean."""
    ratings, _ = _simulate(np.full(12, 0.1), seed=4)
    rng = np.random.default_rng(1)
    biased = (
        (np.array(ratings.annotators) == "a05")
        & (rng.random(len(ratings)) < 0.3)
        & (ratings.a_words != ratings.b_words)
    )
    votes = np.where(biased, (ratings.a_words > ratings.b_words).astype(np.int64), ratings.votes)
    audit = annotator_audit(
        Ratings(**{**ratings.__dict__, "votes": votes}), AuditThresholds(), num_bootstrap=0
    )
    length_flags = [f for f in _warnings(audit.flags) if "length" in f]
    assert length_flags == ["Annotator a05 is length-biased"], audit.flags
    assert audit.metrics["annotators/a05/length_bias"] == pytest.approx(0.3, abs=0.1)


def test_group_divergence_hand_computed():
    """Item 0: raters 0, 1 (group 0) vote 1, 1 and rater 2 (group 1) votes 0: within pair agrees, both
    between pairs disagree. Item 1: raters 0, 2 agree. within = 1/1, between = 1/3."""
    items = np.array([0, 0, 0, 1, 1])
    votes = np.array([1, 1, 0, 1, 1])
    raters = np.array([0, 1, 2, 0, 2])
    groups = np.array([0, 0, 1])
    result = group_divergence(items, votes, raters, groups, np.zeros(3), 0, np.random.default_rng(0))
    assert result.within == pytest.approx(1.0) and result.between == pytest.approx(1 / 3)
    assert (result.num_within, result.num_between) == (1, 3)
    # flip rates 0: every pair is expected to agree, so the statistic is (1 - 1) - (1/3 - 1) = 2/3
    assert result.statistic == pytest.approx(2 / 3) and math.isnan(result.p_value)  # no relabellings
    # flip rates 0.1 and 0.2, 0.2: expected agreement within 0.9 * 0.8 + 0.1 * 0.2 = 0.74, between
    # 0.8 * 0.8 + 0.2 * 0.2 = 0.68 (rater 1 with 2) and 0.72 + 0.02 = 0.74 (rater 0 with 2)
    result = group_divergence(
        items, votes, raters, groups, np.array([0.1, 0.2, 0.2]), 0, np.random.default_rng(0)
    )
    assert result.within_expected == pytest.approx(0.74)
    assert result.between_expected == pytest.approx((0.74 + 0.68 + 0.74) / 3)
    assert result.statistic == pytest.approx((1 - 0.74) - (1 / 3 - 0.72))


def test_group_divergence_ignores_groups_that_differ_only_in_accuracy():
    """The reviewer's case (gd.py): group A errs 5%, group B 35%, one shared truth. Raw agreement is
    higher within groups (A-A pairs agree 0.905, B-B 0.545, A-B 0.65), which the raw statistic read
    as divergence (0.079, p = 0.005); after subtracting what the flip rates predict it is ~0."""
    rng = np.random.default_rng(0)
    flips = np.array([0.05] * 6 + [0.35] * 6)
    truth = rng.random(2000) < 0.5
    item_index = np.repeat(np.arange(2000), 3)
    raters = np.concatenate([rng.choice(12, 3, replace=False) for _ in range(2000)])
    votes = np.where(rng.random(6000) < flips[raters], ~truth[item_index], truth[item_index]).astype(np.int64)
    fit = dawid_skene(item_index.tolist(), [str(r) for r in raters], votes.tolist())
    fitted = np.array([fit.flip_rate[str(j)] for j in range(12)])
    groups = np.array([0] * 6 + [1] * 6)
    result = group_divergence(item_index, votes, raters, groups, fitted, 200, np.random.default_rng(1))
    assert abs(result.statistic) < 0.02 and result.p_value > 0.05, result


# ----------------------------------------------------------------------------- Dawid-Skene


def _flip_errors(ratings: Ratings, symmetric: bool) -> np.ndarray:
    result = dawid_skene(
        ratings.item_index.tolist(),
        [str(a) for a in ratings.annotators],
        ratings.votes.tolist(),
        symmetric=symmetric,
    )
    assert isinstance(result, DawidSkeneResult) and result.converged
    return np.array([result.flip_rate[f"a{j:02d}"] for j in range(12)]) - FLIPS


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dawid_skene_recovers_injected_flip_rates(symmetric, seed):
    """1000 ratings per annotator (3000 items, 4 raters each): every estimate within 0.05."""
    ratings, truth = _simulate(num_items=3000, per_item=4, seed=seed)
    errors = _flip_errors(ratings, symmetric)
    assert np.abs(errors).max() < 0.05, errors.round(3)
    result = dawid_skene(
        ratings.item_index.tolist(), [str(a) for a in ratings.annotators], ratings.votes.tolist()
    )
    assert result.items == list(range(3000))
    assert ((result.posterior > 0.5) == truth).mean() > 0.9
    assert result.prior == 0.5  # fixed: which response is "a" is arbitrary


def test_dawid_skene_flip_rates_with_375_ratings_each():
    """1500 items rated by 3 of 12 annotators (375 ratings each), 10 seeds: unbiased, and 90% of the
    120 estimates within 0.05. The errors' spread (0.02-0.03) is the binomial noise of 375 ratings,
    so the largest of 12 errors passes 0.05 for some seeds: 200-400 ratings do not bound every one."""
    errors = np.array([_flip_errors(_simulate(seed=seed)[0], True) for seed in range(10)])  # (10, 12)
    assert np.abs(errors.mean(axis=0)).max() < 0.02
    assert np.abs(errors).mean() < 0.025
    assert (np.abs(errors) < 0.05).mean() >= 0.9


def test_dawid_skene_deterministic_and_smoothed():
    """Same input, same output; an annotator with one overlap rating gets a rate near the panel's."""
    items = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    raters = ["x", "y", "z"] * 3 + ["x", "solo"]
    votes = [1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1]
    first = dawid_skene(items, raters, votes)
    second = dawid_skene(items, raters, votes)
    assert first.flip_rate == second.flip_rate and np.array_equal(first.posterior, second.posterior)
    assert 0.0 < first.flip_rate["solo"] < 0.5


def test_dawid_skene_without_overlap_gives_nan_rates():
    result = dawid_skene([0, 1, 2], ["x", "y", "x"], [1, 0, 1])
    assert all(math.isnan(rate) for rate in result.flip_rate.values())
    np.testing.assert_allclose(result.posterior, [1, 0, 1])


def test_dawid_skene_checks_inputs():
    with pytest.raises(ValueError, match="one entry per rating"):
        dawid_skene([0, 1], ["x"], [1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        dawid_skene([0, 0], ["x", "y"], [1, 2])


def test_vote_log_odds():
    """A rater with flip rate 0.2 adds +-log(0.8 / 0.2) = +-1.386294."""
    np.testing.assert_allclose(vote_log_odds(["x", "x"], [1, 0], {"x": 0.2}), [math.log(4), -math.log(4)])


# ----------------------------------------------------------------------------- verdicts


def test_audit_flags_the_fatigued_annotator_only():
    """a03 errs 5% at the start of a session and 45% at its end; the others do not tire."""
    flips = np.full(12, 0.1)
    ratings, _ = _simulate(flips, fatigue={3: 0.4}, seed=1)
    audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=300, seed=0)
    fatigued = [f for f in _warnings(audit.flags) if "fatigue" in f]
    assert fatigued == [f for f in fatigued if f.startswith("Annotator a03")] and len(fatigued) == 1
    assert audit.metrics["annotators/a03/fatigue_slope"] < -0.2
    assert audit.metrics["annotators/a03/fatigue_ci"][1] < 0


def test_audit_flags_the_length_biased_group():
    """Raters of group B pick the longer response 30% of the time, whatever its quality."""
    ratings, _ = _simulate(np.full(12, 0.1), length_group_bias=0.3, seed=2)
    audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=300, seed=0)
    warnings = _warnings(audit.flags)
    assert "Group B is length-biased" in warnings and "Group A is length-biased" not in warnings
    assert audit.metrics["groups/B/length_bias"] > 0.2
    assert audit.metrics["groups/A/length_bias"] < 0.1


def test_audit_flags_divergent_groups():
    """Group B's true winner is the other response on 25% of the items."""
    ratings, _ = _simulate(np.full(12, 0.1), group_b_disagrees=0.25, seed=3)
    audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=300, seed=0)
    assert "Annotator groups prefer systematically different responses" in _warnings(audit.flags)
    assert audit.metrics["group_divergence/statistic"] > 0.1
    assert audit.metrics["group_divergence/p_value"] < 0.01


def test_audit_flip_rates_within_005_of_injected():
    ratings, _ = _simulate(num_items=3000, per_item=4, seed=0)
    audit = annotator_audit(ratings, AuditThresholds(max_flip_rate=0.3), num_bootstrap=0)
    estimated = np.array([audit.metrics[f"annotators/a{j:02d}/flip_rate"] for j in range(12)])
    assert np.abs(estimated - FLIPS).max() < 0.05
    assert min(audit.metrics[f"annotators/a{j:02d}/n"] for j in range(12)) >= 200
    unreliable = {f.split()[1] for f in _warnings(audit.flags) if "unreliable" in f}
    assert unreliable == {f"a{j:02d}" for j in range(12) if estimated[j] >= 0.3}
    assert "a11" in unreliable and not unreliable & {f"a{j:02d}" for j in range(12) if FLIPS[j] < 0.25}


def test_audit_stays_quiet_on_a_clean_panel():
    """Same-quality raters, no fatigue, no length bias, one shared notion of quality: no warning."""
    for seed in (5, 6):
        ratings, _ = _simulate(np.full(12, 0.1), seed=seed)
        audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=300, seed=seed)
        assert _warnings(audit.flags) == [], audit.flags
        assert _warnings(length_bias(ratings, AuditThresholds()).flags) == []


def test_position_bias_flagged_only_when_present():
    ratings, _ = _simulate(np.full(12, 0.1), seed=7)
    rng = np.random.default_rng(0)
    fair = Ratings(**{**ratings.__dict__, "chose_first": rng.integers(0, 2, len(ratings))})
    skewed = Ratings(**{**ratings.__dict__, "chose_first": (rng.random(len(ratings)) < 0.6).astype(np.int64)})
    assert _warnings(position_bias(fair, AuditThresholds()).flags) == []
    flagged = position_bias(skewed, AuditThresholds())
    assert _warnings(flagged.flags) == ["Position bias: raters favour the response shown first"]
    assert flagged.metrics["position_bias/ci"][0] > 0.5


def test_length_bias_without_unequal_pairs_has_no_interval():
    """Every pair has two one-word responses: no pair to measure "prefer longer" on, so the accuracy
    and its Wilson interval are NaN (null in audit.json), not an error."""
    ratings = ratings_from_rows([_pair(f"p{i}", "good", "bad", i + 1) for i in range(4)])
    metrics = length_bias(ratings, AuditThresholds()).metrics
    assert metrics["length_bias/num_unequal"] == 0 and metrics["length_bias/prefer_longer_accuracy"] is None
    assert all(math.isnan(v) for v in metrics["length_bias/prefer_longer_ci"])


# ----------------------------------------------------------------------------- ratings and hygiene


def _pair(prompt, chosen, rejected, row, **meta) -> PairExample:
    return PairExample(prompt, chosen, rejected, None, None, meta, row)


def test_ratings_from_rows_canonical_item_and_vote():
    rows = [
        _pair("p", "zebra", "apple", 1, annotator="x", order=0, shown_first="chosen"),
        _pair("p", "apple", "zebra", 2, annotator=7, annotator_group="g"),
        _pair("q", "apple", "zebra", 3, pair_id=5),
        _pair("q", [{"role": "assistant", "content": "b c"}], [{"role": "assistant", "content": "a"}], 4),
    ]
    ratings = ratings_from_rows(rows)
    assert ratings.item_index.tolist() == [0, 0, 1, 2]
    assert ratings.votes.tolist() == [0, 1, 1, 0]  # "a" is "apple" / "a"
    assert ratings.items[1] == ("pair_id", 5)
    assert ratings.annotators[:2] == ["x", "7"] and ratings.groups[1] == "g"
    assert ratings.chose_first.tolist() == [1, -1, -1, -1]
    assert ratings.a_words.tolist() == [1, 1, 1, 1] and ratings.b_words.tolist() == [1, 1, 1, 2]
    assert np.isnan(ratings.order[1]) and ratings.order[0] == 0
    assert np.isnan(ratings.chose_longer[0]) and ratings.chose_longer[3] == 1.0
    with pytest.raises(ValueError, match="pair_id 5"):
        ratings_from_rows([rows[2], _pair("q", "x", "y", 9, pair_id=5)])


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def test_hygiene_counts_each_problem(tmp_path):
    long_cut = " ".join(["word"] * 12)
    rows = [
        {"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."},  # 1
        {"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."},  # 2 exact duplicate
        {"prompt": "Hi", "chosen": "Go away.", "rejected": "Hello there."},  # 3 contradicts 1
        {"prompt": "hi!", "chosen": "hello  there", "rejected": "go away"},  # 4 near duplicate of 1
        {"prompt": "Q", "chosen": "Same.", "rejected": "Same."},  # 5 tie
        {"prompt": "Q", "chosen": "Yes.", "rejected": "  "},  # 6 empty response
        {"prompt": "Q", "chosen": "Ok.", "rejected": "ok"},  # 7 near tie
        {
            "chosen": "\n\nHuman: x\n\nAssistant: fine.",
            "rejected": "\n\nHuman: x\n\nAssistant: ",
        },  # 8 empty turn
        {"prompt": "C", "chosen": long_cut, "rejected": "Short."},  # 9 at the cap, unterminated
        {"prompt": "D", "chosen": long_cut, "rejected": "Also short."},  # 10
        {"prompt": "E", "chosen": long_cut + " end", "rejected": "No."},  # 11: 13 words, the cap
        {"prompt": "F", "chosen": long_cut + " end", "rejected": "No!"},  # 12
        {"prompt": "G", "chosen": long_cut + " end", "rejected": "Nope."},  # 13
    ]
    data = load_audit_pairs(_write_jsonl(tmp_path / "pairs.jsonl.gz", rows))
    stats = hygiene_stats(data, min_cap_count=3)
    assert (stats["num_rows"], stats["num_valid_rows"]) == (13, 10)
    assert (stats["ties"], stats["tie_rows"]) == (1, [5])
    assert (stats["empty_responses"], stats["empty_rows"]) == (2, [6, 8])
    assert (stats["exact_duplicates"], stats["exact_duplicate_rows"]) == (1, [2])
    assert (stats["contradictory_duplicates"], stats["near_duplicates"]) == (1, 1)
    assert (stats["near_ties"], stats["near_tie_rows"]) == (1, [7])
    assert stats["length_cap_words"] == 13 and stats["truncated_rows"] == [11, 12, 13]
    assert normalize_text("  Hello,   THERE! ") == "hello there"


def test_hygiene_duplicates_are_per_annotator(tmp_path):
    """Two annotators rating the same pair is overlap, not a duplicate."""
    row = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}
    rows = [{**row, "annotator": "x"}, {**row, "annotator": "y"}, {**row, "annotator": "x"}]
    stats = hygiene_stats(load_audit_pairs(_write_jsonl(tmp_path / "r.jsonl.gz", rows)))
    assert stats["exact_duplicates"] == 1 and stats["exact_duplicate_rows"] == [3]


def test_invalid_rows_raise_or_are_counted(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Bye."}, {"prompt": "Hi", "chosen": "Hello."}]
    path = _write_jsonl(tmp_path / "bad.jsonl.gz", rows)
    with pytest.raises(DataError, match=r"row 2, field 'rejected'"):
        load_audit_pairs(path)
    data = load_audit_pairs(path, skip_invalid=True)
    assert [skip.row for skip in data.skipped] == [2] and hygiene_stats(data)["num_skipped_invalid"] == 1


def test_prompt_overlap(tmp_path):
    train = [
        {"prompt": "Hi", "chosen": "Hello.", "rejected": "Bye."},
        {"prompt": "Q", "chosen": "A.", "rejected": "B."},
    ]
    held_out = [
        {"prompt": "hi", "chosen": "Bye", "rejected": "Hello"},
        {"prompt": "New", "chosen": "A.", "rejected": "B."},
    ]
    overlap = prompt_overlap(
        load_audit_pairs(_write_jsonl(tmp_path / "t.jsonl.gz", train)),
        load_audit_pairs(_write_jsonl(tmp_path / "e.jsonl.gz", held_out)),
    )
    assert overlap["eval_prompt_overlap_rows"] == 1 and overlap["eval_pair_overlap_rows"] == 1
    assert overlap["eval_prompt_overlap_share"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- review fixes


def test_slope_with_se_on_too_few_points_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in slope_with_se(np.zeros(0), np.zeros(0)))
        assert math.isnan(slope_with_se(np.array([0.0, 1.0]), np.array([1.0, 0.0]))[0])


def _split_ratings(a_text: str, z_text: str) -> Ratings:
    """u1 and u2 agree on 40 items ("a" wins when a_text < z_text); on 10 more they split and u3
    sides with u2 on 5 and with u1 on 5, so u1 and u2 are equally reliable."""
    rows = []
    for i in range(40):
        rows += [
            _pair(f"p{i}", f"{a_text}{i}", f"{z_text}{i}", len(rows) + 1, annotator=u) for u in ("u1", "u2")
        ]
    for i in range(40, 50):
        u1_says, u2_says = (f"{a_text}{i}", f"{z_text}{i}"), (f"{z_text}{i}", f"{a_text}{i}")
        u3_says = u2_says if i < 45 else u1_says
        for name, (chosen, rejected) in (("u1", u1_says), ("u2", u2_says), ("u3", u3_says)):
            rows.append(_pair(f"p{i}", chosen, rejected, len(rows) + 1, annotator=name))
    return ratings_from_rows(rows)


@pytest.mark.parametrize(("a_text", "z_text"), [("aaa", "zzz"), ("zzz", "aaa")])
def test_split_others_give_no_agreement_whichever_text_sorts_first(a_text, z_text):
    """u3 only rates items where u1 and u2 (equally reliable) split: the others have no winner, so
    u3's agreement is None. With the class prior fitted (P(a wins) = 0.98 here) the split was
    decided by which text sorts first, and u3's agreement was 0 or 1 depending on the texts."""
    audit = annotator_audit(_split_ratings(a_text, z_text), AuditThresholds(), num_bootstrap=0)
    assert audit.metrics["agreement/ds_prior"] == 0.5
    assert audit.metrics["annotators/u3/n_overlap"] == 10
    assert audit.metrics["annotators/u3/agreement"] is None


def test_dawid_skene_posterior_does_not_depend_on_which_response_is_a():
    """Swapping every item's "a" and "b" (votes 1 - v) mirrors the posteriors exactly, even when "a"
    wins on most items; a fitted prior made a single rating's posterior depend on the swap."""
    items = [i for i in range(20) for _ in range(2)] + [20]
    raters = ["x", "y"] * 20 + ["x"]
    votes = [1, 1] * 18 + [1, 0, 0, 1] + [1]
    straight = dawid_skene(items, raters, votes)
    mirrored = dawid_skene(items, raters, [1 - v for v in votes])
    np.testing.assert_allclose(straight.posterior, 1 - mirrored.posterior, atol=1e-12)
    assert straight.posterior[-1] == pytest.approx(1 - straight.flip_rate["x"])


def test_leave_out_blocks_by_annotator_and_no_overlap_keys():
    """One annotator rating every item twice: the repeat is not a second opinion, so nothing is
    estimated, but the per-annotator keys are there (None) with a note saying why."""
    rows = [_pair(f"p{i % 5}", f"a{i % 5} b", f"c{i % 5}", i + 1, annotator="u1", order=i) for i in range(10)]
    for ratings in (ratings_from_rows(rows), ratings_from_rows(rows[:5])):  # rated twice, and once
        audit = annotator_audit(ratings, AuditThresholds(), num_bootstrap=0)
        for name in ("agreement", "flip_rate", "fatigue_slope", "length_bias"):
            assert audit.metrics[f"annotators/u1/{name}"] is None
        notes = [f for f in audit.flags if f["finding"].startswith("No item was rated by two annotators")]
        assert len(notes) == 1 and notes[0]["severity"] == "info"
        assert "several annotators" in notes[0]["evidence"]


def test_groups_on_some_rows_are_audited_with_a_note():
    ratings, _ = _simulate(np.full(12, 0.1), length_group_bias=0.3, seed=2)  # 4500 ratings
    groups = [g if i % 10 else None for i, g in enumerate(ratings.groups)]  # 450 without a group
    audit = annotator_audit(
        Ratings(**{**ratings.__dict__, "groups": groups}), AuditThresholds(), num_bootstrap=0
    )
    notes = [f for f in audit.flags if f["finding"] == "annotator_group on 4050 of 4500 annotated rows"]
    assert len(notes) == 1 and notes[0]["severity"] == "info"
    assert "Group B is length-biased" in _warnings(audit.flags)
    assert audit.metrics["group_divergence/p_value"] is None  # num_bootstrap = 0: no test


def test_pair_id_needs_the_same_prompt():
    with pytest.raises(ValueError, match="pair_id 5 but another prompt"):
        ratings_from_rows(
            [_pair("q", "apple", "zebra", 1, pair_id=5), _pair("r", "zebra", "apple", 2, pair_id=5)]
        )


def test_audit_of_all_ties_counts_them(tmp_path):
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}] * 3 + [
        {"prompt": "p", "chosen": "x", "rejected": " "}
    ]
    data = load_audit_pairs(_write_jsonl(tmp_path / "ties.jsonl.gz", rows))
    assert data.pairs == [] and data.tie_rows == [1, 2, 3] and data.empty_rows == [4]
    audit = run_audit(AuditConfig(dataset=data.source, output_dir=str(tmp_path / "out"), num_bootstrap=0))
    assert (audit["dataset/ties"], audit["dataset/empty_responses"], audit["dataset/num_valid_rows"]) == (
        3,
        1,
        0,
    )
    assert audit["length_bias/num_unequal"] == 0
    with pytest.raises(DataError, match="row 2"):
        load_audit_pairs(_write_jsonl(tmp_path / "bad.jsonl.gz", [rows[0], {"prompt": "p", "chosen": "x"}]))


def test_audit_uses_the_rows_that_name_an_annotator(tmp_path):
    """An annotator column on some rows only: audit those rows and say so, never skip silently."""
    rows = [
        {
            "prompt": f"p{i % 5}",
            "chosen": f"x{i % 5} good",
            "rejected": f"x{i % 5} bad",
            **({"annotator": f"u{i % 3}"} if i % 2 else {}),
        }
        for i in range(40)
    ]
    path = _write_jsonl(tmp_path / "partial.jsonl.gz", rows)
    audit = run_audit(AuditConfig(dataset=path, output_dir=str(tmp_path / "out"), num_bootstrap=0))
    assert audit["dataset/has_annotators"] is False and audit["dataset/num_annotated_rows"] == 20
    assert "annotator on 20 of 40 rows" in [f["finding"] for f in audit["flags"]]
    assert audit["annotators/u0/n"] + audit["annotators/u1/n"] + audit["annotators/u2/n"] == 20
    assert audit["annotators/u1/agreement"] is not None
