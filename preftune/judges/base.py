"""The judge interface: pointwise scores and pairwise preferences, and how one becomes the other.

Two kinds of judge share the spec strings of DESIGN.md (`gold`, `rm:PATH`, `panel`, `llm:PATH`,
`http:URL`):

- a **pointwise** judge has `score(prompts, responses) -> Tensor (N,)` (reward models, the
  gold reward);
- a **pairwise** judge has `compare(prompts, first, second) -> PairVerdicts`: the probability
  that `first` is the better response, NaN where the judge could not judge (the simulated panel,
  LLM judges).

Everything that ranks samples (the practice loop, online DPO, CAI's AI labels) goes through
`compare` and `rank_groups`, which accept either kind: a pointwise judge compares by its scores,
a pairwise judge ranks a group of samples by its mean preference over the group's other samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from preftune.data import Completion, Prompt


@runtime_checkable
class Judge(Protocol):
    """A pointwise judge: one score per (prompt, response), higher is better."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> Tensor: ...


@runtime_checkable
class PairwiseJudge(Protocol):
    """A pairwise judge: how likely `first[i]` is the better answer to `prompts[i]` than `second[i]`."""

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts: ...


@dataclass(frozen=True)
class PairVerdicts:
    """Verdicts on N pairs.

    prob_first: (N,) float64, P(first is better) in [0, 1]; NaN where the judge could not judge.
    consistent: (N,) bool for judges that see each pair in both orders (True where both orders
        pick the same winner), None for judges without a presentation order.
    reasons: why each NaN verdict could not be judged ("" where judged), or None when all were judged.
    """

    prob_first: Tensor
    consistent: Tensor | None = None
    reasons: list[str] | None = None

    def __post_init__(self) -> None:
        p = self.prob_first
        if p.ndim != 1:
            raise ValueError(f"prob_first must be 1-D (one verdict per pair), got shape {tuple(p.shape)}.")
        judged = p[~torch.isnan(p)]
        if bool(((judged < 0) | (judged > 1)).any()):
            raise ValueError("prob_first must be probabilities in [0, 1] (or NaN for 'could not judge').")
        if self.consistent is not None and self.consistent.shape != p.shape:
            raise ValueError(
                f"consistent has shape {tuple(self.consistent.shape)}, prob_first {tuple(p.shape)}."
            )
        if self.reasons is not None and len(self.reasons) != len(p):
            raise ValueError(f"reasons has {len(self.reasons)} entries for {len(p)} verdicts.")

    def __len__(self) -> int:
        return len(self.prob_first)

    @property
    def judged(self) -> Tensor:
        """(N,) bool: the judge gave a verdict."""
        return ~torch.isnan(self.prob_first)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and provenance: pairs, could_not_judge, and (for order-aware judges)
        position_consistency, the share of judged pairs whose winner does not depend on the order."""
        judged = self.judged
        result: dict[str, Any] = {"pairs": len(self), "could_not_judge": int((~judged).sum())}
        if self.consistent is not None:
            n = int(judged.sum())
            result["position_consistency"] = float(self.consistent[judged].double().mean()) if n else math.nan
        if self.reasons is not None:
            counts: dict[str, int] = {}
            for reason in self.reasons:
                if reason:
                    counts[reason] = counts.get(reason, 0) + 1
            result["could_not_judge_reasons"] = counts
        return result

    @staticmethod
    def concat(parts: Sequence[PairVerdicts]) -> PairVerdicts:
        """The verdicts of several calls, in order."""
        if not parts:
            return PairVerdicts(torch.zeros(0, dtype=torch.float64))
        with_order = [p.consistent is not None for p in parts]
        if any(with_order) and not all(with_order):
            raise ValueError("Cannot concatenate verdicts of order-aware and order-free judges.")
        consistent = (
            torch.cat([p.consistent for p in parts if p.consistent is not None]) if all(with_order) else None
        )
        reasons = None
        if any(p.reasons is not None for p in parts):
            reasons = [r for p in parts for r in (p.reasons or [""] * len(p))]
        return PairVerdicts(torch.cat([p.prob_first for p in parts]), consistent, reasons)


def check_pairs(prompts: Sequence[Any], first: Sequence[Any], second: Sequence[Any]) -> None:
    """Raise unless there is one prompt per (first, second) pair."""
    if not (len(prompts) == len(first) == len(second)):
        raise ValueError(
            f"Got {len(prompts)} prompts, {len(first)} first and {len(second)} second responses; pass one "
            "prompt per pair."
        )


def is_pairwise(judge: Any) -> bool:
    """True for a judge that compares pairs (and has no pointwise score)."""
    return hasattr(judge, "compare") and not hasattr(judge, "score")


def compare(
    judge: Judge | PairwiseJudge,
    prompts: Sequence[Prompt],
    first: Sequence[Completion],
    second: Sequence[Completion],
) -> PairVerdicts:
    """Pairwise verdicts from any judge; a pointwise one prefers the higher score (1, 0, or 0.5 on a tie)."""
    check_pairs(prompts, first, second)
    if hasattr(judge, "compare"):
        return judge.compare(prompts, first, second)  # type: ignore[union-attr]
    scores = judge.score([*prompts, *prompts], [*first, *second]).double()  # type: ignore[union-attr]
    a, b = scores[: len(prompts)], scores[len(prompts) :]
    return PairVerdicts(0.5 + 0.5 * torch.sign(a - b))


@dataclass(frozen=True)
class GroupRanking:
    """Samples ranked within groups of k (the k responses to one prompt).

    scores: (P, k) float64: the judge's score (pointwise judges), or the mean probability of beating
        the group's other samples (pairwise judges; NaN for a sample no comparison could judge).
    verdicts: the pairwise verdicts behind the scores (pairwise judges), else None.
    prob: (P, k, k) float64, P(sample i beats sample j) from the direct comparison (pairwise judges:
        0.5 for identical responses and on the diagonal, NaN where the judge could not judge), else None.
    """

    scores: Tensor
    verdicts: PairVerdicts | None = None
    prob: Tensor | None = None

    def best_worst(self) -> tuple[Tensor, Tensor, Tensor]:
        """(best, worst, has_pair): per group the first index with the highest and lowest score (NaN
        ignored); has_pair is False where the best does not score above the worst (ties, or fewer than
        two judged samples)."""
        filled_hi = torch.nan_to_num(self.scores, nan=-math.inf)
        filled_lo = torch.nan_to_num(self.scores, nan=math.inf)
        best, worst = filled_hi.argmax(dim=1), filled_lo.argmin(dim=1)
        has_pair = filled_hi.gather(1, best[:, None])[:, 0] > filled_lo.gather(1, worst[:, None])[:, 0]
        return best, worst, has_pair


def rank_groups(
    judge: Judge | PairwiseJudge, prompts: Sequence[Prompt], responses: Sequence[Completion], k: int
) -> GroupRanking:
    """Score `responses` (P * k, the k samples of each prompt consecutive; `prompts` has P entries).

    A pointwise judge scores each response. A pairwise judge compares every pair of a group once
    (k (k - 1) / 2 comparisons per prompt; order-aware judges see both orders themselves) and a sample's
    score is its mean probability of being preferred over the group's other samples (a Borda count).
    Identical responses are not compared: they tie at 0.5.
    """
    if k < 1 or len(responses) != len(prompts) * k:
        raise ValueError(
            f"Expected {len(prompts)} prompts x k={k} responses, got {len(responses)} responses."
        )
    if not is_pairwise(judge):
        repeated = [p for p in prompts for _ in range(k)]
        scores = judge.score(repeated, responses)  # type: ignore[union-attr]
        return GroupRanking(torch.as_tensor(scores, dtype=torch.float64).reshape(len(prompts), k))
    index = [
        (g, i, j)
        for g in range(len(prompts))
        for i, j in itertools.combinations(range(k), 2)
        if responses[g * k + i] != responses[g * k + j]
    ]
    verdicts = judge.compare(  # type: ignore[union-attr]
        [prompts[g] for g, _, _ in index],
        [responses[g * k + i] for g, i, _ in index],
        [responses[g * k + j] for g, _, j in index],
    )
    prob = torch.full((len(prompts), k, k), 0.5, dtype=torch.float64)  # identical responses tie
    for (g, i, j), p in zip(index, verdicts.prob_first.tolist(), strict=True):
        prob[g, i, j], prob[g, j, i] = p, 1.0 - p  # NaN stays NaN both ways
    off_diagonal = ~torch.eye(k, dtype=torch.bool).expand(len(prompts), k, k)
    judged = off_diagonal & ~torch.isnan(prob)
    total = torch.where(judged, prob, torch.zeros_like(prob)).sum(dim=2)
    count = judged.sum(dim=2)
    scores = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
    return GroupRanking(scores, verdicts, prob)
