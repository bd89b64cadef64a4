"""Masked whitening: normalise values by the mean and variance of the entries that count."""

from __future__ import annotations

import torch
from torch import Tensor


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(values - mean) / sqrt(var + eps) over the True entries of `mask`; 0 where it is False.

    Args:
        values: (B, T) floats, e.g. advantages or token rewards; masked entries may hold anything
            (NaN included) and do not change the result.
        mask: (B, T) bool, True where a value counts; at least 2 entries must count.
        shift_mean: False adds the mean back, so values are scaled but not centred (as for rewards).
        eps: added to the variance before the square root.

    Returns:
        (B, T) whitened values in `values`' dtype. The variance is the unbiased one (divided by
        n - 1, n = number of counted entries), as in TRL's `masked_whiten`.
    """
    if values.shape != mask.shape:
        raise ValueError(
            f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape."
        )
    count = int(mask.sum())
    if count < 2:
        raise ValueError(
            f"whiten needs at least 2 counted entries for an unbiased variance, got {count}. "
            "Use a larger batch or do not whiten."
        )
    zeros = torch.zeros_like(values)
    counted = torch.where(mask, values, zeros)  # masked entries (even NaN) -> 0
    mean = counted.sum() / count
    centred = torch.where(mask, counted - mean, zeros)
    var = centred.square().sum() / (count - 1)
    whitened = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, zeros)
