"""PPO clip and value losses, GAE, KL-penalised rewards, RLOO/GRPO advantages, the adaptive KL coefficient.

Closed forms on hand-built tensors, float64 gradients, slow Python loops, and padding invariance.
"""

import math
import statistics

import pytest
import torch

from preftune.losses.policy_gradient import (
    adaptive_kl_coef,
    gae,
    grpo_advantages,
    kl_penalized_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
)

# --- gae ----------------------------------------------------------------------------------------


def _slow_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V after the end = 0."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def _ragged_batch(seed: int, B: int = 5, T: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random float64 rewards and values, right-padded mask with lengths 0..T; NaN in the padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64).masked_fill(~mask, float("nan"))
    values = torch.randn(B, T, generator=g, dtype=torch.float64).masked_fill(~mask, float("nan"))
    return rewards, values, mask


def test_gae_closed_form():
    """r = (1, 2), V = (0.5, 1), gamma 0.9, lam 0.5:
    delta_1 = 2 + 0 - 1 = 1; delta_0 = 1 + 0.9 * 1 - 0.5 = 1.4;
    A_1 = 1; A_0 = 1.4 + 0.9 * 0.5 * 1 = 1.85; returns = A + V = (2.35, 2.0). The padded slot is 0."""
    rewards = torch.tensor([[1.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[1.85, 1.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[2.35, 2.0, 0.0]]))


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0), (0.8, 0.0)])
@pytest.mark.parametrize("seed", range(3))
def test_gae_matches_slow_loop_on_ragged_sequences(seed, gamma, lam):
    rewards, values, mask = _ragged_batch(seed)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert torch.all(advantages[~mask] == 0) and torch.all(returns[~mask] == 0)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        expected = torch.tensor(_slow_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam))
        torch.testing.assert_close(advantages[b, :n], expected.double())
        torch.testing.assert_close(returns[b, :n], expected.double() + values[b, :n])


def test_gae_with_lam_one_gives_discounted_reward_to_go_whatever_the_values():
    """lam = 1: returns_t = sum_k gamma^k r_{t+k}; the values cancel."""
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = torch.tensor([[1.0 + 0.81 * 2.0, 0.9 * 2.0, 2.0]], dtype=torch.float64)
    for values in (torch.zeros(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)):
        _, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
        torch.testing.assert_close(returns, expected)


def test_gae_ignores_padding():
    rewards, values, mask = _ragged_batch(0)
    advantages, returns = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    extra = torch.full((mask.shape[0], 3), 123.0, dtype=torch.float64)
    wider = gae(
        torch.cat([rewards, extra], 1), torch.cat([values, extra], 1),
        torch.cat([mask, torch.zeros_like(extra, dtype=torch.bool)], 1), gamma=0.95, lam=0.9,
    )  # fmt: skip
    torch.testing.assert_close(wider[0][:, :7], advantages)
    torch.testing.assert_close(wider[1][:, :7], returns)
    assert torch.all(wider[0][:, 7:] == 0)
    assert not torch.isnan(advantages).any()


def test_gae_rejects_masks_that_are_not_right_padded():
    with pytest.raises(ValueError, match="right-padded"):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[True, False, True]]), gamma=1.0, lam=1.0)


# --- ppo_policy_loss ------------------------------------------------------------------------------


def test_ppo_policy_loss_closed_form():
    """clip_range 0.2, so the ratio is clipped to [0.8, 1.2]. loss = max(-r A, -clip(r) A):
    r=1.5, A=+2: max(-3, -2.4) = -2.4, clipped;   r=1.5, A=-2: max(3, 2.4) = 3, not clipped;
    r=0.5, A=+2: max(-1, -1.6) = -1, not clipped; r=0.5, A=-2: max(1, 1.6) = 1.6, clipped;
    r=1.1, A=3: inside the range, -3.3, not clipped; the last token is padding (NaN) -> 0.
    approx_kl = (r - 1) - log r: 0.5 - log 1.5 at r = 1.5."""
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, float("nan")]])
    advantages = torch.tensor([[2.0, -2.0, 2.0, -2.0, 3.0, float("nan")]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    old_logps = torch.full((1, 6), -1.0)
    losses, metrics = ppo_policy_loss(old_logps + ratios.log(), old_logps, advantages, mask, clip_range=0.2)
    torch.testing.assert_close(losses, torch.tensor([[-2.4, 3.0, -1.0, 1.6, -3.3, 0.0]]))
    assert metrics["policy/clipfrac"].tolist() == [[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]]
    torch.testing.assert_close(metrics["policy/ratio"], torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 0.0]]))
    torch.testing.assert_close(metrics["policy/approx_kl"][0, 0], torch.tensor(0.5 - math.log(1.5)))
    assert set(metrics) == {"policy/clipfrac", "policy/approx_kl", "policy/ratio"}


