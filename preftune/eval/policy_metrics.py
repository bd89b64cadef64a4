"""Evaluation metrics for a policy, computed with numpy from per-prompt scores, lengths and log-ratios.

Inputs are 1-D arrays of length N, one entry per evaluation prompt: ``scores[i]`` and
``baseline_scores[i]`` are a judge's scores of the policy's and the baseline's responses to prompt i,
``lengths`` their lengths (tokens or characters, as long as both use the same unit). Equal scores are
a tie and count one half. Definitions:

- Win rate: ``mean(score > baseline_score) + 0.5 * mean(score == baseline_score)``, paired by prompt.
- Paired percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw N prompt indices with
  replacement, the same indices for both arrays, recompute the statistic; repeat ``num_resamples``
  times and report the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles.
- Length-controlled win rate, simplified from AlpacaEval 2 (Dubois et al. 2024, arXiv 2404.04475,
  section 3). With ``d_i = length_i - baseline_length_i`` and ``s = std(d)`` (1 when it is 0), fit
  ``P(policy wins on prompt i) = sigmoid(a + b * d_i / s)`` by maximum likelihood and report
  ``sigmoid(a)``: the win rate the judge would give at equal lengths. A tie is two observations of
  weight one half (one win, one loss). How we depart from the paper: one linear length term (the
  paper passes it through tanh), no per-instruction difficulty term and no model-identity term
  (one policy against one baseline), and an L2 penalty ``_LC_L2_PENALTY / 2 * (a^2 + b^2)`` so the fit
  stays finite when the outcomes are separable (all wins, or the judge always prefers the longer one).
- Sequence KL: with ``y ~ pi(.|x)`` and ``logratio = log pi(y|x) - log pi_ref(y|x)``,
  ``E[logratio] = KL(pi(.|x) || pi_ref(.|x))``; its sample mean is the k1 Monte-Carlo estimate
  (Schulman 2020, "Approximating KL divergence"), reported with its standard error.
- distinct-n (Li et al. 2016, arXiv 1510.03055, section 4.3): distinct word n-grams over all texts
  divided by the total number of word n-grams; words are whitespace-separated tokens, compared exactly
  (case-sensitive), and n-grams do not cross from one text into the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from preftune.eval.stats import bootstrap_mean_ci
from preftune.stats import as_vector, check_same_length

_LC_L2_PENALTY = 1e-3
"""L2 weight on (a, b) in the length-controlled fit, against a log-likelihood summed over prompts.

