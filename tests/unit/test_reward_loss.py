"""Bradley-Terry loss: closed-form values, gradients, and the margin, smoothing and centering identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from preftune.losses import bradley_terry_loss


def test_closed_form_value_and_gradient():
    chosen = torch.tensor([1.0, 0.0, -2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    losses, metrics = bradley_terry_loss(chosen, rejected)
    expected = [math.log1p(math.exp(-1.0)), math.log(2.0), math.log1p(math.exp(3.0))]
    torch.testing.assert_close(losses, torch.tensor(expected))
    losses.sum().backward()
    # d/dr_c -log sigmoid(d) = -(1 - sigmoid(d)) = -sigmoid(-d), with d = r_c - r_r
    gap = torch.tensor([1.0, 0.0, -3.0])
    torch.testing.assert_close(chosen.grad, -torch.sigmoid(-gap))
    torch.testing.assert_close(rejected.grad, torch.sigmoid(-gap))
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.5, 0.0]  # a tie counts half
    torch.testing.assert_close(metrics["rewards/margins"], gap)


def test_stable_for_large_gaps():
    losses, _ = bradley_terry_loss(torch.tensor([-500.0, 500.0]), torch.tensor([500.0, -500.0]))
    torch.testing.assert_close(losses, torch.tensor([1000.0, 0.0]))


def test_margin_is_a_shift_of_the_chosen_reward():
    chosen, rejected, margin = torch.randn(6), torch.randn(6), torch.rand(6) * 2
    with_margin, metrics = bradley_terry_loss(chosen, rejected, margin=margin)
    shifted, _ = bradley_terry_loss(chosen - margin, rejected)
    torch.testing.assert_close(with_margin, shifted)
    torch.testing.assert_close(metrics["rewards/margins"], chosen - rejected)  # metrics show the raw gap
    # a margin makes the same gap cost more (Llama 2: "significantly better" pairs push harder)
    assert torch.all(with_margin > bradley_terry_loss(chosen, rejected)[0])


def test_label_smoothing_is_the_expected_loss_under_label_flips():
    chosen, rejected, eps = torch.randn(5), torch.randn(5), 0.1
    smoothed, _ = bradley_terry_loss(chosen, rejected, label_smoothing=eps)
    forward, _ = bradley_terry_loss(chosen, rejected)
    backward, _ = bradley_terry_loss(rejected, chosen)
    torch.testing.assert_close(smoothed, (1 - eps) * forward + eps * backward)


def test_label_smoothing_with_a_margin_flips_which_response_must_win_by_it():
    chosen, rejected, margin, eps = torch.randn(5), torch.randn(5), torch.rand(5), 0.2
    smoothed, _ = bradley_terry_loss(chosen, rejected, margin=margin, label_smoothing=eps)
    forward, _ = bradley_terry_loss(chosen, rejected, margin=margin)
    backward, _ = bradley_terry_loss(rejected, chosen, margin=margin)
    torch.testing.assert_close(smoothed, (1 - eps) * forward + eps * backward)


def test_label_smoothing_minimum_is_at_the_log_odds_of_the_label():
    eps = 0.2
    gap = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([gap], lr=1.0)
    for _ in range(500):
        optimizer.zero_grad()
        bradley_terry_loss(gap, torch.zeros(1), label_smoothing=eps)[0].sum().backward()
        optimizer.step()
    assert gap.item() == pytest.approx(math.log((1 - eps) / eps), abs=1e-3)  # not infinite: noisy labels


def test_centering_adds_the_squared_sum_and_breaks_shift_invariance():
    chosen, rejected, coef = torch.rand(4), torch.rand(4), 0.01  # non-negative: a +3 shift grows the sum
    plain, _ = bradley_terry_loss(chosen, rejected)
    centered, _ = bradley_terry_loss(chosen, rejected, center_coef=coef)
    torch.testing.assert_close(centered, plain + coef * (chosen + rejected) ** 2)
    shifted, _ = bradley_terry_loss(chosen + 3.0, rejected + 3.0)
    torch.testing.assert_close(shifted, plain)  # Bradley-Terry alone cannot see an offset
    shifted_centered, _ = bradley_terry_loss(chosen + 3.0, rejected + 3.0, center_coef=coef)
    assert torch.all(shifted_centered > centered)


def test_ensemble_axis_broadcasts_the_margin_per_pair():
    chosen, rejected, margin = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0])
    losses, metrics = bradley_terry_loss(chosen, rejected, margin=margin)
    assert losses.shape == metrics["rewards/accuracies"].shape == (3, 4)
    expected = F.softplus(-(chosen - rejected - margin[:, None]))
    torch.testing.assert_close(losses, expected)
    for k in range(4):  # each head is its own Bradley-Terry model
        torch.testing.assert_close(losses[:, k], bradley_terry_loss(chosen[:, k], rejected[:, k], margin)[0])


def test_bad_arguments_fail_with_the_fix():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), label_smoothing=0.5)


def test_reward_statistics_of_an_ensemble():
    from preftune.judges.reward_model import reward_statistics

    scores = torch.tensor([[1.0, 3.0], [2.0, 4.0], [6.0, 8.0]])  # 3 responses, 2 heads
    stats = reward_statistics(scores, max_length=64)
    assert stats["max_length"] == 64
    # the ensemble mean per response is 2, 3, 7: mean 4, population std sqrt(14/3)
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["std"] == pytest.approx(math.sqrt(14 / 3))
    assert stats["count"] == 3
    assert stats["head_mean"] == pytest.approx([3.0, 5.0])
    assert stats["head_std"] == pytest.approx([math.sqrt(14 / 3)] * 2)
