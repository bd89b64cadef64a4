"""Evaluation metrics for a pairwise reward model, computed with numpy from per-pair scores.

Inputs are 1-D float arrays of length N, one entry per preference pair; ``margins`` is
``r(chosen) - r(rejected)``. Definitions (a margin or gold margin of exactly 0 is a tie):

- Wilson interval (Wilson 1927, JASA 22:209): score interval for a binomial proportion
  ``successes / n``, z from the normal quantile.
- Pairwise accuracy: ``mean(margin > 0) + 0.5 * mean(margin == 0)``, with its Wilson interval.
- ECE (expected calibration error, Guo et al. 2017, arXiv 1706.04599, eq. 3): with ``p = sigmoid(margin)``, confidence ``c = max(p, 1 - p)``, correct = margin > 0 (ties 0.5),
  equal-width bins over [0.5, 1.0], ``ECE = sum_b (n_b / N) * |mean(correct in b) - mean(c in b)|``.
- Length probe: share of pairs whose chosen response is longer (equal lengths count half), accuracy of
  the prefer-longer and prefer-shorter baselines, reward-model accuracy split by which response is
  longer, and Pearson / Spearman correlation between score and length over all 2N responses.
- Gold agreement: share of pairs with ``gold_margin != 0`` where ``sign(margin) == sign(gold_margin)``
  (margin == 0 counts half), with its Wilson interval.
- Label-gold agreement: share of pairs with ``gold_margin != 0`` whose labelled chosen has the higher
  gold reward: the reference for a reward model trained on those labels (which can exceed it when
  the labels' errors are independent, since training averages them out).
- Score statistics: mean, population standard deviation (ddof=0), min, max and count of the scores.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from preftune.stats import as_vector, check_same_length, wilson_interval


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}. Use e.g. 0.95.")


def _tie_half_correct(margins: np.ndarray) -> np.ndarray:
    """Per-pair correctness, shape (N,): 1 if margin > 0, 0.5 if margin == 0, else 0."""
    return (margins > 0) + 0.5 * (margins == 0)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two (M,) arrays; NaN when either is constant."""
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    dx = x - x.mean()
    dy = y - y.mean()
    r = float(np.dot(dx, dy) / math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy))))
    return min(1.0, max(-1.0, r))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of an (M,) array; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    is_first = np.concatenate(([True], sorted_values[1:] != sorted_values[:-1]))  # (M,) starts of tie groups
    group = np.cumsum(is_first) - 1  # (M,) tie-group index of each sorted position
    starts = np.flatnonzero(is_first)  # (G,) 0-based first position of each group
    ends = np.append(starts[1:], values.size)  # (G,) exclusive end position
    group_rank = (starts + ends - 1) / 2 + 1  # (G,) mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = group_rank[group]
    return ranks