def test_ppo_policy_loss_is_minus_advantage_at_ratio_one():
    advantages = torch.tensor([[0.3, -1.7, 2.0]])
    logps = torch.tensor([[-0.1, -2.0, -5.0]])
    losses, metrics = ppo_policy_loss(
        logps, logps.clone(), advantages, torch.ones(1, 3, dtype=torch.bool), 0.2
    )
    torch.testing.assert_close(losses, -advantages)
    assert not metrics["policy/clipfrac"].any()
    torch.testing.assert_close(metrics["policy/approx_kl"], torch.zeros(1, 3))


def test_ppo_policy_loss_gradient_is_zero_exactly_where_clipped():
    """Elsewhere d loss / d logps = -A * ratio (float64 autograd)."""
    torch.manual_seed(0)
    old_logps = torch.randn(4, 6, dtype=torch.float64)
    logps = (old_logps + 0.6 * torch.randn(4, 6, dtype=torch.float64)).requires_grad_(True)
    advantages = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.2
    losses, metrics = ppo_policy_loss(logps, old_logps, advantages, mask, clip_range=0.2)
    losses.sum().backward()
    clipped = metrics["policy/clipfrac"].bool()
    assert clipped.any() and (mask & ~clipped).any()
    ratio = torch.exp(logps.detach() - old_logps)
    expected = torch.where(mask & ~clipped, -advantages * ratio, torch.zeros_like(ratio))
    torch.testing.assert_close(logps.grad, expected)


def test_ppo_policy_loss_asymmetric_clip_higher():
    """r = 1.25, A = 1: symmetric 0.2 clips to -1.2; clip_range_high 0.28 leaves -1.25 (unclipped).
    The low side is unchanged: r = 0.7, A = -1 -> max(0.7, 0.8) = 0.8 in both."""
    logps = torch.tensor([[math.log(1.25), math.log(0.7)]])
    args = (logps, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool))
    symmetric, _ = ppo_policy_loss(*args, clip_range=0.2)
    higher, metrics = ppo_policy_loss(*args, clip_range=0.2, clip_range_high=0.28)
    torch.testing.assert_close(symmetric, torch.tensor([[-1.2, 0.8]]))
    torch.testing.assert_close(higher, torch.tensor([[-1.25, 0.8]]))
    assert metrics["policy/clipfrac"].tolist() == [[0.0, 1.0]]


def test_ppo_policy_loss_padding_does_not_leak_into_gradients():
    logps = torch.tensor([[-1.0, float("inf")]], requires_grad=True)
    losses, _ = ppo_policy_loss(
        logps, torch.tensor([[-1.0, float("nan")]]), torch.tensor([[1.0, float("nan")]]),
        torch.tensor([[True, False]]), clip_range=0.2,
    )  # fmt: skip
    losses.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.0, 0.0]]))


def test_ppo_policy_loss_rejects_bad_clip_range():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(x, x, x, torch.ones(1, 1, dtype=torch.bool), clip_range=0.0)
    with pytest.raises(ValueError, match="one shape"):
        ppo_policy_loss(x, torch.zeros(1, 2), x, torch.ones(1, 1, dtype=torch.bool), clip_range=0.2)


# --- ppo_value_loss -------------------------------------------------------------------------------


