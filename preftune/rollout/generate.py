"""Batched sampling with the KV cache (transformers' generate), prompts left-padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from peft import PeftModel
from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

from preftune.models.loading import token_id


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    """Most tokens generated per response; generation also stops at EOS."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 keeps the whole distribution)."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 turns this off."""
    batch_size: int = 64
    """Prompts per generate() call."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens} and {self.batch_size}."
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")


def left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids and attention mask with the prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    config: SamplingConfig,
    seed: int = 0,
) -> list[list[int]]:
    """Response token ids per prompt, cut after the first EOS (EOS kept when generated)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = token_id(tokenizer, "eos"), token_id(tokenizer, "pad")
    # PeftModel forwards generate to its base model; pyright cannot see GenerationMixin.generate.
    generate = cast(GenerationMixin, model).generate  # pyright: ignore[reportAttributeAccessIssue]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    responses: list[list[int]] = []
    for start in range(0, len(prompts), config.batch_size):
        ids, mask = left_pad(prompts[start : start + config.batch_size], pad)
        greedy = config.temperature == 0
        out = generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=config.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else config.temperature,
            top_p=None if greedy else config.top_p,
            top_k=None if greedy else config.top_k,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for row in out[:, ids.shape[1] :].tolist():
            responses.append(row[: row.index(eos) + 1] if eos in row else row)
    torch.random.set_rng_state(generator_state)
    model.train(was_training)
    return responses
