"""The panel judge (`panel`, `panel:TASK`): the synthetic world's simulated annotators as a pairwise judge.

    judge = PanelJudge("kindness", seed=0)
    judge.compare(["Describe the garden.\\n"], ["the garden is kind ."], ["the garden is dull ."])
    # PairVerdicts(prob_first=tensor([1.]), consistent=None)

Each pair gets one simulated human rating (`preftune.tasks.panel.rate_pairs` with overlap 0), with
all the panel's biases: rater groups, position and length bias, careless flips and fatigue.
prob_first is therefore 0 or 1. The rating noise comes from one numpy Generator seeded once and
kept in the judge: the same seed and the same calls give the same verdicts, and every call draws
fresh noise (a pair compared twice may get two different ratings, as with real annotators).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from preftune.data import Completion, Prompt
from preftune.judges.base import PairVerdicts, check_pairs
from preftune.tasks import PanelConfig, get_task, rate_pairs


class PanelJudge:
    """Pairwise verdicts from the simulated annotator panel of a built-in task."""

    def __init__(
        self,
        task: str = "kindness",
        seed: int = 0,
        panel_config: PanelConfig | Mapping[str, Any] | None = None,
    ) -> None:
        """`panel_config`: a PanelConfig, or a dict of its fields (as `--judge_options` gives it)."""
        self.task = get_task(task)
        if panel_config is None or isinstance(panel_config, PanelConfig):
            config = panel_config or PanelConfig()
        elif isinstance(panel_config, Mapping):
            fields = [f.name for f in dataclasses.fields(PanelConfig)]
            for name in panel_config:
                if name not in fields:
                    close = difflib.get_close_matches(str(name), fields, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ValueError(f"Unknown panel_config key {name!r}.{hint} Keys: {fields}.")
            config = PanelConfig(**{**panel_config, "overlap": 0.0})
        else:
            raise TypeError(
                f"panel_config must be a PanelConfig or a dict of its fields, got {type(panel_config).__name__}."
            )
        # one rating per pair: overlap is for measuring agreement between raters, not for judging
        self.config = dataclasses.replace(config, overlap=0.0)
        self.rng = np.random.default_rng(seed)

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts:
        """(N,) prob_first in {0, 1}: one simulated rating of each pair."""
        check_pairs(prompts, first, second)
        for i, (prompt, a, b) in enumerate(zip(prompts, first, second, strict=True)):
            if not (isinstance(prompt, str) and isinstance(a, str) and isinstance(b, str)):
                raise ValueError(
                    f"Pair {i}: the panel judge rates plain-text prompts and responses of task "
                    f"{self.task.name!r}, not message lists."
                )
            if not self.task.is_task_prompt(prompt):
                raise ValueError(
                    f"Pair {i}: the panel of task {self.task.name!r} only rates its own prompts (e.g. "
                    f"{self.task.prompt_pool()[0]!r}), got {prompt[:80]!r}. Use an llm: or http: judge for "
                    "other prompts."
                )
        rows = rate_pairs(
            self.task,
            [str(p) for p in prompts],
            [(str(a), str(b)) for a, b in zip(first, second, strict=True)],
            self.config,
            self.rng,
        )
        prob_first = torch.zeros(len(prompts), dtype=torch.float64)
        for row in rows:  # one row per pair (overlap 0)
            prob_first[row["pair_id"]] = 1.0 if row["chosen"] == first[row["pair_id"]] else 0.0
        return PairVerdicts(prob_first)
