"""Masked reductions. `reduce_loss` is the one place that normalises token losses."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Normalization = Literal["token", "sequence"]


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` where `mask` is True (same shape), over `dim` or everything."""
    masked = torch.where(mask, values, torch.zeros_like(values))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is True; 0 where nothing counts (never NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def reduce_loss(
    token_losses: Tensor,
    mask: Tensor,
    normalization: Normalization = "token",
    num_items: float | Tensor | None = None,
) -> Tensor:
    """Reduce (B, T) per-token losses to the scalar whose gradient the optimizer follows.

    normalization="token": sum of counted token losses / `num_items`, the number of counted
    tokens in the *global* batch (all micro-batches of the step, all processes), so the
    result does not depend on how the batch was split. normalization="sequence": each
    sequence's mean token loss, summed, / `num_items` sequences.

    With num_items=None the local count is used (the plain mean of this micro-batch).
    """
    if normalization == "token":
        total = masked_sum(token_losses, mask)
        count = mask.sum() if num_items is None else num_items
    elif normalization == "sequence":
        total = masked_mean(token_losses, mask, dim=-1).sum()
        count = token_losses.shape[0] if num_items is None else num_items
    else:
        raise ValueError(f"Unknown normalization {normalization!r}; use 'token' or 'sequence'.")
    return total / torch.as_tensor(count, dtype=total.dtype, device=total.device).clamp(min=1)
