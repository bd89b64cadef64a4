"""The gold judge: the synthetic task's programmatic reward ("what people really prefer")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from preftune.data import Completion, Prompt
from preftune.tasks import get_task


class GoldJudge:
    """Pointwise gold reward of a built-in synthetic task (`gold`, or `gold:TASK`)."""

    def __init__(self, task: str = "kindness") -> None:
        self.task = get_task(task)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> Tensor:
        """(N,) gold rewards. Prompts and responses must be plain text."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"Got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per response."
            )
        scores = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            if not isinstance(prompt, str) or not isinstance(response, str):
                raise ValueError(
                    f"Item {i}: the gold judge of task {self.task.name!r} scores plain-text prompts and responses, "
                    "not message lists."
                )
            scores.append(self.task.gold_reward(prompt, response))
        return torch.tensor(scores, dtype=torch.float32)
