"""The reward-model judge: score (prompt, response) pairs with one or more reward models.

    judge = RewardModelJudge("runs/rm/final")
    judge.score(["Describe the garden.\\n"], ["the garden is warm and kind ."])  # tensor([0.83])
    judge.score_ensemble(prompts, responses)  # mean, std and per-head scores

Sequences are encoded exactly as the reward trainer encodes them (the same prompt and
response boundary and EOS), batched by length, right-padded, and scored at each
sequence's last token (read from its length, so pad == eos is fine). Several paths (or a
model with several heads) form an ensemble: the judge's score is the mean over all heads
and its standard deviation is the ensemble's disagreement.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune.data import Completion, EncodedExample, Prompt, encode_prompt_response, pad_batch
from preftune.data.tokenize import Truncation
from preftune.models.loading import check_model_path, load_scalar_model, load_tokenizer, token_id
from preftune.models.scalar import PooledScorer

logger = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"
"""Score statistics written next to a reward model (by `preftune rm` and `preftune eval`)."""


DEFAULT_MAX_LENGTH = 1024
"""Judge's max_length for a model without saved statistics (preftune saves the training max_length)."""


def reward_statistics(scores: Tensor, max_length: int) -> dict[str, Any]:
    """What reward_stats.json holds: mean and population std of the (ensemble-mean) score over
    (N, K) scores, the same per head, the count, and the max_length the sequences were cut to."""
    mean = scores.mean(dim=-1)  # (N,)
    return {
        "mean": mean.mean().item(),
        "std": mean.std(correction=0).item(),
        "count": int(scores.shape[0]),
        "head_mean": scores.mean(dim=0).tolist(),
        "head_std": scores.std(dim=0, correction=0).tolist(),
        "max_length": max_length,
    }


@dataclass(frozen=True)
class EnsembleScores:
    """Scores of N sequences: `mean` (N,), `std` (N,) over heads (0 for one head), `heads` (N, K)."""

    mean: Tensor
    std: Tensor
    heads: Tensor


class RewardModelJudge:
    """Pointwise scores from reward models (`rm:PATH`, or `rm:PATH1,PATH2` for an ensemble)."""

    def __init__(
        self,
        path: str | Sequence[str],
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
        max_length: int | None = None,
        truncation: Truncation = "left",
        trust_remote_code: bool = False,
    ) -> None:
        self.paths = [path] if isinstance(path, str) else list(path)
        if not self.paths:
            raise ValueError("RewardModelJudge needs at least one reward-model path.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.truncation: Truncation = truncation
        for p in self.paths:  # before any load: a missing folder or a hub id gets preftune's message
            check_model_path(p, "rm:")
        self.tokenizer = load_tokenizer(self.paths[0], trust_remote_code, "rm:")
        for other in self.paths[1:]:
            if load_tokenizer(other, trust_remote_code, "rm:").get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(
                    f"The reward models {self.paths[0]} and {other} use different tokenizers; an ensemble "
                    "must share one (train its members from the same base model)."
                )
        pad_id = token_id(self.tokenizer, "pad")
        self.scorers = [
            PooledScorer(
                load_scalar_model(
                    p,
                    dtype,
                    str(self.device),
                    trust_remote_code,
                    "rm:",
                    pad_token_id=pad_id,
                    require_classifier=True,
                )
            ).eval()
            for p in self.paths
        ]
        self.num_heads = sum(scorer.num_heads for scorer in self.scorers)
        saved = self.stats
        self.max_length = max_length or (saved or {}).get("max_length") or DEFAULT_MAX_LENGTH

    @property
    def stats(self) -> dict[str, Any] | None:
        """The score statistics saved next to a single model (reward_stats.json), else None.

        An ensemble of several paths has none: each file describes one model's scores, not the
        ensemble mean's; `preftune eval --reward_model rm:P1,P2` measures the ensemble's.
        """
        path = Path(self.paths[0]) / STATS_FILE
        if len(self.paths) > 1 or not path.exists():
            return None
        return json.loads(path.read_text())

    def encode(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> list[EncodedExample]:
        """The token sequences the judge scores, as the reward trainer encodes them."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"Got {len(prompts)} prompts but {len(responses)} responses; pass one prompt per response."
            )
        return [
            encode_prompt_response(self.tokenizer, p, r, self.max_length, self.truncation, "<judge>", i)
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
        ]

    def score(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> Tensor:
        """(N,) scores (the ensemble mean when there are several heads)."""
        return self.score_ensemble(prompts, responses).mean

    def score_ensemble(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> EnsembleScores:
        """Mean (N,), standard deviation (N,) and all heads' scores (N, K)."""
        heads = self.score_encoded(self.encode(prompts, responses))
        std = heads.std(dim=-1) if heads.shape[-1] > 1 else torch.zeros(heads.shape[0])
        return EnsembleScores(mean=heads.mean(dim=-1), std=std, heads=heads)

    @torch.no_grad()
    def score_encoded(self, examples: Sequence[EncodedExample]) -> Tensor:
        """(N, K) scores of already encoded sequences (K = heads over all models), on the CPU."""
        if not examples:
            return torch.zeros(0, self.num_heads)
        pad_id = token_id(self.tokenizer, "pad")
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # similar lengths per batch
        scores = torch.empty(len(examples), self.num_heads)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = {k: v.to(self.device) for k, v in pad_batch([examples[i] for i in chunk], pad_id).items()}
            T = batch["input_ids"].shape[1]
            last = torch.arange(len(chunk), device=self.device) * T + batch["attention_mask"].sum(dim=1) - 1
            heads = [
                scorer(batch["input_ids"], batch["attention_mask"], batch["position_ids"], last)
                for scorer in self.scorers
            ]
            scores[chunk] = torch.cat(heads, dim=-1).cpu()  # (B, K)
        return scores
