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
