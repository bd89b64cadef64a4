"""Bradley-Terry reward-model objective on preference pairs.

Paper: InstructGPT (arXiv 2203.02155), eq. 1: loss = -log sigmoid(r(x, y_w) - r(x, y_l)).
Also implemented, each off by default:
- a per-pair margin m subtracted inside the sigmoid, -log sigmoid(r_w - r_l - m), as in
  Llama 2 (arXiv 2307.09288, eq. 2), for pairs rated "significantly better";
- label smoothing eps for noisy labels: the expected loss when each label is flipped with
  probability eps, (1 - eps) * -log sigmoid(d - m) + eps * -log sigmoid(-d - m), d = r_w - r_l
  (the cDPO form of the same idea, Mitchell 2023; with a margin, the flipped label asks the
  other response to win by it);
- reward centering, coef * (r_w + r_l)^2, which pins the mean reward near 0 so that
  scores are comparable across models (Eisenstein et al. 2023, arXiv 2312.09244).
Departure from the papers: the terms are combined in one function and the rewards may
carry a trailing ensemble axis, (B, K), one column per reward head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair Bradley-Terry loss.

    Args:
        chosen_rewards, rejected_rewards: (B,) or (B, K) scores r(x, y_w), r(x, y_l).
        margin: (B,) required reward gap per pair, or None for 0.
        label_smoothing: assumed probability eps in [0, 0.5) that a label is flipped.
        center_coef: weight of the (r_w + r_l)^2 penalty.

    Returns:
        Losses with the rewards' shape, and detached metrics of that shape:
        "reward/chosen", "reward/rejected", "reward/margin" (r_w - r_l) and
        "reward/accuracy" (1 if r_w > r_l, 0.5 on a tie, 0 otherwise).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape."
        )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}.")
    gap = chosen_rewards - rejected_rewards  # (B,) or (B, K)
    required = torch.zeros_like(gap) if margin is None else (margin if gap.ndim == 1 else margin[:, None])
    # A flipped label asks the rejected response to win by the margin: -log sigmoid(-gap - m).
    losses = (1 - label_smoothing) * F.softplus(required - gap) + label_smoothing * F.softplus(required + gap)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    reward_margin = (chosen_rewards - rejected_rewards).detach()
    return losses, {
        "reward/chosen": chosen_rewards.detach(),
        "reward/rejected": rejected_rewards.detach(),
        "reward/margin": reward_margin,
        "reward/accuracy": (reward_margin > 0).float() + 0.5 * (reward_margin == 0).float(),
    }
