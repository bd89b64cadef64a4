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

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from preftune.data import EncodedExample, Prompt, response_completions
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
