"""Policy-gradient math for RLHF: PPO's clipped losses, GAE, KL-penalised rewards, group advantages.

Papers, and what is implemented from each:
- PPO, Schulman et al. 2017, arXiv 1707.06347: the clipped surrogate L^CLIP of eq. 7, per token
  (`ppo_policy_loss`), and the value-function term of eq. 9 (`ppo_value_loss`).
- GAE, Schulman et al. 2015, arXiv 1506.02438: A_t = sum_l (gamma lam)^l delta_{t+l}, eq. 16,
  with delta_t = r_t + gamma V(s_{t+1}) - V(s_t) (`gae`).
- Ziegler et al. 2019, arXiv 1909.08593, and InstructGPT (Ouyang et al. 2022, arXiv 2203.02155,
  eq. 2): the reward R = r(x, y) - kl_coef * log(pi / pi_ref) (`kl_penalized_rewards`) and the
  adaptive KL coefficient of Ziegler sec. 2.2 (`adaptive_kl_coef`).
- RLOO, Ahmadian et al. 2024, arXiv 2402.14740: the leave-one-out baseline over K samples of a
  prompt, A_i = r_i - mean_{j != i} r_j (`rloo_advantages`).
- GRPO, Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300, sec. 4.1.2: outcome advantages
  A_i = (r_i - mean(r)) / std(r) within a group (`grpo_advantages`); Dr. GRPO, Liu et al. 2025,
  arXiv 2503.20783, drops the std division (scale_rewards=False).

Departures from the papers:
- Language-model episodes: an action is a token, an episode one response. The reward arrives at
  the response's last token (plus the per-token KL penalty); the value after the last token is 0
  (terminal), nothing is bootstrapped past it.
- Losses are per token and are not reduced here; `ops.reduce.reduce_loss` normalises them (per
  token or per sequence, with global counts). GRPO's 1/|o_i| in eq. 3 is reduce_loss's
  "sequence" normalisation; Dr. GRPO's fix is its "token" one.
- `ppo_policy_loss` allows an asymmetric range [1 - clip_range, 1 + clip_range_high] ("clip
  higher", DAPO, arXiv 2503.14476); equal bounds are PPO's eq. 7.
- `ppo_value_loss` clips the value around the rollout's values, as in OpenAI's baselines and
  lm-human-preferences code; PPO's eq. 9 has the plain squared error (clip_range_value <= 0).
  The factor 0.5 is there so the gradient is (v - R).
- `adaptive_kl_coef` uses K_beta = num_samples / horizon, as lm-human-preferences does; Ziegler
  sec. 2.2 writes a fixed K_beta = 0.1.
- `grpo_advantages` divides by the sample (unbiased) std plus eps = 1e-4; the paper names neither.
"""

from __future__ import annotations

import torch
from torch import Tensor

from preftune.losses.kl import kl_k3


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"these tensors must have one shape (B, T), got {shapes}.")


def _check_groups(rewards: Tensor) -> None:
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must have shape (P, K) with K >= 2 samples per prompt, got {tuple(rewards.shape)}. "
            "Sample at least 2 responses per prompt."
        )


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates (arXiv 1506.02438, eq. 16) and returns, computed backward.

    Args:
        rewards: (B, T) per-token rewards of response tokens.
        values: (B, T) value estimates V(s_t) at the same tokens.
        mask: (B, T) bool, right-padded: each row's True entries come first. The value after a
            row's last True token is 0 (the episode ends there).
        gamma: discount; lam: the GAE lambda (1 gives Monte-Carlo returns minus values).

    Returns:
        advantages (B, T) and returns = advantages + values (B, T), both 0 where mask is False.
        Values at padded positions (even NaN) do not change the result.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    if rewards.ndim != 2:
        raise ValueError(f"rewards, values and mask must be (B, T), got {tuple(rewards.shape)}.")
    if bool(torch.any(mask[:, 1:] & ~mask[:, :-1])):
        raise ValueError("mask must be right-padded: in each row no True may follow a False.")
    zeros = torch.zeros_like(values)
    rewards, values = torch.where(mask, rewards, zeros), torch.where(mask, values, zeros)
    continues = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)  # (B, T) t+1 counts
    next_values = torch.where(continues, values.roll(-1, dims=1), zeros)  # (B, T) V(s_{t+1}), 0 at the end
    deltas = rewards + gamma * next_values - values  # (B, T)
    columns: list[Tensor] = []
    running = zeros[:, 0]  # (B,) advantage at t + 1
    for t in reversed(range(rewards.shape[1])):
        running = deltas[:, t] + gamma * lam * torch.where(continues[:, t], running, zeros[:, 0])
        columns.append(running)
    advantages = torch.where(mask, torch.stack(columns[::-1], dim=1), zeros)  # (B, T)
    return advantages, advantages + values


