"""Pure training objectives over tensors. Each returns (per-item losses, metrics)."""

from preftune.losses.sft import sft_loss

__all__ = ["sft_loss"]
