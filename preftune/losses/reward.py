"""Bradley-Terry reward-model objective on preference pairs.

Paper: InstructGPT (arXiv 2203.02155), eq. 1: loss = -log sigmoid(r(x, y_w) - r(x, y_l)).
Also implemented, each off by default:
- a per-pair margin m subtracted inside the sigmoid, -log sigmoid(r_w - r_l - m), as in
  Llama 2 (arXiv 2307.09288, eq. 2), for pairs rated "significantly better";
- label smoothing eps for noisy labels: the expected loss when each label is flipped with
  probability eps, (1 - eps) * -log sigmoid(d - m) + eps * -log sigmoid(-d - m), d = r_w - r_l
  (the cDPO form of the same idea, Mitchell 2023; with a margin, the flipped label asks the
  other response to win by it);
- soft labels: label smoothing may be a (B,) tensor, one flip probability per pair. With a
  soft label p = P(y_w is truly preferred) (the `chosen_probability` column, e.g. a
  Dawid-Skene posterior from preftune/feedback/aggregate.py) the pair's smoothing is 1 - p and
  the loss is p * softplus(-d) + (1 - p) * softplus(d): the expected loss when the true label
  is drawn from the soft label. `compose_label_smoothing` combines it with a global eps;
- reward centering, coef * (r_w + r_l)^2, which pins the mean reward near 0 so that
  scores are comparable across models (Eisenstein et al. 2023, arXiv 2312.09244).
Departure from the papers: the terms are combined in one function and the rewards may
carry a trailing ensemble axis, (B, K), one column per reward head. Per-pair soft labels
are not in InstructGPT; they are the soft-target logistic loss, with eps_i = 1 - p_i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float | Tensor = 0.0,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair Bradley-Terry loss.

    Args:
        chosen_rewards, rejected_rewards: (B,) or (B, K) scores r(x, y_w), r(x, y_l).
        margin: (B,) required reward gap per pair, or None for 0.
        label_smoothing: assumed probability eps in [0, 0.5) that a label is flipped, or a (B,)
            tensor of per-pair flip probabilities in [0, 0.5] (0.5: a coin flip, e.g. a tie), such
            as 1 - chosen_probability for soft labels (see `compose_label_smoothing`).
        center_coef: weight of the (r_w + r_l)^2 penalty.

    Returns:
        Losses with the rewards' shape, and detached metrics of that shape:
        "rewards/chosen", "rewards/rejected", "rewards/margins" (r_w - r_l) and
        "rewards/accuracies" (1 if r_w > r_l, 0.5 on a tie, 0 otherwise).
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must have the same shape."
        )
    if isinstance(label_smoothing, Tensor):
        _check_pair_smoothing(label_smoothing, chosen_rewards.shape[0])
        if chosen_rewards.ndim == 2:
            label_smoothing = label_smoothing[:, None]  # (B, 1): one flip probability for every head
    elif not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}.")
    gap = chosen_rewards - rejected_rewards  # (B,) or (B, K)
    required = torch.zeros_like(gap) if margin is None else (margin if gap.ndim == 1 else margin[:, None])
    # A flipped label asks the rejected response to win by the margin: -log sigmoid(-gap - m).
    losses = (1 - label_smoothing) * F.softplus(required - gap) + label_smoothing * F.softplus(required + gap)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    reward_margin = (chosen_rewards - rejected_rewards).detach()
    return losses, {
        "rewards/chosen": chosen_rewards.detach(),
        "rewards/rejected": rejected_rewards.detach(),
        "rewards/margins": reward_margin,
        "rewards/accuracies": (reward_margin > 0).float() + 0.5 * (reward_margin == 0).float(),
    }


def compose_label_smoothing(label_smoothing: float, chosen_probability: Tensor) -> Tensor:
    """Per-pair flip probability (B,) from a global flip rate eps and soft labels p, (B,).

    A soft label leaves the label wrong with probability q = 1 - p; a further independent flip of
    rate eps (--label_smoothing) makes the final label wrong when exactly one of the two happens:
    eps + q - 2 * eps * q, so that 1 - 2 * result = (1 - 2 eps) * (1 - 2 q). It is q at eps = 0,
    eps at p = 1, and stays in [0, 0.5] for eps in [0, 0.5) and p in [0.5, 1].
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}.")
    flipped = 1.0 - chosen_probability  # (B,)
    return label_smoothing + flipped - 2.0 * label_smoothing * flipped


def _check_pair_smoothing(label_smoothing: Tensor, batch_size: int) -> None:
    if label_smoothing.shape != (batch_size,):
        raise ValueError(
            f"label_smoothing as a tensor must have one value per pair, shape ({batch_size},), "
            f"got {tuple(label_smoothing.shape)}."
        )
    if bool(torch.any((label_smoothing < 0) | (label_smoothing > 0.5))):
        raise ValueError(
            f"per-pair label_smoothing must be in [0, 0.5], got values from {label_smoothing.min().item():g} "
            f"to {label_smoothing.max().item():g}. It is 1 - chosen_probability: write soft labels in [0.5, 1], "
            "with chosen the more likely winner."
        )
