"""Attention masks for packed sequences.

transformers 5 passes a 4D `attention_mask` of shape (B, 1, T, T) to the attention
function unchanged (`masking_utils._preprocess_mask_arguments` returns it as-is). What
the mask values mean depends on the attention implementation:
- "sdpa" (the default) hands it to `F.scaled_dot_product_attention`: a bool mask
  (True = may attend) or an additive float mask both work;
- "eager" adds it to the attention scores: it needs an additive float mask (0 = attend,
  a large negative number = masked). A bool mask is silently wrong there (True adds 1).
So the additive float32 mask is the one that works everywhere (sdpa accepts a float32 mask
for fp32, bf16 and fp16 queries); a bool mask is 4x smaller and fine for sdpa only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def block_causal_mask(segment_ids: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """Block-diagonal causal mask for rows packed with several sequences.

    segment_ids: (B, T) integers, one id per packed sequence (1, 2, ...) and 0 for padding.
    Returns (B, 1, T, T): query i may attend key j iff both are in the same segment and
    j <= i. Padding attends causally to padding only, so no query row is fully masked
    (which would give NaN in softmax). dtype=torch.bool gives True = attend; a floating
    dtype gives an additive mask, 0 where attending and `finfo(dtype).min` elsewhere.
    """
    if segment_ids.ndim != 2:
        raise ValueError(f"segment_ids must have shape (B, T), got {tuple(segment_ids.shape)}.")
    if dtype != torch.bool and not dtype.is_floating_point:
        raise ValueError(f"dtype must be torch.bool or a floating dtype, got {dtype}.")
    T = segment_ids.shape[1]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    allowed = (same_segment & causal).unsqueeze(1)  # (B, 1, T, T)
    if dtype == torch.bool:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)


def prefix_sharing_mask(segment_ids: Tensor, branch_ids: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
    """Causal mask for rows packed with pairs laid out as [prompt][chosen][rejected].

    segment_ids: (B, T) one id per packed pair (1, 2, ...), 0 for padding.
    branch_ids: (B, T) 0 for the shared prompt, 1 for the chosen block, 2 for the rejected block.
    Returns (B, 1, T, T): query i may attend key j iff both are in the same segment, j <= i,
    and key j is in the prompt or in the same branch as i. So the rejected block sees the
    prompt but not the chosen block, and the prompt is computed once for both responses.
    With every branch id 0 this is `block_causal_mask`. dtype as in `block_causal_mask`.
    """
    if branch_ids.shape != segment_ids.shape:
        raise ValueError(
            f"branch_ids has shape {tuple(branch_ids.shape)}, segment_ids {tuple(segment_ids.shape)}; "
            "they must match."
        )
    if dtype != torch.bool and not dtype.is_floating_point:
        raise ValueError(f"dtype must be torch.bool or a floating dtype, got {dtype}.")
    blocks = block_causal_mask(segment_ids, torch.bool)  # (B, 1, T, T)
    key_branch = branch_ids[:, None, None, :]  # (B, 1, 1, T)
    query_branch = branch_ids[:, None, :, None]  # (B, 1, T, 1)
    allowed = blocks & ((key_branch == 0) | (key_branch == query_branch))
    if dtype == torch.bool:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)