def pairwise_accuracy(margins: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Share of pairs with ``margin > 0`` (ties count half), with a Wilson interval.

    ``margins``: (N,) reward of chosen minus reward of rejected.
    Returns ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high`` and ``num_pairs``.
    """
    margins = as_vector(margins, "margins", "pair")
    _check_confidence(confidence)
    successes = float(_tie_half_correct(margins).sum())
    low, high = wilson_interval(successes, margins.size, confidence)
    return {
        "accuracy": successes / margins.size,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "num_pairs": float(margins.size),
    }


def expected_calibration_error(margins: ArrayLike, num_bins: int = 10) -> float:
    """ECE of ``p = sigmoid(margin)`` read as P(chosen preferred), in the symmetric binary form.

    ``margins``: (N,). Confidence ``c = max(p, 1 - p) = sigmoid(|margin|)`` in [0.5, 1]; a pair is
    correct when margin > 0 (p > 0.5), half correct when margin == 0. Bins split [0.5, 1.0] into
    ``num_bins`` equal intervals [lo, hi) (a c on an edge goes to the upper bin), the last one closed so
    c = 1.0 lands in it.
    Correctness is read from the margin's sign, not from the rounded p, so a tiny positive margin whose
    sigmoid rounds to 0.5 still counts as correct.
    """
    margins = as_vector(margins, "margins", "pair")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}. Use e.g. 10.")
    confidences = 1.0 / (1.0 + np.exp(-np.abs(margins)))  # (N,) stable: exp of a non-positive number
    correct = _tie_half_correct(margins)  # (N,)
    edges = np.linspace(0.5, 1.0, num_bins + 1)  # (num_bins + 1,)
    bins = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, num_bins - 1)  # (N,)
    # n_b / N * |mean(correct_b) - mean(c_b)| == |sum(correct_b) - sum(c_b)| / N
    correct_sum = np.bincount(bins, weights=correct, minlength=num_bins)
    confidence_sum = np.bincount(bins, weights=confidences, minlength=num_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / margins.size)


def length_probe(
    margins: ArrayLike,
    chosen_lengths: ArrayLike,
    rejected_lengths: ArrayLike,
    chosen_scores: ArrayLike,
    rejected_scores: ArrayLike,
) -> dict[str, float]:
    """How much the reward model and the labels track response length.

    All inputs (N,): ``margins`` = chosen score minus rejected score, lengths in tokens, scores the
    reward of each response. Equal lengths count half in the shares. Accuracies on the chosen-longer
    and chosen-shorter subsets are NaN when the subset is empty. Correlations pool the 2N responses
    (chosen and rejected) and are NaN when scores or lengths are constant; Spearman uses average ranks.
    """
    margins = as_vector(margins, "margins", "pair")
    chosen_lengths = as_vector(chosen_lengths, "chosen_lengths", "pair")
    rejected_lengths = as_vector(rejected_lengths, "rejected_lengths", "pair")
    chosen_scores = as_vector(chosen_scores, "chosen_scores", "pair")
    rejected_scores = as_vector(rejected_scores, "rejected_scores", "pair")
    check_same_length(
        "pair",
        margins=margins,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        chosen_scores=chosen_scores,
        rejected_scores=rejected_scores,
    )
    for name, lengths in (("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths)):
        if np.any(lengths < 0):
            raise ValueError(f"{name} must be >= 0 tokens, got minimum {lengths.min()}. Pass token counts.")
    chosen_longer_share = float(_tie_half_correct(chosen_lengths - rejected_lengths).mean())
    correct = _tie_half_correct(margins)  # (N,)
    longer = chosen_lengths > rejected_lengths  # (N,)
    shorter = chosen_lengths < rejected_lengths  # (N,)
    scores = np.concatenate((chosen_scores, rejected_scores))  # (2N,)
    lengths = np.concatenate((chosen_lengths, rejected_lengths))  # (2N,)
    return {
        "chosen_longer_share": chosen_longer_share,
        "prefer_longer_accuracy": chosen_longer_share,
        "prefer_shorter_accuracy": 1.0 - chosen_longer_share,
        "accuracy_chosen_longer": float(correct[longer].mean()) if longer.any() else math.nan,
        "num_chosen_longer": float(longer.sum()),
        "accuracy_chosen_shorter": float(correct[shorter].mean()) if shorter.any() else math.nan,
        "num_chosen_shorter": float(shorter.sum()),
        "length_correlation": _pearson(scores, lengths),
        "length_spearman": _pearson(_average_ranks(scores), _average_ranks(lengths)),
    }


def gold_agreement(margins: ArrayLike, gold_margins: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Agreement of the reward model's preference with a gold reward's, with a Wilson interval.

    ``margins``, ``gold_margins``: (N,). Only pairs with ``gold_margin != 0`` count; a pair agrees when
    the signs match and counts half when ``margin == 0``. Returns ``gold_agreement``,
    ``gold_agreement_ci_low``, ``gold_agreement_ci_high`` and ``num_gold_pairs``.
    """
    margins = as_vector(margins, "margins", "pair")
    gold_margins = as_vector(gold_margins, "gold_margins", "pair")
    check_same_length("pair", margins=margins, gold_margins=gold_margins)
    _check_confidence(confidence)
    decided = gold_margins != 0  # (N,)
    if not decided.any():
        raise ValueError(
            f"All {gold_margins.size} gold_margins are 0, so no pair has a gold preference. "
            "Check that the gold reward was computed for both responses."
        )
    # margin * sign(gold) > 0 iff the signs match; == 0 iff margin is a tie
    successes = float(_tie_half_correct(margins[decided] * np.sign(gold_margins[decided])).sum())
    num_gold_pairs = int(decided.sum())
    low, high = wilson_interval(successes, num_gold_pairs, confidence)
    return {
        "gold_agreement": successes / num_gold_pairs,
        "gold_agreement_ci_low": low,
        "gold_agreement_ci_high": high,
        "num_gold_pairs": float(num_gold_pairs),
    }


def label_gold_agreement(gold_margins: ArrayLike) -> float:
    """Share of pairs with ``gold_margin > 0`` among pairs with ``gold_margin != 0``.

    ``gold_margins``: (N,) gold reward of the labelled chosen minus that of the labelled rejected.
    """
    gold_margins = as_vector(gold_margins, "gold_margins", "pair")
    decided = gold_margins != 0  # (N,)
    if not decided.any():
        raise ValueError(
            f"All {gold_margins.size} gold_margins are 0, so no pair has a gold preference. "
            "Check that the gold reward was computed for both responses."
        )
    return float((gold_margins[decided] > 0).mean())


def score_statistics(scores: ArrayLike) -> dict[str, float]:
    """Mean, population std (ddof=0), min, max and count of ``scores``, shape (N,)."""
    scores = as_vector(scores, "scores", "pair")
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=0)),
        "min": float(scores.min()),
        "max": float(scores.max()),
        "count": float(scores.size),
    }