def test_ppo_value_loss_closed_form():
    """c = 0.2, old values 1, returns 2:
    v=1.5: (1.5-2)^2 = 0.25; clipped v 1.2: (1.2-2)^2 = 0.64 -> 0.5 * 0.64 = 0.32, clipped;
    v=0.5: (0.5-2)^2 = 2.25; clipped v 0.8: 1.44 -> 0.5 * 2.25 = 1.125, not clipped;
    v=1.1: inside, (1.1-2)^2 = 0.81 -> 0.405; last token padding -> 0.
    Without clipping v=1.5 gives 0.5 * 0.25 = 0.125."""
    values = torch.tensor([[1.5, 0.5, 1.1, float("nan")]])
    old_values = torch.ones(1, 4)
    returns = torch.full((1, 4), 2.0)
    mask = torch.tensor([[True, True, True, False]])
    losses, metrics = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    torch.testing.assert_close(losses, torch.tensor([[0.32, 1.125, 0.405, 0.0]]))
    assert metrics["value/clipfrac"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(metrics["value/error"], torch.tensor([[0.25, 2.25, 0.81, 0.0]]))
    for no_clip in (None, 0.0, -1.0):
        unclipped, metrics = ppo_value_loss(values, old_values, returns, mask, clip_range_value=no_clip)
        torch.testing.assert_close(unclipped, torch.tensor([[0.125, 1.125, 0.405, 0.0]]))
        assert not metrics["value/clipfrac"].any()


def test_ppo_value_loss_gradient_float64():
    """d loss / d v = v - R where the unclipped branch is active, 0 where the clipped one is."""
    torch.manual_seed(0)
    old_values = torch.randn(3, 8, dtype=torch.float64)
    values = (old_values + 0.5 * torch.randn(3, 8, dtype=torch.float64)).requires_grad_(True)
    returns = torch.randn(3, 8, dtype=torch.float64)
    mask = torch.rand(3, 8) > 0.2
    losses, metrics = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    losses.sum().backward()
    clipped = metrics["value/clipfrac"].bool()
    assert clipped.any() and (mask & ~clipped).any()
    v = values.detach()
    torch.testing.assert_close(values.grad, torch.where(mask & ~clipped, v - returns, torch.zeros_like(v)))


def test_ppo_value_loss_padding_does_not_leak_into_gradients():
    values = torch.tensor([[1.5, float("nan")]], requires_grad=True)
    losses, _ = ppo_value_loss(
        values, torch.tensor([[1.0, float("inf")]]), torch.tensor([[2.0, float("nan")]]),
        torch.tensor([[True, False]]), clip_range_value=1.0,
    )  # fmt: skip
    losses.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.5, 0.0]]))


# --- rloo / grpo advantages ------------------------------------------------------------------------


def test_rloo_advantages_closed_form():
    """r = (1, 2, 3, 6): others' means 11/3, 10/3, 3, 2 -> advantages -8/3, -4/3, 0, 4 (sum 0)."""
    advantages = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0]]))


def test_rloo_advantages_identities_and_loop():
    torch.manual_seed(0)
    rewards = torch.randn(5, 4, dtype=torch.float64)
    advantages = rloo_advantages(rewards)
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(advantages, 4 / 3 * (rewards - rewards.mean(dim=1, keepdim=True)))
    for p in range(5):
        for i in range(4):
            others = [rewards[p, j].item() for j in range(4) if j != i]
            assert advantages[p, i].item() == pytest.approx(rewards[p, i].item() - sum(others) / 3)


