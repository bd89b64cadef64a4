"""Pure training objectives over tensors. Each returns (per-item losses, metrics)."""

from preftune.losses.pairwise import (
    PAIRWISE_LOSSES,
    PairwiseLoss,
    chosen_nll,
    combine_losses,
    f_divergence_logratio,
)
from preftune.losses.pairwise_variants import VARIANT_LOSS_FUNCTIONS
from preftune.losses.reward import bradley_terry_loss
from preftune.losses.sft import sft_loss
from preftune.losses.unpaired import kto_loss, kto_recommended_weights, kto_reference_point

__all__ = [
    "PAIRWISE_LOSSES",
    "VARIANT_LOSS_FUNCTIONS",
    "PairwiseLoss",
    "bradley_terry_loss",
    "chosen_nll",
    "combine_losses",
    "f_divergence_logratio",
    "kto_loss",
    "kto_recommended_weights",
    "kto_reference_point",
    "sft_loss",
]
