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


def masked_token_logps(logits: Tensor, labels: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Like `gather_token_logps`, but computed only where `mask` is True (0 elsewhere).

    Args:
        logits: (B, T, V), any float dtype; only the N selected rows are upcast to float32.
        labels: (B, T) token ids.
        mask: (B, T) bool, True at response positions.

    Returns:
        (B, T) float32 log-probs, 0 where the mask is False. With long prompts this keeps
        the float32 working set at (N, V) instead of (B, T, V).
    """
    selected = gather_token_logps(logits[mask].unsqueeze(0), labels[mask].unsqueeze(0), temperature)[
        0
    ]  # (N,)
    return torch.zeros(labels.shape, dtype=selected.dtype, device=logits.device).masked_scatter(
        mask, selected
    )
