"""Token log-probabilities from logits, computed without keeping a full-vocabulary log-softmax."""

from __future__ import annotations

import torch
from torch import Tensor


def gather_token_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(labels[b, t] | context) for every position.

    Args:
        logits: (B, T, V) next-token logits aligned with `labels` (already shifted).
        labels: (B, T) token ids; any value is allowed at masked positions (use 0 for pads).
        temperature: logits are divided by it, as at sampling time.

    Returns:
        (B, T) float32 log-probs.

    `logsumexp` is taken row by row over the vocabulary so the (B, T, V) log-softmax is
    never materialised as a second full tensor.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    log_norm = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T)
    return picked - log_norm


def shifted_token_logps(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-prob of each token given the ones before it: (B, T) logits/ids -> (B, T-1).

    Position t of the result scores input_ids[:, t + 1]; pair it with `mask[:, 1:]`.
    """
    return gather_token_logps(logits[:, :-1], input_ids[:, 1:], temperature)
