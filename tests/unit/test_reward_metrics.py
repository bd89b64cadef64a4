"""Reward-model evaluation metrics (preftune/eval/reward_metrics.py) against hand-computed values."""

import math

import numpy as np
import pytest

from preftune.eval.reward_metrics import (
    expected_calibration_error,
    gold_agreement,
    label_gold_agreement,
    length_probe,
    pairwise_accuracy,
    score_statistics,
)
from preftune.stats import wilson_interval

LOG3 = math.log(3.0)  # sigmoid(log 3) = 3/4
LOG9 = math.log(9.0)  # sigmoid(log 9) = 9/10


# --- pairwise_accuracy -------------------------------------------------------------------------------


def test_pairwise_accuracy_counts_ties_half():
    """Margins (2, 0, -1, 0.5, 0): correct 1 + 0.5 + 0 + 1 + 0.5 = 3 of 5 -> 0.6."""
    result = pairwise_accuracy([2.0, 0.0, -1.0, 0.5, 0.0])
    assert result["accuracy"] == pytest.approx(0.6, abs=1e-15)
    assert result["num_pairs"] == 5.0
    assert (result["accuracy_ci_low"], result["accuracy_ci_high"]) == pytest.approx(wilson_interval(3.0, 5))
    assert set(result) == {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "num_pairs"}


def test_pairwise_accuracy_interval_is_the_wilson_8_of_10():
    result = pairwise_accuracy([1.0] * 8 + [-1.0] * 2)
    assert result["accuracy"] == 0.8
    assert result["accuracy_ci_low"] == pytest.approx(0.490162, abs=1e-6)
    assert result["accuracy_ci_high"] == pytest.approx(0.943318, abs=1e-6)


def test_pairwise_accuracy_all_ties_is_one_half():
    assert pairwise_accuracy(np.zeros(4))["accuracy"] == 0.5


def test_pairwise_accuracy_passes_confidence_through():
    result = pairwise_accuracy([1.0] * 8 + [-1.0] * 2, confidence=0.99)
    assert (result["accuracy_ci_low"], result["accuracy_ci_high"]) == pytest.approx(
        wilson_interval(8, 10, confidence=0.99)
    )


@pytest.mark.parametrize(
    ("margins", "message"),
    [
        ([], "margins is empty"),
        ([1.0, math.nan], r"margins has 1 non-finite value\(s\), first nan at index 1"),
        ([1.0, -math.inf, math.inf], r"margins has 2 non-finite value\(s\), first -inf at index 1"),
        ([[1.0, 2.0]], r"margins must be 1-D .* got shape \(1, 2\)"),
    ],
)
def test_pairwise_accuracy_rejects_bad_margins(margins, message):
    with pytest.raises(ValueError, match=message):
        pairwise_accuracy(margins)


def test_pairwise_accuracy_rejects_bad_confidence():
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        pairwise_accuracy([1.0], confidence=95)


# --- expected_calibration_error ----------------------------------------------------------------------


def test_ece_is_zero_when_each_bin_is_calibrated():
    """Confidence 3/4 with 3 of 4 right, 9/10 with 9 of 10 right, 1/2 on ties (each half right)."""
    margins = [LOG3] * 3 + [-LOG3] + [LOG9] * 9 + [-LOG9] + [0.0, 0.0]
    assert expected_calibration_error(margins) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(margins, num_bins=3) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_model():
    """Bin of 0.9: accuracy 1/2, gap 0.4, weight 2/4; bin of 0.75: accuracy 1, gap 0.25, weight 2/4.

    ECE = 0.5 * 0.4 + 0.5 * 0.25 = 0.325.
    """
    margins = [LOG9, -LOG9, LOG3, LOG3]
    assert expected_calibration_error(margins) == pytest.approx(0.325, abs=1e-12)


def test_ece_with_one_bin_pools_all_pairs():
    """One bin: mean correct 3/4, mean confidence (0.9 * 2 + 0.75 * 2) / 4 = 0.825, ECE = 0.075."""
    margins = [LOG9, -LOG9, LOG3, LOG3]
    assert expected_calibration_error(margins, num_bins=1) == pytest.approx(0.075, abs=1e-12)


def test_ece_puts_confidence_one_in_the_last_bin_and_is_stable_for_huge_margins():
    """Margins of +-1000 give c = 1.0 exactly (exp(-1000) underflows to 0, nothing overflows); 1 of 2
    right -> ECE = 0.5.
    """
    with np.errstate(over="raise", invalid="raise"):
        assert expected_calibration_error([1000.0, -1000.0]) == pytest.approx(0.5, abs=1e-15)
        assert expected_calibration_error([1000.0, 1000.0]) == pytest.approx(0.0, abs=1e-15)


def test_ece_is_symmetric_in_the_sign_of_all_margins_only_through_correctness():
    """Flipping every margin keeps confidences but turns right into wrong: 4 pairs at 0.75, all wrong."""
    assert expected_calibration_error([-LOG3] * 4) == pytest.approx(0.75, abs=1e-12)


