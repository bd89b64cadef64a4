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


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: (..., V) -> (...) float32.

    H = logsumexp(z) - sum_v p(v) z(v), p = softmax(z), which needs no log of a tiny
    probability; z is first shifted by its max (H does not change) so that the two terms stay
    small and their difference keeps its precision. Logits are taken as they are: divide by the
    sampling temperature first. Entries of -inf (tokens masked out, as by top-k) have p = 0 and
    add nothing, also to the gradient. Over a leading dim the rows are done one by one, as in `gather_token_logps`, so
    the float32 working set is one row's, not the whole (..., V) tensor's.
    """
    if logits.ndim >= 3:
        return torch.stack([entropy_from_logits(row) for row in logits])
    logits = logits.float()
    logits = logits - logits.amax(dim=-1, keepdim=True)  # (..., V), max 0
    log_norm = torch.logsumexp(logits, dim=-1)  # (...)
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    # p * z is 0 * -inf = NaN at masked-out tokens; put 0 there before multiplying (gradient too)
    finite_logits = torch.where(probs > 0, logits, torch.zeros_like(logits))
    return log_norm - (probs * finite_logits).sum(dim=-1)