A Gaussian prior of standard deviation ~32 on the logit scale: negligible next to any real data, but it
bounds the fit on separable data (N wins out of N give ``N * exp(-a) ~= 1e-3 * a``, e.g. a ~= 8 for N = 4).
"""
_LC_MAX_NEWTON_STEPS = 200


def _check_bootstrap_args(confidence: float, num_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}. Use e.g. 0.95.")
    if (
        isinstance(num_resamples, bool)
        or not isinstance(num_resamples, (int, np.integer))
        or num_resamples < 1
    ):
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}. Use e.g. 2000.")


def _check_lengths(lengths: np.ndarray, name: str) -> None:
    if np.any(lengths < 0):
        raise ValueError(f"{name} must be >= 0, got minimum {lengths.min()}. Pass token or character counts.")


def _tie_half_wins(scores: np.ndarray, baseline_scores: np.ndarray) -> np.ndarray:
    """Per-prompt outcome, shape (N,): 1 if the policy's score is higher, 0.5 if equal, else 0."""
    return (scores > baseline_scores) + 0.5 * (scores == baseline_scores)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` as ``exp(-softplus(-z))``: no overflow for any finite z."""
    return np.exp(-np.logaddexp(0.0, -logits))


def _fit_penalized_logistic(x: np.ndarray, targets: np.ndarray, l2: float) -> tuple[float, float]:
    """Intercept and slope (a, b) maximising the L2-penalised logistic log-likelihood.

    ``x``, ``targets``: (N,), targets in [0, 1]. Objective, strictly concave for ``l2 > 0``:
    ``sum_i [t_i log sigmoid(z_i) + (1 - t_i) log sigmoid(-z_i)] - l2 / 2 * (a^2 + b^2)``, ``z = a + b x``.
    A target of 0.5 is the same term (and gradient and Hessian) as a win and a loss of weight 0.5 each.
    Newton's method (IRLS): ``(X^T W X + l2 I) step = X^T (t - p) - l2 theta`` with ``W = p (1 - p)``,
    the step halved while it lowers the objective, so it cannot overshoot on near-separable data.
    """
    design = np.column_stack((np.ones_like(x), x))  # (N, 2): intercept column, length column
    theta = np.zeros(2)

    def objective(params: np.ndarray) -> float:
        logits = design @ params  # (N,)
        log_likelihood = targets @ np.logaddexp(0.0, -logits) + (1 - targets) @ np.logaddexp(0.0, logits)
        return -float(log_likelihood) - 0.5 * l2 * float(params @ params)

    current = objective(theta)
    for _ in range(_LC_MAX_NEWTON_STEPS):
        probs = _sigmoid(design @ theta)  # (N,)
        gradient = design.T @ (targets - probs) - l2 * theta  # (2,)
        hessian = (design.T * (probs * (1 - probs))) @ design + l2 * np.eye(2)  # (2, 2), negated
        step = np.linalg.solve(hessian, gradient)
        if np.max(np.abs(step)) < 1e-10:
            return float(theta[0]), float(theta[1])
        # Tolerate float noise near the optimum, where the objective is flat to machine precision.
        while objective(theta + step) < current - 1e-12 * (1.0 + abs(current)):
            step = step / 2
        theta = theta + step
        current = objective(theta)
    raise RuntimeError(
        f"Length-controlled win rate: Newton's method did not converge in {_LC_MAX_NEWTON_STEPS} steps "
        f"(a = {theta[0]}, b = {theta[1]}). Please report this with the scores and lengths."
    )


def win_rate(scores: ArrayLike, baseline_scores: ArrayLike) -> float:
    """Share of prompts where the policy's score beats the baseline's on the same prompt; ties count half.

    ``scores``, ``baseline_scores``: (N,). ``win_rate(a, b) + win_rate(b, a) == 1``.
    """
    scores = as_vector(scores, "scores", "prompt")
    baseline_scores = as_vector(baseline_scores, "baseline_scores", "prompt")
    check_same_length("prompt", scores=scores, baseline_scores=baseline_scores)
    return float(_tie_half_wins(scores, baseline_scores).mean())


def paired_bootstrap_ci(
    values_a: ArrayLike,
    values_b: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of ``statistic(values_a, values_b)`` over prompts.

    ``values_a``, ``values_b``: (N,) or (N, K) float arrays, row i belonging to prompt i. Each resample
    draws N row indices with replacement and applies the same indices to both arrays, so the pairing
    (and the correlation it carries) is kept. Deterministic for a given ``seed``.
    """
    values_a = np.asarray(values_a, dtype=np.float64)
    values_b = np.asarray(values_b, dtype=np.float64)
    for name, values in (("values_a", values_a), ("values_b", values_b)):
        if values.ndim not in (1, 2) or values.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape (N,) or (N, K) with N >= 1 prompts, got shape {values.shape}."
            )
    check_same_length("prompt", values_a=values_a, values_b=values_b)
    _check_bootstrap_args(confidence, num_resamples)
    rng = np.random.default_rng(seed)
    num_prompts = values_a.shape[0]
    resampled = np.empty(int(num_resamples), dtype=np.float64)  # (R,)
    for r in range(int(num_resamples)):
        index = rng.integers(0, num_prompts, size=num_prompts)  # (N,) shared by both arrays
        resampled[r] = statistic(values_a[index], values_b[index])
    bad = np.flatnonzero(~np.isfinite(resampled))
    if bad.size:
        raise ValueError(
            f"statistic returned a non-finite value ({resampled[bad[0]]}) on {bad.size} of "
            f"{num_resamples} resamples. Make it defined on every resample of the prompts."
        )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(low), float(high)


def win_rate_ci(
    scores: ArrayLike,
    baseline_scores: ArrayLike,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Win rate of ``scores`` over ``baseline_scores`` (both (N,)) and its paired bootstrap interval."""
    point = win_rate(scores, baseline_scores)
    interval = paired_bootstrap_ci(scores, baseline_scores, win_rate, confidence, num_resamples, seed)
    return point, interval


def length_controlled_win_rate(
    scores: ArrayLike, baseline_scores: ArrayLike, lengths: ArrayLike, baseline_lengths: ArrayLike
) -> float:
    """Win rate at zero length difference, ``sigmoid(a)`` of the logistic fit in the module docstring.

    All inputs (N,). ``a`` is invariant to the length unit (``d`` is divided by its std). When every
    length difference is the same nonzero value the intercept and slope are not separately identified;
    the penalty then splits the logit between them and the result shrinks towards 0.5.
    """
    scores = as_vector(scores, "scores", "prompt")
    baseline_scores = as_vector(baseline_scores, "baseline_scores", "prompt")
    lengths = as_vector(lengths, "lengths", "prompt")
    baseline_lengths = as_vector(baseline_lengths, "baseline_lengths", "prompt")
    check_same_length(
        "prompt",
        scores=scores,
        baseline_scores=baseline_scores,
        lengths=lengths,
        baseline_lengths=baseline_lengths,
    )
    _check_lengths(lengths, "lengths")
    _check_lengths(baseline_lengths, "baseline_lengths")
    length_diffs = lengths - baseline_lengths  # (N,)
    # Compare values, not the std, to detect constant differences: the std of [0.1] * 3 is 1.4e-17.
    scale = float(length_diffs.std()) if np.ptp(length_diffs) > 0 else 1.0
    intercept, _ = _fit_penalized_logistic(
        length_diffs / scale, _tie_half_wins(scores, baseline_scores), _LC_L2_PENALTY
    )
    return float(_sigmoid(np.asarray(intercept)))


def length_controlled_win_rate_ci(
    scores: ArrayLike,
    baseline_scores: ArrayLike,
    lengths: ArrayLike,
    baseline_lengths: ArrayLike,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Length-controlled win rate (all inputs (N,)) and its paired bootstrap interval over prompts.

    Each resample refits the logistic model, its length scale ``s`` included.
    """
    point = length_controlled_win_rate(scores, baseline_scores, lengths, baseline_lengths)
    policy = np.column_stack((np.asarray(scores, dtype=np.float64), np.asarray(lengths, dtype=np.float64)))
    baseline = np.column_stack(
        (np.asarray(baseline_scores, dtype=np.float64), np.asarray(baseline_lengths, dtype=np.float64))
    )  # (N, 2): score, length

    def statistic(policy_rows: np.ndarray, baseline_rows: np.ndarray) -> float:
        return length_controlled_win_rate(
            policy_rows[:, 0], baseline_rows[:, 0], policy_rows[:, 1], baseline_rows[:, 1]
        )

    interval = paired_bootstrap_ci(policy, baseline, statistic, confidence, num_resamples, seed)
    return point, interval


def sequence_kl(logratios: ArrayLike) -> tuple[float, float]:
    """k1 estimate of KL(pi || pi_ref) and its standard error: ``(mean, std(ddof=1) / sqrt(N))``.

    ``logratios``: (N,) sequence log-ratios ``log pi(y|x) - log pi_ref(y|x)`` of responses sampled from
    pi (not from the reference, or the mean is not the KL). The standard error is 0.0 when N = 1.
    Single estimates can be negative; only the expectation is >= 0.
    """
    logratios = as_vector(logratios, "logratios", "prompt")
    if logratios.size == 1:
        return float(logratios[0]), 0.0
    return float(logratios.mean()), float(logratios.std(ddof=1) / math.sqrt(logratios.size))


def mean_ci(
    values: ArrayLike, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` (N,) and its percentile bootstrap interval (``eval.stats.bootstrap_mean_ci``)."""
    values = as_vector(values, "values", "prompt")
    _check_bootstrap_args(confidence, num_resamples)
    mean, low, high = bootstrap_mean_ci(values, confidence, int(num_resamples), seed)
    return mean, (low, high)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all ``texts`` divided by their total count; 0.0 when there are none.

    ``texts``: a sequence of M strings. Words are ``str.split()`` tokens; a text of W words has
    ``max(W - n + 1, 0)`` n-grams, none spanning two texts. E.g. ``["a b a b"]``, n = 2: ab, ba, ab -> 2/3.
    """
    if isinstance(texts, str):
        raise TypeError(
            f"texts must be a sequence of strings, got one string {texts[:40]!r}. Wrap it in a list."
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}. Use 1 for distinct-1, 2 for distinct-2.")
    distinct: set[tuple[str, ...]] = set()
    total = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{i}] must be a string, got {type(text).__name__}. Decode responses first."
            )
        words = text.split()
        ngrams = [tuple(words[start : start + n]) for start in range(len(words) - n + 1)]
        distinct.update(ngrams)
        total += len(ngrams)
    return len(distinct) / total if total else 0.0
