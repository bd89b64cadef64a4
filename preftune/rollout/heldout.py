"""Held-out evaluation of a policy during RL training: sample, judge, gold reward, KL, length.

Each process samples its share of the held-out prompts with a fixed seed (the same noise at
every evaluation, so successive evaluations differ only by the policy) and returns sums; the
trainer adds them over processes and divides by the count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from preftune.data.prompts import PromptSet
from preftune.judges import GoldJudge, Judge, RewardModelJudge
from preftune.models.logps import ResponseLogps
from preftune.rollout.backends import GenerationBackend, TransformersBackend
from preftune.rollout.config import SamplingConfig
from preftune.rollout.experience import (
    judge_scores,
    model_inputs,
    per_token,
    response_completions,
    rollout_examples,
)


@dataclass
class HeldOutEvaluator:
    """Samples one response per held-out prompt and measures it."""

    prompts: PromptSet
    judge: Judge
    heldout: Judge | None
    """The held-out judge the proxy is compared with: the synthetic task's gold reward when the prompts come
    from one, else --heldout_judge (None: no held-out judge)."""
    tokenizer: PreTrainedTokenizerBase
    sampling: SamplingConfig
    seed: int
    chunk_size: int
    pad_token_id: int

    @property
    def heldout_key(self) -> str:
        """`gold_reward` for the synthetic task's gold judge, `heldout_reward` for another judge; without
        one, an ensemble judge's disagreement (`ensemble_std`, the std over its heads) stands in."""
        if self.heldout is None and isinstance(self.judge, RewardModelJudge) and self.judge.num_heads > 1:
            return "ensemble_std"
        return "gold_reward" if isinstance(self.heldout, GoldJudge) else "heldout_reward"

    @torch.no_grad()
    def sums(
        self,
        policy: ResponseLogps,
        reference: Callable[[], contextlib.AbstractContextManager[ResponseLogps]],
        rank: int,
        world: int,
        backend: GenerationBackend | None = None,
    ) -> dict[str, Tensor | float]:
        """Sums over this process's prompts: `reward` (judge), `heldout_key` (held-out judge), `kl` (sequence-level
        log pi/pi_ref of the samples, a k1 estimate of KL(pi || pi_ref)), `length` (tokens), `count`. The samples
        come from `backend` (the training run's, holding the policy's weights), default transformers' generate
        on the policy."""
        mine = list(range(rank, len(self.prompts), world))
        if not mine:
            return {"reward": 0.0, "kl": 0.0, "length": 0.0, "count": 0.0, self.heldout_key: 0.0}
        device = next(policy.parameters()).device
        backend = backend or TransformersBackend(policy.model, self.tokenizer)
        rollout = backend.generate(
            [self.prompts.ids[i] for i in mine], self.sampling, self.seed, prompt_keys=mine
        )
        examples = rollout_examples(rollout)

        def logps_of(model: ResponseLogps) -> Tensor:
            return per_token(
                lambda b: {"logps": model(*model_inputs(b))},
                examples,
                rollout.mask,
                self.chunk_size,
                self.pad_token_id,
                device,
            )["logps"]

        logps = logps_of(policy)
        with reference() as ref:
            ref_logps = logps_of(ref)
        prompts = [self.prompts.prompts[i] for i in mine]
        raw, texts = judge_scores(self.judge, self.tokenizer, prompts, rollout)
        sums: dict[str, Tensor | float] = {
            "reward": raw.sum(),
            "kl": (logps - ref_logps)[rollout.mask].sum(),
            "length": rollout.lengths.sum().float(),
            "count": float(len(mine)),
            self.heldout_key: 0.0,
        }
        if self.heldout is not None:
            sums[self.heldout_key] = self.heldout.score(prompts, texts).sum()
        elif self.heldout_key == "ensemble_std":
            assert isinstance(self.judge, RewardModelJudge)
            sums["ensemble_std"] = self.judge.score_ensemble(
                prompts, response_completions(prompts, texts)
            ).std.sum()
        return sums
