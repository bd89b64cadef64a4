"""A pairwise judge seen as a pointwise one: the win rate of a response against an anchor response."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from torch import Tensor

from preftune.data import Completion, Prompt, response_completions
from preftune.judges.base import PairwiseJudge, compare


class WinRateJudge:
    """A pointwise view of a pairwise judge for the held-out evaluation: the probability that a response
    beats the anchor response to the same prompt (the starting policy's held-out sample), 0.5 when the
    two are identical or the judge cannot judge. The reward-hacking monitor reads it as the proxy."""

    def __init__(self, judge: PairwiseJudge) -> None:
        self.judge = judge
        self.anchors: dict[str, str] = {}
        """The anchor response's text, by prompt (`prompt_key`); set before the first evaluation."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> Tensor:
        """(N,) float32 P(responses[i] beats the anchor response to prompts[i])."""
        anchors = response_completions(prompts, [self.anchors[prompt_key(p)] for p in prompts])
        prob = torch.full((len(prompts),), 0.5, dtype=torch.float64)
        differ = [i for i, (r, a) in enumerate(zip(responses, anchors, strict=True)) if r != a]
        if differ:
            verdicts = compare(
                self.judge,
                [prompts[i] for i in differ],
                [responses[i] for i in differ],
                [anchors[i] for i in differ],
            )
            prob[differ] = torch.nan_to_num(verdicts.prob_first.double(), nan=0.5)
        return prob.float()


def prompt_key(prompt: Prompt) -> str:
    """A prompt as a dict key (text, or chat messages)."""
    return json.dumps(prompt, sort_keys=True)