def test_ece_bins_are_closed_on_the_left():
    """Two bins [0.5, 0.75), [0.75, 1.0]; sigmoid(log 3) is exactly 0.75 in float64, so it joins the
    0.9 pair: accuracy 1/2, confidence 0.825 -> ECE = 0.325 (it would be 0.125 + 0.45 if it went down).
    """
    assert expected_calibration_error([LOG3, -LOG9], num_bins=2) == pytest.approx(0.325, abs=1e-12)


def test_ece_confidence_one_shares_the_last_bin():
    """c = 1.0 (wrong) and c = 39/40 (right) pool in [0.9, 1.0]: |1/2 - 0.9875| = 0.4875.

    Were c = 1.0 a bin of its own, ECE would be (1 + 0.025) / 2 = 0.5125.
    """
    assert expected_calibration_error([-1000.0, math.log(39.0)]) == pytest.approx(0.4875, abs=1e-12)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True])
def test_ece_rejects_bad_num_bins(num_bins):
    with pytest.raises(ValueError, match=f"num_bins must be an integer >= 1, got {num_bins!r}"):
        expected_calibration_error([1.0], num_bins=num_bins)


def test_ece_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="margins is empty"):
        expected_calibration_error([])
    with pytest.raises(ValueError, match="non-finite"):
        expected_calibration_error([0.0, math.inf])


# --- length_probe ------------------------------------------------------------------------------------


def test_length_probe_shares_and_split_accuracies():
    """Pairs: chosen longer, shorter, equal, longer -> share (1 + 0 + 0.5 + 1) / 4 = 0.625.

    Margins (1, 0, -2, -0.5): on chosen-longer pairs (0, 3) correct 1, 0 -> 0.5;
    on the chosen-shorter pair (1) the tie counts 0.5.
    """
    result = length_probe(
        margins=[1.0, 0.0, -2.0, -0.5],
        chosen_lengths=[10, 5, 7, 12],
        rejected_lengths=[4, 8, 7, 6],
        chosen_scores=[1.0, 2.0, 3.0, 4.0],
        rejected_scores=[0.0, 2.0, 5.0, 4.5],
    )
    assert result["chosen_longer_share"] == 0.625
    assert result["prefer_longer_accuracy"] == 0.625
    assert result["prefer_shorter_accuracy"] == 0.375
    assert result["accuracy_chosen_longer"] == 0.5
    assert result["num_chosen_longer"] == 2.0
    assert result["accuracy_chosen_shorter"] == 0.5
    assert result["num_chosen_shorter"] == 1.0


def test_length_probe_pearson_pairs_each_score_with_its_own_length():
    """Lengths (1, 2 | 3, 4), scores (1, 3 | 2, 4): deviations (-1.5, -.5, .5, 1.5) and
    (-1.5, .5, -.5, 1.5), covariance sum 4, variance sums 5 and 5 -> r = 0.8; no ties, so rho = 0.8.
    Pairing chosen scores with rejected lengths would give 0.
    """
    result = length_probe([-1.0, -1.0], [1, 2], [3, 4], [1.0, 3.0], [2.0, 4.0])
    assert result["length_correlation"] == pytest.approx(0.8, abs=1e-12)
    assert result["length_spearman"] == pytest.approx(0.8, abs=1e-12)


def test_length_probe_spearman_uses_average_ranks_for_ties():
    """Lengths (1, 2 | 2, 10) rank (1, 2.5 | 2.5, 4); scores (1, 3 | 2, 4) rank themselves.

    Rank deviations (-1.5, 0, 0, 1.5) and (-1.5, .5, -.5, 1.5): rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    Pearson on raw lengths: deviations (-2.75, -1.75, -1.75, 6.25), r = 13.5 / sqrt(52.75 * 5).
    """
    result = length_probe([0.0, 0.0], [1, 2], [2, 10], [1.0, 3.0], [2.0, 4.0])
    assert result["length_spearman"] == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert result["length_correlation"] == pytest.approx(13.5 / math.sqrt(52.75 * 5), abs=1e-12)


