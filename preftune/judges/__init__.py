"""Judges score responses: reward models, the synthetic task's gold reward, and (issue #7) LLM judges.

Every judge has `score(prompts, responses) -> Tensor (N,)`. `load_judge(spec)` builds one
from the spec string used everywhere on the command line (DESIGN.md section 2):
`gold` or `gold:TASK`, `rm:PATH` (or a bare PATH), `rm:PATH1,PATH2,...` for an ensemble.
"""

from __future__ import annotations

from typing import Any

from preftune.judges.base import (
    GroupRanking,
    Judge,
    PairVerdicts,
    PairwiseJudge,
    compare,
    is_pairwise,
    rank_groups,
)
from preftune.judges.gold import GoldJudge
from preftune.judges.reward_model import STATS_FILE, EnsembleScores, RewardModelJudge

__all__ = [
    "STATS_FILE",
    "EnsembleScores",
    "GoldJudge",
    "GroupRanking",
    "Judge",
    "PairVerdicts",
    "PairwiseJudge",
    "RewardModelJudge",
    "compare",
    "is_pairwise",
    "load_judge",
    "rank_groups",
]

_PLANNED = {"panel": "the simulated-panel judge", "llm": "LLM-as-judge", "http": "the HTTP judge"}


def load_judge(spec: str, **reward_model_options: Any) -> GoldJudge | RewardModelJudge:
    """The judge named by `spec`; `reward_model_options` go to RewardModelJudge (device, batch_size, ...)."""
    kind, _, rest = spec.partition(":")
    if kind == "gold":
        return GoldJudge(rest or "kindness")
    if kind in _PLANNED:
        raise ValueError(f"Judge spec {spec!r}: {_PLANNED[kind]} is not built yet (planned in issue #7).")
    target = rest if kind == "rm" else spec
    paths = [p for p in target.split(",") if p]
    if not paths:
        raise ValueError(
            f"Judge spec {spec!r} names no model. Use gold, gold:TASK, rm:PATH, a bare PATH, or rm:PATH1,PATH2."
        )
    return RewardModelJudge(paths, **reward_model_options)
