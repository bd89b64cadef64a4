"""Supervised fine-tuning objective: next-token negative log-likelihood.

Paper: the standard language-modelling loss, as used for the SFT stage of InstructGPT
(arXiv 2203.02155, section 3.5). Implemented per token; the caller masks prompt tokens
(completion-only loss) and normalises with `ops.reduce_loss`.
Departure from the paper: none.
"""

from __future__ import annotations

from torch import Tensor


def sft_loss(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token NLL.

    Args:
        token_logps: (B, T) log pi(y_t | y_<t, x) of the target tokens.
        mask: (B, T) bool, True where a token is a training target.

    Returns:
        (B, T) per-token losses (0 where masked) and detached metrics: the summed NLL and
        the number of counted tokens, which the caller adds up across micro-batches and
        processes before dividing (a local mean would depend on how the batch was split).
    """
    losses = -token_logps * mask
    return losses, {"train/nll_sum": losses.detach().sum(), "train/num_loss_tokens": mask.sum()}
