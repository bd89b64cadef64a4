"""Pure training objectives over tensors. Each returns (per-item losses, metrics)."""

from preftune.losses.kl import KL_ESTIMATORS, KLEstimator, kl_estimate, token_kl
from preftune.losses.pairwise import (
    PAIRWISE_LOSSES,
    PairwiseLoss,
    chosen_nll,
    f_divergence_logratio,
)
from preftune.losses.pairwise_variants import VARIANT_LOSS_FUNCTIONS
from preftune.losses.policy_gradient import (
    adaptive_kl_coef,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)
from preftune.losses.reward import bradley_terry_loss
from preftune.losses.sft import sft_loss
from preftune.losses.unpaired import kto_loss, kto_recommended_weights, kto_reference_point

__all__ = [
    "KL_ESTIMATORS",
    "KLEstimator",
    "PAIRWISE_LOSSES",
    "VARIANT_LOSS_FUNCTIONS",
    "PairwiseLoss",
    "adaptive_kl_coef",
    "bradley_terry_loss",
    "chosen_nll",
    "f_divergence_logratio",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "kto_loss",
    "kto_recommended_weights",
    "kto_reference_point",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "sft_loss",
    "token_kl",
]