def _slow_average_ranks(values):
    """Rank of v = 1 + #(smaller) + (#(equal) - 1) / 2."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def test_length_spearman_matches_a_slow_reference_with_many_ties():
    rng = np.random.default_rng(0)
    chosen_lengths, rejected_lengths = rng.integers(0, 6, size=(2, 30))
    chosen_scores, rejected_scores = rng.integers(-3, 3, size=(2, 30)).astype(float)
    result = length_probe(
        chosen_scores - rejected_scores, chosen_lengths, rejected_lengths, chosen_scores, rejected_scores
    )
    score_ranks = _slow_average_ranks(list(chosen_scores) + list(rejected_scores))
    length_ranks = _slow_average_ranks(list(chosen_lengths) + list(rejected_lengths))
    expected = np.corrcoef(score_ranks, length_ranks)[0, 1]
    assert result["length_spearman"] == pytest.approx(expected, abs=1e-12)
    expected_pearson = np.corrcoef(
        np.concatenate((chosen_scores, rejected_scores)), np.concatenate((chosen_lengths, rejected_lengths))
    )[0, 1]
    assert result["length_correlation"] == pytest.approx(expected_pearson, abs=1e-12)


def test_length_probe_correlations_are_nan_for_constant_lengths_or_scores():
    constant_lengths = length_probe([1.0, -1.0], [5, 5], [5, 5], [1.0, 2.0], [0.0, 3.0])
    assert math.isnan(constant_lengths["length_correlation"])
    assert math.isnan(constant_lengths["length_spearman"])
    assert constant_lengths["chosen_longer_share"] == 0.5
    constant_scores = length_probe([0.0, 0.0], [1, 2], [3, 4], [0.1, 0.1], [0.1, 0.1])
    assert math.isnan(constant_scores["length_correlation"])
    assert math.isnan(constant_scores["length_spearman"])


def test_length_probe_split_accuracy_is_nan_when_no_pair_is_in_the_split():
    result = length_probe([1.0, -1.0], [9, 8], [3, 4], [1.0, 0.0], [0.0, 1.0])
    assert result["chosen_longer_share"] == 1.0 and result["prefer_shorter_accuracy"] == 0.0
    assert result["accuracy_chosen_longer"] == 0.5 and result["num_chosen_longer"] == 2.0
    assert math.isnan(result["accuracy_chosen_shorter"]) and result["num_chosen_shorter"] == 0.0


def test_length_probe_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"one value per pair, got lengths .*'rejected_lengths': 2"):
        length_probe([1.0, 2.0, 3.0], [1, 2, 3], [1, 2], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


def test_length_probe_rejects_empty_and_negative_lengths():
    with pytest.raises(ValueError, match="chosen_lengths is empty"):
        length_probe([1.0], [], [1], [1.0], [1.0])
    with pytest.raises(ValueError, match="rejected_lengths must be >= 0 tokens, got minimum -2.0"):
        length_probe([1.0], [3], [-2], [1.0], [1.0])


# --- gold_agreement / label_gold_agreement -----------------------------------------------------------


def test_gold_agreement_skips_gold_ties_and_counts_model_ties_half():
    """Gold (1, -2, 0, 3, -1), margins (0.5, 1, 9, 0, -4): pair 2 is skipped;
    agreements 1, 0, 0.5, 1 -> 2.5 / 4 = 0.625.
    """
    result = gold_agreement([0.5, 1.0, 9.0, 0.0, -4.0], [1.0, -2.0, 0.0, 3.0, -1.0])
    assert result["gold_agreement"] == 0.625
    assert result["num_gold_pairs"] == 4.0
    assert (result["gold_agreement_ci_low"], result["gold_agreement_ci_high"]) == pytest.approx(
        wilson_interval(2.5, 4)
    )
    assert set(result) == {
        "gold_agreement",
        "gold_agreement_ci_low",
        "gold_agreement_ci_high",
        "num_gold_pairs",
    }


def test_gold_agreement_raises_when_gold_has_no_preference():
    with pytest.raises(ValueError, match="All 3 gold_margins are 0"):
        gold_agreement([1.0, -1.0, 0.0], [0.0, 0.0, 0.0])


def test_gold_agreement_rejects_mismatched_lengths_and_bad_confidence():
    with pytest.raises(ValueError, match=r"got lengths \{'margins': 2, 'gold_margins': 3\}"):
        gold_agreement([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="confidence must be in"):
        gold_agreement([1.0], [1.0], confidence=-0.5)


def test_label_gold_agreement_counts_only_decided_pairs():
    """Gold (2, -1, 0, 0.5, 3): decided pairs 4, of which 3 positive -> 0.75."""
    assert label_gold_agreement([2.0, -1.0, 0.0, 0.5, 3.0]) == 0.75


def test_label_gold_agreement_raises_when_gold_has_no_preference():
    with pytest.raises(ValueError, match="All 2 gold_margins are 0"):
        label_gold_agreement([0.0, 0.0])
    with pytest.raises(ValueError, match="gold_margins is empty"):
        label_gold_agreement([])


# --- score_statistics --------------------------------------------------------------------------------


def test_score_statistics_uses_population_std():
    """Scores (1, 2, 3, 6): mean 3, squared deviations 4 + 1 + 0 + 9 = 14, std = sqrt(14 / 4)."""
    result = score_statistics([1.0, 2.0, 3.0, 6.0])
    assert result == pytest.approx({"mean": 3.0, "std": math.sqrt(3.5), "min": 1.0, "max": 6.0, "count": 4.0})


def test_score_statistics_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="scores is empty"):
        score_statistics([])
    with pytest.raises(ValueError, match="scores has 1 non-finite"):
        score_statistics([1.0, math.nan])
