"""Between flat per-token tensors (one entry per response token) and padded (sequences, T) ones."""

from __future__ import annotations

import torch
from torch import Tensor


def pad_ragged(values: Tensor, seq_index: Tensor, num_seqs: int, fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """Lay flat per-token values out as right-padded rows, one row per sequence.

    Args:
        values: (M, ...) one entry per token, the tokens of a sequence contiguous and in order.
        seq_index: (M,) integer sequence of each token, non-decreasing, in [0, num_seqs), as
            `response_seq` from preftune/data/pairs.py.
        num_seqs: number of rows; a sequence with no tokens gets an all-False row.
        fill: value at padded positions.

    Returns:
        padded (num_seqs, T, ...) in `values`' dtype and mask (num_seqs, T) bool, T the longest
        sequence's length (at least 1). `padded[mask]` gives back `values` in their flat order.
    """
    if seq_index.ndim != 1 or values.shape[:1] != seq_index.shape:
        raise ValueError(
            f"seq_index must have shape (M,) matching values' first dim, got seq_index "
            f"{tuple(seq_index.shape)} and values {tuple(values.shape)}."
        )
    if num_seqs < 0:
        raise ValueError(f"num_seqs must be >= 0, got {num_seqs}.")
    if seq_index.numel() and (int(seq_index.min()) < 0 or int(seq_index.max()) >= num_seqs):
        raise ValueError(
            f"seq_index values must be in [0, {num_seqs}), got min {int(seq_index.min())} and max "
            f"{int(seq_index.max())}."
        )
    if bool(torch.any(seq_index[1:] < seq_index[:-1])):
        raise ValueError("seq_index must be non-decreasing: the tokens of one sequence must be contiguous.")
    lengths = torch.bincount(seq_index, minlength=num_seqs)  # (num_seqs,)
    T = max(int(lengths.max()) if num_seqs else 0, 1)
    starts = torch.cumsum(lengths, dim=0) - lengths  # (num_seqs,) flat index of each row's first token
    position = torch.arange(seq_index.numel(), device=seq_index.device) - starts[seq_index]  # (M,)
    padded = values.new_full((num_seqs, T, *values.shape[1:]), fill)
    padded = padded.index_put((seq_index, position), values)
    mask = torch.arange(T, device=seq_index.device)[None, :] < lengths[:, None]  # (num_seqs, T)
    return padded, mask
