"""Dawid-Skene EM for binary pairwise verdicts: each rater's error rate and each item's true winner.

Dawid and Skene (1979), "Maximum likelihood estimation of observer error-rates using the EM
algorithm", J. R. Stat. Soc. C 28(1). An item i has an unknown winner z_i (1 = its response
"a", see `ratings.py`), with prior P(z_i = 1) = pi. Annotator j reports the truth with
probability 1 - f_j (symmetric, "one-coin" model) or, with `symmetric=False`, has a 2x2
confusion: P(v = 1 | z = 1) = s_j and P(v = 0 | z = 0) = t_j. EM alternates

    E:  log-odds(z_i = 1) = logit(pi) + sum over ratings r of i of  w_r,
        w_r = (2 v_r - 1) * log((1 - f_j) / f_j)                      (symmetric)
    M:  f_j = (expected errors of j + k * f_pooled) / (ratings of j + k)

How we depart from the paper:
- The class prior is fixed at pi = 0.5, not estimated. Which response is "a" (the
  lexicographically smaller text) is arbitrary, so P(a wins) carries no information; estimating
  it would make a single rating's posterior, and the consensus on an item whose ratings are
  split, depend on how the texts happen to sort.
- Identifiability. A rating of an item nobody else rated says nothing about its rater's error
  rate (the posterior of that item is that rater's own vote), and in the paper's M-step it only
  drags f_j towards its current value, which slows EM without moving its fixed point. The
  M-step therefore counts only ratings of items with at least two ratings; with mostly
  single-rated items (e.g. a panel with 20% overlap), the flip rates rest on the overlap
  items alone. When no item has two ratings, every flip rate is NaN.
- Smoothing. The M-step adds k = 2 pseudo-ratings at the pooled error rate of all annotators
  (a Beta prior with that mean), so an annotator with one or two overlap ratings gets a flip
  rate near the panel's instead of 0 or 1.
- Initialisation from the (soft) majority vote of each item; no random restarts, so the
  result is deterministic. Flip rates above 0.5 (a rater who systematically reverses) are
  allowed: EM then reads that rater's votes reversed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

SMOOTHING = 2.0
"""Pseudo-ratings at the pooled error rate added to every annotator in the M-step."""
PRIOR = 0.5
"""P(z = 1): fixed, since which response is "a" is arbitrary."""
_CLIP = 1e-6  # keeps log-odds finite when an estimated rate reaches 0 or 1


@dataclass(frozen=True)
class DawidSkeneResult:
    posterior: np.ndarray
    """(n_items,) P(the item's true winner is its response "a")."""
    items: list
    """Item keys, in the order of `posterior` (first appearance in the input)."""
    flip_rate: dict[str, float]
    """Annotator id -> estimated P(verdict != truth); NaN when no item has two ratings."""
    prior: float
    """P(a wins) before any rating: always 0.5 (fixed, see the module docstring); kept for callers."""
    iterations: int
    converged: bool


def vote_log_odds(
    annotators: Sequence[str], votes: Sequence[int] | np.ndarray, flip_rate: dict[str, float]
) -> np.ndarray:
    """(R,) each vote's evidence that its item's "a" wins: (2 v - 1) * log((1 - f) / f) for the
    symmetric model; summed over an item's ratings it gives the posterior log-odds (the prior is 0.5)."""
    flips = np.clip(np.array([flip_rate[a] for a in annotators], dtype=np.float64), _CLIP, 1 - _CLIP)
    return (2 * np.asarray(votes, dtype=np.float64) - 1) * np.log((1 - flips) / flips)


def _index(values: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """Distinct values in order of first appearance, and each value's index into them."""
    positions: dict[Hashable, int] = {}
    index = np.fromiter((positions.setdefault(v, len(positions)) for v in values), np.int64, len(values))
    return list(positions), index


def _check_inputs(items: Sequence[Hashable], annotators: Sequence[str], votes: Sequence[int]) -> np.ndarray:
    if not (len(items) == len(annotators) == len(votes)):
        raise ValueError(
            f"items, annotators and votes need one entry per rating, got lengths {len(items)}, "
            f"{len(annotators)} and {len(votes)}."
        )
    if len(votes) == 0:
        raise ValueError("dawid_skene needs at least one rating, got none.")
    votes_array = np.asarray(votes, dtype=np.int64)
    if not np.isin(votes_array, (0, 1)).all():
        raise ValueError(
            f"votes must be 0 or 1 (1 = the rater chose the item's response 'a'), got {set(votes)}."
        )
    return votes_array


def dawid_skene(
    items: Sequence[Hashable],
    annotators: Sequence[str],
    votes: Sequence[int],
    *,
    max_iter: int = 200,
    tol: float = 1e-6,
    symmetric: bool = True,
) -> DawidSkeneResult:
    """Fit the Dawid-Skene model to binary ratings, one entry per rating in each argument.

    `votes[r]` is 1 when rater `annotators[r]` chose response "a" of item `items[r]`. Returns
    the posterior P(a wins) of every item, each annotator's flip rate (with `symmetric=False`,
    the mean of its two error rates 1 - s_j and 1 - t_j) and the prior (0.5); `converged` is False
    when `max_iter` ran out before every parameter (s_j and t_j) moved less than `tol` in one iteration.
    """
    v = _check_inputs(items, annotators, votes).astype(np.float64)
    item_keys, item = _index(items)
    names, rater = _index(annotators)
    num_items, num_raters = len(item_keys), len(names)
    per_item = np.bincount(item, minlength=num_items)
    informative = per_item[item] >= 2  # (R,) ratings of multiply-rated items: they identify the rates
    q = np.bincount(item, weights=v, minlength=num_items) / per_item  # majority vote, ties at 0.5
    sens = np.full(num_raters, np.nan)  # P(v=1 | z=1); equals spec in the symmetric model
    spec = np.full(num_raters, np.nan)  # P(v=0 | z=0)
    converged, iteration = False, 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 (the count is reported)
        new_sens, new_spec = _m_step(q[item], v, rater, informative, num_raters, symmetric)
        change = max(
            np.nanmax(np.abs(new_sens - sens), initial=0.0), np.nanmax(np.abs(new_spec - spec), initial=0.0)
        )
        first = np.isnan(sens).all()
        sens, spec = new_sens, new_spec
        if not informative.any():
            break
        q = _posterior(item, v, rater, sens, spec, num_items)
        if not first and change < tol:
            converged = True
            break
    flips = (1 - sens) if symmetric else ((1 - sens) + (1 - spec)) / 2
    return DawidSkeneResult(
        posterior=q,
        items=item_keys,
        flip_rate={name: float(flips[j]) for j, name in enumerate(names)},
        prior=PRIOR,
        iterations=iteration,
        converged=converged,
    )


def _m_step(
    q: np.ndarray, v: np.ndarray, rater: np.ndarray, informative: np.ndarray, num_raters: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed accuracies from the informative ratings: (sens, spec), each (num_raters,).

    q: (R,) current P(z = 1) of each rating's item; v: (R,) votes."""
    if not informative.any():
        nan = np.full(num_raters, np.nan)
        return nan, nan
    w = informative.astype(np.float64)
    if symmetric:
        correct = w * (v * q + (1 - v) * (1 - q))  # expected agreement with the truth
        pooled = correct.sum() / w.sum()
        rate = (np.bincount(rater, correct, num_raters) + SMOOTHING * pooled) / (
            np.bincount(rater, w, num_raters) + SMOOTHING
        )
        return rate, rate
    hits, positives = w * v * q, w * q  # votes for a when a wins, items where a wins
    right_rejections, negatives = w * (1 - v) * (1 - q), w * (1 - q)
    sens = (np.bincount(rater, hits, num_raters) + SMOOTHING * hits.sum() / positives.sum()) / (
        np.bincount(rater, positives, num_raters) + SMOOTHING
    )
    spec = (
        np.bincount(rater, right_rejections, num_raters)
        + SMOOTHING * right_rejections.sum() / negatives.sum()
    ) / (np.bincount(rater, negatives, num_raters) + SMOOTHING)
    return sens, spec


def _posterior(
    item: np.ndarray,
    v: np.ndarray,
    rater: np.ndarray,
    sens: np.ndarray,
    spec: np.ndarray,
    num_items: int,
) -> np.ndarray:
    """(num_items,) P(z = 1 | votes): the E-step, summed in log-odds for stability."""
    s, t = np.clip(sens[rater], _CLIP, 1 - _CLIP), np.clip(spec[rater], _CLIP, 1 - _CLIP)
    # log P(v | z=1) - log P(v | z=0) for each rating
    evidence = v * (np.log(s) - np.log(1 - t)) + (1 - v) * (np.log(1 - s) - np.log(t))
    log_odds = np.bincount(item, evidence, num_items)  # logit(PRIOR) = 0
    return 1 / (1 + np.exp(-log_odds))