def ppo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (arXiv 1707.06347, eq. 7), negated to a loss, per token.

    loss = -min(ratio * A, clip(ratio, 1 - clip_range, 1 + clip_range_high) * A), with
    ratio = exp(logps - old_logps); clip_range_high defaults to clip_range.

    Args:
        logps: (B, T) log-probs of the sampled tokens under the policy being trained.
        old_logps: (B, T) the same under the policy that sampled them (no gradient).
        advantages: (B, T) per-token advantages.
        mask: (B, T) bool, True at response tokens.

    Returns:
        (B, T) losses, 0 where mask is False, and detached (B, T) metrics, 0 where mask is False:
        "policy/clipfrac" 1.0 where the clipped branch is active (the gradient is zero there),
        "policy/approx_kl" (ratio - 1) - log ratio (k3 estimate of KL(old || new)), "policy/ratio".
    """
    _check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    high = clip_range if clip_range_high is None else clip_range_high
    if not (clip_range > 0 and high > 0):
        raise ValueError(
            f"clip_range and clip_range_high must be > 0, got {clip_range} and {clip_range_high}. Try 0.2."
        )
    zeros = torch.zeros_like(logps)
    # 0 at padding first, so that NaN/inf there cannot reach the loss or its gradient
    logratio = torch.where(mask, logps - old_logps, zeros)  # (B, T)
    advantages = torch.where(mask, advantages, zeros)
    ratio = torch.exp(logratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + high)
    losses = torch.where(mask, torch.maximum(unclipped, clipped), zeros)
    metrics = {
        "policy/clipfrac": ((clipped > unclipped) & mask).to(losses.dtype),
        "policy/approx_kl": torch.where(mask, kl_k3(-logratio), zeros).detach(),
        "policy/ratio": torch.where(mask, ratio, zeros).detach(),
    }
    return losses, metrics


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss per token: 0.5 * max((v - R)^2, (clip(v, old - c, old + c) - R)^2).

    Args:
        values: (B, T) the value head's current estimates v.
        old_values: (B, T) its estimates at rollout time (no gradient).
        returns: (B, T) targets R, e.g. from `gae`.
        mask: (B, T) bool, True at response tokens.
        clip_range_value: c; None or <= 0 gives the unclipped 0.5 * (v - R)^2 (PPO's eq. 9 term).

    Returns:
        (B, T) losses, 0 where mask is False, and detached (B, T) metrics, 0 where mask is False:
        "value/clipfrac" 1.0 where the clipped branch is the larger (its gradient is zero there when
        v is outside the range), "value/error" (v - R)^2.
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    zeros = torch.zeros_like(values)
    # 0 at padding first, so that NaN/inf there cannot reach the loss or its gradient
    values, old_values, returns = (torch.where(mask, x, zeros) for x in (values, old_values, returns))
    error = (values - returns).square()  # (B, T)
    if clip_range_value is None or clip_range_value <= 0:
        clipped_error = error
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped_error = (clipped_values - returns).square()
    losses = torch.where(mask, 0.5 * torch.maximum(error, clipped_error), zeros)
    metrics = {
        "value/clipfrac": ((clipped_error > error) & mask).to(losses.dtype),
        "value/error": torch.where(mask, error, zeros).detach(),
    }
    return losses, metrics


def rloo_advantages(rewards: Tensor) -> Tensor:
    """Leave-one-out advantages (arXiv 2402.14740): (P, K) -> (P, K), r_i - mean_{j != i} r_j.

    rewards[p, k] is the reward of sample k of prompt p, K >= 2. Equal to K / (K - 1) * (r - mean(r)),
    so the advantages of a prompt sum to 0.
    """
    _check_groups(rewards)
    K = rewards.shape[1]
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (K - 1)  # (P, K)
    return rewards - others_mean


def grpo_advantages(rewards: Tensor, scale_rewards: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages (arXiv 2402.03300, sec. 4.1.2): (P, K) -> (P, K).

    (r - mean) / (std + eps) over each prompt's K >= 2 samples, std the sample (unbiased) one;
    scale_rewards=False gives Dr. GRPO's r - mean (arXiv 2503.20783). A group of equal rewards
    gets advantages 0.
    """
    _check_groups(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (P, K)
    if not scale_rewards:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def adaptive_kl_coef(
    kl_coef: float, measured_kl: float, target_kl: float, horizon: float, num_samples: int
) -> float:
    """Ziegler et al.'s proportional KL controller (arXiv 1909.08593, sec. 2.2): the next kl_coef.

    error = clip(measured_kl / target_kl - 1, -0.2, 0.2);
    next = kl_coef * (1 + error * num_samples / horizon). num_samples is the number of episodes
    since the last update; horizon sets how fast the coefficient follows (10000 in the paper's code).
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}. Ziegler et al. use 6 nats for a sequence.")
    if not horizon > 0:
        raise ValueError(f"horizon must be > 0, got {horizon}. Try 10000.")
    error = min(max(measured_kl / target_kl - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * num_samples / horizon)


def kl_penalized_rewards(scores: Tensor, logratio: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: -kl_coef * logratio at every response token, plus the score at the last.

    Ziegler et al. (arXiv 1909.08593) R = r(x, y) - kl_coef * log(pi(y|x) / pi_ref(y|x)) spread
    over tokens (k1 per token); a sequence's rewards sum to score - kl_coef * sum(logratio).

    Args:
        scores: (B,) reward-model scores of the responses.
        logratio: (B, T) logps - ref_logps per token.
        mask: (B, T) bool, True at response tokens; every row needs at least one.

    Returns:
        (B, T) rewards, 0 where mask is False.
    """
    _check_same_shape(logratio=logratio, mask=mask)
    if logratio.ndim != 2 or scores.shape != logratio.shape[:1]:
        raise ValueError(
            f"scores must be (B,) and logratio, mask (B, T), got {tuple(scores.shape)} and {tuple(logratio.shape)}."
        )
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no response tokens; drop empty responses before scoring.")
    T = logratio.shape[1]
    last = (torch.arange(T, device=mask.device) * mask).argmax(dim=1)  # (B,) index of each row's last True
    rewards = torch.where(mask, -kl_coef * logratio, torch.zeros_like(logratio))
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))
