"""From sampled responses to training tensors: sequences, per-token model outputs, judged scores.

The RL trainers (PPO, RLOO, GRPO) share these steps between sampling and the update:
- `rollout_examples`: each [prompt][response] as an EncodedExample (response tokens are targets);
- `per_token`: run a model over the sequences in chunks and lay its flat per-response-token
  output (M,) out as (N, T) like the rollout's mask (row-major order is the flat order);
- `judge_scores`: decode the responses and score them with any judge;
- `shape_scores`: normalise, clip and penalise missing EOS (the score that goes into the reward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from preftune.data import Completion, EncodedExample, Prompt
from preftune.data.pairs import collate_responses
from preftune.judges import Judge
from preftune.rollout.generate import RolloutBatch

Batch = dict[str, Tensor]


def rollout_examples(rollout: RolloutBatch) -> list[EncodedExample]:
    """[prompt][response] sequences of the rollout, the response tokens as targets."""
    return [
        EncodedExample(
            input_ids=prompt + response,
            loss_mask=[False] * len(prompt) + [True] * len(response),
            num_prompt_tokens=len(prompt),
            num_truncated=0,
            row=i,
        )
        for i, (prompt, response) in enumerate(zip(rollout.prompt_ids, rollout.response_ids, strict=True))
    ]


def collate_on(examples: Sequence[EncodedExample], pad_token_id: int, device: torch.device) -> Batch:
    """`collate_responses` on `device`."""
    return {k: v.to(device) for k, v in collate_responses(examples, pad_token_id).items()}


def model_inputs(batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The positional arguments of ResponseLogps / ActorCritic: ids, mask, positions, logit index, targets."""
    return (
        batch["input_ids"],
        batch["attention_mask"],
        batch["position_ids"],
        batch["response_logit_index"],
        batch["response_target"],
    )


@torch.no_grad()
def per_token(
    fn: Callable[[Batch], dict[str, Tensor]],
    examples: Sequence[EncodedExample],
    mask: Tensor,
    chunk_size: int,
    pad_token_id: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Run `fn` (a batch -> named (M,) values per response token) over `examples` in chunks of
    `chunk_size`; each value laid out as (N, T) float32 like `mask` (N, T), 0 where it is False."""
    out: dict[str, Tensor] = {}
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start : start + chunk_size]
        rows = mask[start : start + len(chunk)]  # (n, T)
        for name, flat in fn(collate_on(chunk, pad_token_id, device)).items():  # flat: (M,)
            full = out.setdefault(name, torch.zeros(mask.shape, dtype=torch.float32))
            full[start : start + len(chunk)] = torch.zeros(rows.shape).masked_scatter(
                rows, flat.float().cpu()
            )
    return out


def response_completions(prompts: Sequence[Prompt], texts: Sequence[str]) -> list[Completion]:
    """Each decoded response in its prompt's format: text, or one assistant message for chat prompts."""
    return [
        text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
        for prompt, text in zip(prompts, texts, strict=True)
    ]


def decode_responses(tokenizer: PreTrainedTokenizerBase, rollout: RolloutBatch) -> list[str]:
    """The responses as text, special tokens (EOS, pads) removed."""
    return [str(tokenizer.decode(ids, skip_special_tokens=True)) for ids in rollout.response_ids]


def judge_scores(
    judge: Judge, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], rollout: RolloutBatch
) -> tuple[Tensor, list[str]]:
    """(N,) float32 judge scores (on the CPU) of the rollout's responses to `prompts` (one per
    response), and the texts. A judge that returns another shape or a non-finite score is an error."""
    texts = decode_responses(tokenizer, rollout)
    scores = torch.as_tensor(judge.score(list(prompts), response_completions(prompts, texts)))
    scores = scores.detach().to("cpu", torch.float32)
    if scores.shape != (len(texts),):
        raise ValueError(
            f"The judge {type(judge).__name__} returned scores of shape {tuple(scores.shape)} for {len(texts)} "
            "responses; a judge's score() must return one number per response, shape (N,)."
        )
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise ValueError(
            f"The judge {type(judge).__name__} returned {bad} non-finite scores (NaN or inf) for {len(texts)} "
            "responses; check the reward model (e.g. load it in float32) or the judge function."
        )
    return scores, texts


def shape_scores(
    raw: Tensor, ended: Tensor, mean: float, std: float, clip: float, missing_eos_penalty: float
) -> Tensor:
    """(N,) scores for the reward: (raw - mean) / std, clipped to [-clip, clip] (clip 0: no clipping),
    minus `missing_eos_penalty` for each response cut at the length limit (`ended` False).

    The normalisation uses the judge's mean and std on the initial policy's samples (Ziegler et al.
    2019, arXiv 1909.08593, section 2), so the KL coefficient means the same for every judge.
    """
    scores = (raw - mean) / max(std, 1e-8)
    if clip > 0:
        scores = scores.clamp(-clip, clip)
    return scores - missing_eos_penalty * (~ended).float()


@dataclass
class ScoringConfig:
    """How sampled responses are judged and turned into the score at the end of each response."""

    judge: str = ""
    """Judge spec: gold (the synthetic task's gold reward), rm:PATH (a reward model; a bare PATH too), or
    rm:PATH1,PATH2 (an ensemble's mean)."""
    reward_normalization: Literal["initial_policy", "none"] = "initial_policy"
    """initial_policy: scores are standardised with the judge's mean and std on the starting policy's
    samples (Ziegler et al. 2019), measured once before training; none: raw scores."""
    reward_norm_samples: int = 256
    """Prompts sampled from the starting policy to measure the judge's mean and std."""
    reward_clip: float = 10.0
    """Clip standardised scores to [-reward_clip, reward_clip]; 0 turns clipping off."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response cut at --max_new_tokens without EOS (the 'EOS trick');
    0 turns it off."""
    judge_batch_size: int = 64
    """Sequences per reward-model forward."""
    task: str = "auto"
    """Synthetic task whose gold reward is logged at evaluation: auto (from task.json beside the
    prompts), none, or a task name."""
    heldout_judge: str = ""
    """A second judge (e.g. rm:OTHER_RM) scored on the held-out prompts, which the reward-hacking monitor
    compares the optimised judge with; the synthetic task's gold reward takes this role when it applies."""

    def __post_init__(self) -> None:
        if self.reward_norm_samples < 2:
            raise ValueError(f"reward_norm_samples must be >= 2, got {self.reward_norm_samples}.")
        if self.reward_clip < 0 or self.missing_eos_penalty < 0:
            raise ValueError(
                f"reward_clip and missing_eos_penalty must be >= 0, got {self.reward_clip} and "
                f"{self.missing_eos_penalty}."
            )
        if self.judge_batch_size < 1:
            raise ValueError(f"judge_batch_size must be >= 1, got {self.judge_batch_size}.")
