"""Judges score or compare responses: the gold reward, reward models, the simulated panel, LLM judges.

A pointwise judge has `score(prompts, responses) -> Tensor (N,)`; a pairwise judge has
`compare(prompts, first, second) -> PairVerdicts` (preftune/judges/base.py). `load_judge(spec)`
builds one from the spec string used everywhere on the command line (DESIGN.md section 2):

- `gold` or `gold:TASK`: the synthetic task's gold reward (pointwise);
- `rm:PATH` (or a bare PATH), `rm:PATH1,PATH2,...` for an ensemble: reward models (pointwise);
- `panel` or `panel:TASK`: the task's simulated annotator panel, one rating per pair (pairwise);
- `llm:PATH`: a local causal LM prompted to compare the two responses (pairwise);
- `http:URL`: an OpenAI-compatible server (e.g. vLLM's) prompted the same way (pairwise).

Commands that need a score per response (ppo, rloo, grpo, bon, eval) take pointwise judges only;
`loop`, `online-dpo` and `cai` rank samples through `compare` and take any judge (`pairwise=True`);
`is_pairwise_spec(spec)` tells, without building the judge, whether a spec names a pairwise-only one.
docs/judges.md describes every spec and option.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, overload

from preftune.judges.base import (
    GroupRanking,
    Judge,
    PairVerdicts,
    PairwiseJudge,
    compare,
    is_pairwise,
    rank_groups,
)
from preftune.judges.cache import VerdictCache
from preftune.judges.gold import GoldJudge
from preftune.judges.http import HTTPJudge, JudgeRequestError, RequestPolicy
from preftune.judges.llm import DEFAULT_MIN_ANSWER_MASS, LLMJudge
from preftune.judges.panel import PanelJudge
from preftune.judges.reward_model import STATS_FILE, EnsembleScores, RewardModelJudge
from preftune.judges.template import DEFAULT_PRINCIPLE, DEFAULT_TEMPLATE, PairTemplate, two_order_verdicts
from preftune.judges.win_rate import WinRateJudge, prompt_key
from preftune.models.loading import check_model_path

__all__ = [
    "DEFAULT_MIN_ANSWER_MASS",
    "DEFAULT_PRINCIPLE",
    "DEFAULT_TEMPLATE",
    "STATS_FILE",
    "EnsembleScores",
    "GoldJudge",
    "GroupRanking",
    "HTTPJudge",
    "Judge",
    "JudgeRequestError",
    "LLMJudge",
    "PairTemplate",
    "PairVerdicts",
    "PairwiseJudge",
    "PanelJudge",
    "RequestPolicy",
    "RewardModelJudge",
    "VerdictCache",
    "WinRateJudge",
    "check_judge_spec",
    "compare",
    "is_pairwise",
    "is_pairwise_spec",
    "load_judge",
    "prompt_key",
    "rank_groups",
    "two_order_verdicts",
]

_TEMPLATE_OPTIONS = ("template", "principle", "answers")
OPTIONS: dict[str, tuple[str, ...]] = {
    "gold": (),
    "rm": ("device", "dtype", "batch_size", "max_length", "truncation", "trust_remote_code"),
    "panel": ("seed", "panel_config"),
    "llm": (
        *_TEMPLATE_OPTIONS,
        "chat_template",
        "min_answer_mass",
        "max_length",
        "batch_size",
        "device",
        "dtype",
        "cache_dir",
        "trust_remote_code",
    ),
    "http": (
        *_TEMPLATE_OPTIONS,
        "model",
        "min_answer_mass",
        "top_logprobs",
        "cache_dir",
        "reserved",
        "mode",
        "extra_body",
        "timeout",
        "max_retries",
        "backoff",
        "max_backoff",
        "rate_limit",
        "concurrency",
    ),
}
"""The options each judge kind takes; options of other kinds are ignored, unknown ones are errors."""

PAIRWISE_ONLY = ("panel", "llm", "http")

PointwiseJudge = GoldJudge | RewardModelJudge
AnyJudge = GoldJudge | RewardModelJudge | PanelJudge | LLMJudge | HTTPJudge


@overload
def load_judge(spec: str, *, pairwise: Literal[False] = False, **options: Any) -> PointwiseJudge: ...


@overload
def load_judge(spec: str, *, pairwise: Literal[True], **options: Any) -> AnyJudge: ...


def load_judge(spec: str, *, pairwise: bool = False, **options: Any) -> AnyJudge:
    """The judge named by `spec` (module docstring).

    `pairwise=True` admits the pairwise-only judges (panel, llm, http). `options` go to the judge
    when its kind takes them (`OPTIONS`; None means the judge's default) and are ignored otherwise,
    so callers may pass device/batch_size/dtype whatever the spec names.
    """
    kind, url_or_path = _parse_spec(spec)
    known = {name for names in OPTIONS.values() for name in names}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown judge option {name!r}.{hint} Options: {sorted(known)}.")
    if kind in PAIRWISE_ONLY and not pairwise:
        raise ValueError(
            f"Judge {spec!r} compares pairs of responses and gives no score per response. The panel, llm: and "
            "http: judges are accepted by `preftune loop`, `preftune online-dpo` and `preftune cai`; this "
            "command needs a pointwise judge: gold (or gold:TASK) or rm:PATH."
        )
    given = {k: v for k, v in options.items() if k in OPTIONS[kind] and v is not None}
    if kind == "gold":
        return GoldJudge(url_or_path or "kindness")
    if kind == "panel":
        return PanelJudge(url_or_path or "kindness", **given)
    if kind in ("llm", "http"):
        template = PairTemplate.load(
            given.pop("template", None), given.pop("principle", None), given.pop("answers", ("A", "B"))
        )
        if not url_or_path:
            raise ValueError(f"Judge spec {spec!r} names no {'model path' if kind == 'llm' else 'URL'}.")
        if kind == "llm":
            return LLMJudge(url_or_path, template=template, **given)
        policy_fields = ("timeout", "max_retries", "backoff", "max_backoff", "rate_limit", "concurrency")
        policy = RequestPolicy(**{k: given.pop(k) for k in policy_fields if k in given})
        return HTTPJudge(url_or_path, template=template, policy=policy, **given)
    paths = [p for p in url_or_path.split(",") if p]
    if not paths:
        raise ValueError(
            f"Judge spec {spec!r} names no model. Use gold, gold:TASK, rm:PATH, a bare PATH, or rm:PATH1,PATH2."
        )
    return RewardModelJudge(paths, **given)


def check_judge_spec(spec: str, options: dict[str, Any] | None = None) -> None:
    """Fail early, before any model loads, when `spec` names a missing checkpoint (rm:PATH, llm:PATH)
    or an unknown judge kind, or when the user's judge `options` (--judge_options) hold one this kind of
    judge does not take (load_judge passes the callers' generic options only where they apply); loads
    nothing."""
    kind, rest = _parse_spec(spec)
    unused = sorted(set(options or {}) - set(OPTIONS[kind]))
    if unused:
        takes = ", ".join(OPTIONS[kind]) or "no options"
        raise ValueError(
            f"--judge_options {unused}: the {kind} judge ({spec}) does not take them; it takes {takes}."
        )
    if kind == "rm":
        for path in (p for p in rest.split(",") if p):
            check_model_path(path, "rm:")
    elif kind == "llm" and rest:
        check_model_path(rest, "llm:")


def is_pairwise_spec(spec: str) -> bool:
    """True when `spec` names a pairwise-only judge (panel, llm:, http: or a bare http(s):// URL), as
    `load_judge` parses it; False for gold and reward models. An unknown `kind:` is a ValueError."""
    return _parse_spec(spec)[0] in PAIRWISE_ONLY


def _parse_spec(spec: str) -> tuple[str, str]:
    """(kind, rest): 'rm' with the path(s) for a bare path; a bare http(s):// URL is an http judge."""
    kind, sep, rest = spec.partition(":")
    if kind in ("http", "https") and rest.startswith("//"):
        return "http", spec
    if kind in OPTIONS:
        return kind, rest
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]+", kind) and not Path(spec).exists():
        close = difflib.get_close_matches(kind, list(OPTIONS), n=1)
        hint = f" Did you mean {close[0]}:?" if close else ""
        raise ValueError(
            f"Unknown judge kind {kind!r} in spec {spec!r}.{hint} Use gold, gold:TASK, rm:PATH (or a bare "
            "PATH), panel, panel:TASK, llm:PATH or http:URL."
        )
    return "rm", spec