def test_grpo_advantages_closed_form():
    """r = (1, 2, 3): mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1) / (1 + 1e-4).
    Dr. GRPO (no scaling): (-1, 0, 1). Equal rewards -> 0."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    torch.testing.assert_close(
        grpo_advantages(rewards), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]) / (1 + 1e-4)
    )
    torch.testing.assert_close(
        grpo_advantages(rewards, scale_rewards=False), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    )


def test_grpo_advantages_match_statistics_module_and_are_scale_free():
    torch.manual_seed(0)
    rewards = torch.randn(4, 6, dtype=torch.float64)
    advantages = grpo_advantages(rewards, eps=0.0)
    for p in range(4):
        row = rewards[p].tolist()
        mean, std = statistics.mean(row), statistics.stdev(row)  # stdev: sample (n - 1) std
        torch.testing.assert_close(
            advantages[p], torch.tensor([(r - mean) / std for r in row], dtype=torch.float64)
        )
    torch.testing.assert_close(grpo_advantages(3.0 * rewards - 7.0, eps=0.0), advantages)
    torch.testing.assert_close(
        grpo_advantages(rewards + 4.0, scale_rewards=False), grpo_advantages(rewards, False)
    )


@pytest.mark.parametrize("estimator", [rloo_advantages, grpo_advantages])
@pytest.mark.parametrize("shape", [(3, 1), (4,)])
def test_group_advantages_need_two_samples_per_prompt(estimator, shape):
    with pytest.raises(ValueError, match="K >= 2"):
        estimator(torch.zeros(shape))


# --- adaptive_kl_coef -------------------------------------------------------------------------------


def test_adaptive_kl_coef_closed_form():
    """kl_coef 0.1, target 6, horizon 10000, 256 samples (step factor 0.0256):
    KL 12 -> error clip(1, -0.2, 0.2) = 0.2 -> 0.1 * (1 + 0.2 * 0.0256) = 0.100512;
    KL 3 -> error -0.5 -> -0.2 -> 0.1 * (1 - 0.00512) = 0.099488;
    KL 6.6 -> error 0.1 -> 0.1 * (1 + 0.00256) = 0.100256; KL 6 -> unchanged."""
    args = {"target_kl": 6.0, "horizon": 10000.0, "num_samples": 256}
    assert adaptive_kl_coef(0.1, 12.0, **args) == pytest.approx(0.100512)
    assert adaptive_kl_coef(0.1, 3.0, **args) == pytest.approx(0.099488)
    assert adaptive_kl_coef(0.1, 6.6, **args) == pytest.approx(0.100256)
    assert adaptive_kl_coef(0.1, 6.0, **args) == pytest.approx(0.1)


def test_adaptive_kl_coef_moves_towards_target_with_a_bounded_step():
    for measured in (0.0, 0.5, 5.9, 6.1, 60.0, 1e9):
        new = adaptive_kl_coef(0.2, measured, target_kl=6.0, horizon=1000.0, num_samples=100)
        assert (new > 0.2) == (measured > 6.0)
        assert 0.2 * (1 - 0.2 * 0.1) - 1e-12 <= new <= 0.2 * (1 + 0.2 * 0.1) + 1e-12


@pytest.mark.parametrize(("target_kl", "horizon"), [(0.0, 10.0), (-1.0, 10.0), (6.0, 0.0)])
def test_adaptive_kl_coef_rejects_bad_settings(target_kl, horizon):
    with pytest.raises(ValueError, match="must be > 0"):
        adaptive_kl_coef(0.1, 1.0, target_kl=target_kl, horizon=horizon, num_samples=1)


# --- kl_penalized_rewards ---------------------------------------------------------------------------


def test_kl_penalized_rewards_closed_form():
    """kl_coef 0.5: row 0 logratio (0.1, 0.2, 0.3), score 1 -> (-0.05, -0.1, -0.15 + 1);
    row 1 has one token, logratio 0.5, score -2 -> (-0.25 - 2, 0, 0); padding (NaN) -> 0."""
    logratio = torch.tensor([[0.1, 0.2, 0.3], [0.5, float("nan"), float("nan")]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards = kl_penalized_rewards(torch.tensor([1.0, -2.0]), logratio, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 0.85], [-2.25, 0.0, 0.0]]))


def test_kl_penalized_rewards_sum_to_score_minus_penalty_and_score_sits_at_last_token():
    torch.manual_seed(0)
    mask = torch.rand(6, 9) > 0.4
    mask[:, 0] = True  # no empty rows; holes in the middle are allowed
    logratio = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    scores = torch.randn(6, dtype=torch.float64, requires_grad=True)
    rewards = kl_penalized_rewards(scores, logratio, mask, kl_coef=0.3)
    penalty = torch.where(mask, logratio, 0.0).sum(dim=1)
    torch.testing.assert_close(rewards.sum(dim=1), scores - 0.3 * penalty)
    for b in range(6):
        last = int(mask[b].nonzero().max())
        without_score = rewards[b, last] + 0.3 * logratio[b, last]
        torch.testing.assert_close(without_score, scores[b])
    rewards.sum().backward()
    torch.testing.assert_close(logratio.grad, -0.3 * mask.double())
    torch.testing.assert_close(scores.grad, torch.ones(6, dtype=torch.float64))


def test_kl_penalized_rewards_rejects_empty_sequences():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 2), mask, kl_coef=0.1)
