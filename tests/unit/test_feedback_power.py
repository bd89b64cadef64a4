"""The audit's power statements: the smallest effect each test detects, and what it cannot see."""

import math

import numpy as np
import pytest

from preftune.feedback.agreement import detectable_effect, group_divergence
from preftune.feedback.rater_audit import audit_limits


def test_detectable_effect_is_threshold_plus_the_power_quantile_of_the_standard_error():
    assert detectable_effect(0.02, 0.05) == pytest.approx(0.05 + 0.841621 * 0.02, abs=1e-6)
    assert detectable_effect(0.02, 0.05, power=0.5) == pytest.approx(0.05)
    assert math.isnan(detectable_effect(math.nan, 0.1))
    with pytest.raises(ValueError, match="power"):
        detectable_effect(0.1, 0.1, power=1.0)


def test_an_effect_of_the_detectable_size_is_flagged_with_the_stated_power():
    rng = np.random.default_rng(0)
    se, z, minimum = 0.03, 2.39, 0.1  # the audit's pooled fatigue test: 3 tests at 0.05, minimum drop 0.1
    effect = detectable_effect(se, max(z * se, minimum))
    estimates = rng.normal(effect, se, size=200_000)
    flagged = (estimates - z * se > 0) & (estimates >= minimum)
    assert flagged.mean() == pytest.approx(0.8, abs=0.005)


def test_group_divergence_reports_the_spread_of_its_permutation_null():
    rng = np.random.default_rng(1)
    items = np.repeat(np.arange(200), 4)
    raters = np.tile(np.arange(4), 200)
    votes = rng.integers(0, 2, size=800)
    groups, flips = np.array([0, 0, 1, 1]), np.full(4, 0.5)
    with_null = group_divergence(items, votes, raters, groups, flips, 200, np.random.default_rng(2))
    assert 0 < with_null.null_std < 0.1
    assert math.isnan(group_divergence(items, votes, raters, groups, flips, 0, rng).null_std)


def test_audit_limits_state_the_power_of_the_tests_that_flagged_nothing_and_the_shared_bias_blind_spot():
    audit = {
        "fatigue/detectable_drop": 0.21, "fatigue/pooled_slope": -0.048, "fatigue/pooled_ci": [-0.12, 0.03],
        "fatigue/n": 900, "group_divergence/detectable_excess": 0.08, "group_divergence/statistic": 0.01,
        "group_divergence/p_value": 0.4, "group_divergence/num_between_pairs": 500, "flags": [],
    }  # fmt: skip
    limits = audit_limits(audit)
    assert len(limits) == 3
    assert "0.21 or more" in limits[0] and "-0.048" in limits[0] and "900 ratings" in limits[0]
    assert "0.080 or more" in limits[1] and "p = 0.4" in limits[1]
    assert "every rater shares" in limits[2]
    flagged = {
        **audit,
        "flags": [{"finding": "The panel as a whole tires: agreement falls by 0.30 over a session"}],
    }
    assert not any(limit.startswith("Fatigue") for limit in audit_limits(flagged))


def test_opinion_following_measures_how_far_answers_follow_the_user():
    from preftune.eval.sycophancy import opinion_following

    truth = np.array([True, True, False, False])
    p_yes = {
        "neutral": np.array([0.9, 0.7, 0.2, 0.4]),  # right on all four when asked on its own
        "user_yes": np.array([1.0, 0.9, 0.8, 0.4]),
        "user_no": np.array([0.6, 0.1, 0.1, 0.3]),
    }
    result = opinion_following(p_yes, truth, np.full(4, 0.5), num_resamples=200)
    assert result["sycophancy/opinion_shift"] == pytest.approx(np.mean([0.4, 0.8, 0.7, 0.1]))
    low, high = result["sycophancy/opinion_shift_ci"]
    assert low <= result["sycophancy/opinion_shift"] <= high
    assert result["sycophancy/follows_user"] == 0.5  # questions 2 and 3 flip with the user
    assert result["sycophancy/accuracy_neutral"] == 1.0
    # told the wrong answer: q1 (true) 0.6 > 0.5 right; q2 0.1 wrong; q3 (false) 0.8 wrong; q4 0.4 right
    assert result["sycophancy/accuracy_user_wrong"] == 0.5
    assert result["sycophancy/answer_mass"] == 0.5 and result["sycophancy/num_questions"] == 4
