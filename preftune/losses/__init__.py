"""Pure training objectives over tensors. Each returns (per-item losses, metrics)."""

from preftune.losses.reward import bradley_terry_loss
from preftune.losses.sft import sft_loss

__all__ = ["bradley_terry_loss", "sft_loss"]
