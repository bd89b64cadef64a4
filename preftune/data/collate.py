"""Batches from encoded examples: padded batches and packed rows.

Padded: `pad_batch` pads on the right (training) or the left (generation).
Packed (SFT): `pack_examples` bins examples into rows of at most `max_length` tokens and
`collate_packed` lays each row out with position ids that restart at 0 per sequence and
a 4D block-diagonal causal mask, so each sequence attends only to itself: per-sequence
log-probs equal those of the sequence run alone (tested on a tiny Llama, sdpa and eager).
The additive float32 mask works with the "sdpa" and "eager" attention implementations;
flash-attention kernels take no 4D mask: for those, pass `position_ids` without
`attention_mask` and with `use_cache=False` (transformers 5 then detects the packing from
the position restarts; with a cache it silently does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from preftune.data.tokenize import EncodedExample
from preftune.ops.masks import block_causal_mask


def pad_batch(
    examples: Sequence[EncodedExample],
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Pad examples into one batch.

    Returns input_ids (B, T) long, attention_mask (B, T) long (1 = token), loss_mask (B, T)
    bool, position_ids (B, T) long (0.. over each example's tokens, 0 at padding, so left
    and right padding give the same positions), num_loss_tokens () long (targets) and
    num_tokens () long (non-pad tokens).
    """
    _check_pad_args(examples, pad_token_id)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    T = max(len(example) for example in examples)
    if pad_to_multiple_of is not None:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    for b, example in enumerate(examples):
        n = len(example)
        span = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[b, span] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[b, span] = 1
        loss_mask[b, span] = torch.tensor(example.loss_mask, dtype=torch.bool)
        position_ids[b, span] = torch.arange(n)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "num_loss_tokens": loss_mask.sum(),
        "num_tokens": attention_mask.sum(),
    }


def pack_examples(examples: Sequence[EncodedExample], max_length: int) -> list[list[EncodedExample]]:
    """Greedy first-fit packing into rows of at most `max_length` tokens (deterministic).

    Each example goes into the first row (in the order rows were opened) with room for it,
    so rows hold examples in input order and a row's examples come from nearby positions
    unless a short example fills an earlier gap.
    """
    for example in examples:
        if len(example) > max_length:
            raise ValueError(
                f"Row {example.row} has {len(example)} tokens, more than the packing max_length={max_length}. "
                "Encode with the same (or a smaller) max_length."
            )
    bins = first_fit([len(example) for example in examples], max_length)
    return [[examples[i] for i in indices] for indices in bins]


def first_fit(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `sizes` binned first-fit into bins of total size <= capacity, in input order.

    O(N log N) with a max-tree over the bins' free space. Every size must be <= capacity.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    if any(size > capacity for size in sizes):
        raise ValueError(f"An item of size {max(sizes)} does not fit in bins of capacity {capacity}.")
    size = 1
    while size < len(sizes):
        size *= 2
    # Leaves size..2*size-1 hold each bin's free space (bins not yet opened are empty, so
    # the leftmost one with room is the next new bin); inner nodes hold the max of children.
    free = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for index, item in enumerate(sizes):
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= item else 2 * node + 1
        if node - size == len(bins):
            bins.append([])
        bins[node - size].append(index)
        free[node] -= item
        while node > 1:
            node //= 2
            free[node] = max(free[2 * node], free[2 * node + 1])
    return bins


def collate_packed(
    rows: Sequence[Sequence[EncodedExample]],
    pad_token_id: int,
    pad_to: int | None = None,
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Lay out packed rows (from `pack_examples`) as one batch.

    Returns input_ids (B, T) long, loss_mask (B, T) bool, position_ids (B, T) long
    (restarting at 0 for each sequence, 0 at padding), segment_ids (B, T) long (1.. per
    sequence, 0 at padding), attention_mask (B, 1, T, T) from `block_causal_mask`
    (additive float32 by default; torch.bool for sdpa only), num_loss_tokens () long
    (targets) and num_tokens () long (non-pad tokens).
    T is the longest row, or `pad_to` for fixed shapes.
    """
    _check_pad_args([example for row in rows for example in row], pad_token_id)
    lengths = [sum(len(example) for example in row) for row in rows]
    T = max(lengths) if pad_to is None else pad_to
    if T < max(lengths):
        raise ValueError(f"pad_to={pad_to} is shorter than the longest packed row ({max(lengths)} tokens).")
    B = len(rows)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    segment_ids = torch.zeros((B, T), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for segment, example in enumerate(row, start=1):
            span = slice(start, start + len(example))
            input_ids[b, span] = torch.tensor(example.input_ids, dtype=torch.long)
            loss_mask[b, span] = torch.tensor(example.loss_mask, dtype=torch.bool)
            position_ids[b, span] = torch.arange(len(example))
            segment_ids[b, span] = segment
            start += len(example)
    return {
        "input_ids": input_ids,
        "attention_mask": block_causal_mask(segment_ids, mask_dtype),
        "loss_mask": loss_mask,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "num_loss_tokens": loss_mask.sum(),
        "num_tokens": (segment_ids > 0).sum(),
    }


def _check_pad_args(examples: Sequence[EncodedExample], pad_token_id: int | None) -> None:
    if not examples:
        raise ValueError("Cannot build a batch from no examples.")
    if pad_token_id is None:
        raise ValueError(
            "pad_token_id is None: set tokenizer.pad_token (e.g. to the eos token) before batching."
        )
    if any(len(example) == 0 for example in examples):
        raise ValueError("An example has no tokens; every encoded example needs at least one.")
