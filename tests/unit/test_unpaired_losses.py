"""KTO (arXiv 2402.01306): closed-form values, the paper's identities, gradients, the reference point and weights."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.losses.unpaired import kto_loss, kto_recommended_weights, kto_reference_point


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def test_closed_form_values_gradients_and_metrics():
    """beta = 0.5, z_ref = 0.4, lambda_D = 1.5, lambda_U = 0.75.

    row 0, desirable,   r = 1.0:  s = r - z = 0.6,  loss = 1.5 * (1 - sigmoid(0.3))
    row 1, undesirable, r = -0.6: s = z - r = 1.0,  loss = 0.75 * (1 - sigmoid(0.5))
    row 2, undesirable, r = 2.0:  s = z - r = -1.6, loss = 0.75 * (1 - sigmoid(-0.8))
    row 3, desirable,   r = 0.4:  s = 0,            loss = 1.5 * 0.5
    d loss / d r = -lambda_D * beta * p * (1 - p) (desirable), +lambda_U * beta * p * (1 - p)
    (undesirable), with p = sigmoid(beta * s).
    """
    logratio = torch.tensor([1.0, -0.6, 2.0, 0.4], requires_grad=True)
    desirable = torch.tensor([True, False, False, True])
    losses, metrics = kto_loss(
        logratio, desirable, 0.4, beta=0.5, desirable_weight=1.5, undesirable_weight=0.75
    )
    scaled = [0.3, 0.5, -0.8, 0.0]  # beta * s
    weights = [1.5, 0.75, 0.75, 1.5]
    expected = [w * (1 - _sigmoid(t)) for w, t in zip(weights, scaled, strict=True)]
    torch.testing.assert_close(losses, torch.tensor(expected))
    losses.sum().backward()
    signs = [-1.0, 1.0, 1.0, -1.0]  # raising r helps a desirable row and hurts an undesirable one
    grads = [
        sign * w * 0.5 * _sigmoid(t) * (1 - _sigmoid(t))
        for sign, w, t in zip(signs, weights, scaled, strict=True)
    ]
    torch.testing.assert_close(logratio.grad, torch.tensor(grads))
    torch.testing.assert_close(metrics["reward/implicit"], torch.tensor([0.5, -0.3, 1.0, 0.2]))
    assert metrics["mask/desirable"].tolist() == [True, False, False, True]
    assert metrics["kl/reference_point"].item() == pytest.approx(0.4)
    assert not any(value.requires_grad for value in metrics.values())


def test_loss_is_the_papers_lambda_minus_value_function():
    """L_KTO = E[lambda_y - v(x, y)] with the paper's v, computed one row at a time."""
    torch.manual_seed(0)
    logratio, desirable = torch.randn(16, dtype=torch.float64) * 3, torch.rand(16) < 0.5
    beta, z_ref, lambda_d, lambda_u = 0.2, 0.7, 1.2, 0.9
    losses, _ = kto_loss(
        logratio, desirable, z_ref, beta, desirable_weight=lambda_d, undesirable_weight=lambda_u
    )
    expected = []
    for r, is_desirable in zip(logratio.tolist(), desirable.tolist(), strict=True):
        if is_desirable:
            expected.append(lambda_d - lambda_d * _sigmoid(beta * (r - z_ref)))
        else:
            expected.append(lambda_u - lambda_u * _sigmoid(beta * (z_ref - r)))
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    assert losses.mean().item() == pytest.approx(sum(expected) / len(expected))


@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_at_the_reference_point_each_row_costs_half_its_weight(beta):
    z_ref = torch.tensor(1.7)
    desirable = torch.tensor([True, False, True, False])
    losses, _ = kto_loss(
        z_ref.expand(4), desirable, z_ref, beta, desirable_weight=2.0, undesirable_weight=0.6
    )
    torch.testing.assert_close(losses, torch.tensor([1.0, 0.3, 1.0, 0.3]))


def test_monotone_in_the_logratio_in_the_direction_of_the_label():
    desirable = torch.tensor([True, False])
    base = torch.tensor([0.3, 0.3])
    before, _ = kto_loss(base, desirable, 0.1, beta=0.5)
    for row in range(2):
        raised = base.clone()
        raised[row] += 1.0
        after, _ = kto_loss(raised, desirable, 0.1, beta=0.5)
        assert after[1 - row] == before[1 - row]  # rows are independent
        if desirable[row]:
            assert after[row] < before[row]
        else:
            assert after[row] > before[row]


def test_a_larger_reference_point_is_harder_for_desirable_and_easier_for_undesirable_rows():
    logratio, desirable = torch.tensor([0.5, 0.5]), torch.tensor([True, False])
    low, _ = kto_loss(logratio, desirable, 0.0, beta=1.0)
    high, _ = kto_loss(logratio, desirable, 2.0, beta=1.0)
    assert high[0] > low[0] and high[1] < low[1]


def test_weights_scale_each_class_exactly():
    torch.manual_seed(1)
    logratio, desirable = torch.randn(10), torch.arange(10) % 3 == 0
    plain, _ = kto_loss(logratio, desirable, 0.2, beta=0.3)
    weighted, _ = kto_loss(logratio, desirable, 0.2, beta=0.3, desirable_weight=3.0, undesirable_weight=0.5)
    torch.testing.assert_close(weighted, torch.where(desirable, 3.0 * plain, 0.5 * plain))
    zeroed, _ = kto_loss(logratio, desirable, 0.2, beta=0.3, undesirable_weight=0.0)
    assert torch.all(zeroed[~desirable] == 0) and torch.all(zeroed[desirable] == plain[desirable])


def test_gradcheck_float64():
    logratio = torch.randn(6, dtype=torch.float64, requires_grad=True)
    desirable = torch.tensor([True, False, True, True, False, False])
    z_ref = torch.tensor(0.3, dtype=torch.float64)

    def losses(x: torch.Tensor) -> torch.Tensor:
        return kto_loss(x, desirable, z_ref, beta=0.7, desirable_weight=1.3, undesirable_weight=0.4)[0]

    assert torch.autograd.gradcheck(losses, (logratio,))


def test_accurate_and_finite_far_from_the_reference_point():
    # beta * s = 30: 1 - sigmoid(30) rounds to 0 in float32, sigmoid(-30) does not.
    losses, _ = kto_loss(torch.tensor([30.0, -30.0]), torch.tensor([True, False]), 0.0, beta=1.0)
    torch.testing.assert_close(losses, torch.full((2,), _sigmoid(-30.0)), rtol=1e-5, atol=0.0)
    logratio = torch.tensor([1e4, -1e4, -1e4, 1e4], requires_grad=True)
    losses, _ = kto_loss(logratio, torch.tensor([True, False, True, False]), 0.0, beta=1.0)
    assert losses.tolist() == [0.0, 0.0, 1.0, 1.0]
    losses.sum().backward()
    # the paper notes the gradient vanishes as r -> +-inf: saturated rows stop pulling, without NaN
    torch.testing.assert_close(logratio.grad, torch.zeros(4))


def test_reference_point_is_the_clamped_mean():
    # 4 mismatched completions with log-ratios 1.0, 2.0, -0.5, 0.5: mean 0.75
    assert kto_reference_point(torch.tensor(3.0), 4).item() == pytest.approx(0.75)
    assert kto_reference_point(torch.tensor(3.0), torch.tensor(4)).item() == pytest.approx(0.75)
    # a negative mean (the policy likes mismatched answers less than pi_ref does) is clamped to 0
    assert kto_reference_point(torch.tensor(-2.0), 4).item() == 0.0


def test_no_gradient_flows_through_the_reference_point():
    kl_logps = torch.tensor([-3.0, -2.0, -4.0], requires_grad=True)  # policy on mismatched pairs
    ref_kl_logps = torch.tensor([-3.5, -2.5, -4.0])
    z_ref = kto_reference_point((kl_logps - ref_kl_logps).sum(), kl_logps.numel())
    assert not z_ref.requires_grad and z_ref.grad_fn is None
    logratio = torch.tensor([0.2, -0.1], requires_grad=True)
    losses, _ = kto_loss(logratio, torch.tensor([True, False]), z_ref, beta=0.1)
    losses.sum().backward()
    assert kl_logps.grad is None and logratio.grad is not None
    # kto_loss itself detaches a reference point that still carries a graph
    attached = (kl_logps - ref_kl_logps).mean()
    losses, metrics = kto_loss(logratio, torch.tensor([True, False]), attached, beta=0.1)
    losses.sum().backward()
    assert kl_logps.grad is None and not metrics["kl/reference_point"].requires_grad


def test_reference_point_is_the_same_however_the_pairs_are_sharded():
    torch.manual_seed(2)
    kl_logratio = torch.randn(8) + 0.5  # mismatched log-ratios of the whole batch
    whole = kto_reference_point(kl_logratio.sum(), 8)
    shards = (kl_logratio[:3], kl_logratio[3:])  # uneven: 3 on one process, 5 on the other
    # each process sums its own pairs; the trainer all-reduces the sums and the counts
    combined = kto_reference_point(shards[0].sum() + shards[1].sum(), len(shards[0]) + len(shards[1]))
    torch.testing.assert_close(combined, whole)
    assert whole.item() == pytest.approx(max(0.0, kl_logratio.mean().item()))
    mean_of_means = (shards[0].mean() + shards[1].mean()) / 2  # averaging per-process means is not the same
    assert abs(mean_of_means.item() - whole.item()) > 1e-3


@pytest.mark.parametrize(
    ("num_desirable", "num_undesirable", "expected"),
    [
        (50, 50, (1.0, 1.0)),  # balanced: the paper's default
        (12, 10, (1.0, 1.0)),  # ratio 1.2 already in [1, 4/3]
        (10, 100, (10.0, 1.0)),  # fewer desirable: lambda_D = n_U / n_D, ratio 1
        (100, 10, (4.0 / 3.0 * 0.1, 1.0)),  # more desirable: ratio 4/3, the closest to lambda_D = 1
    ],
)
def test_recommended_weights(num_desirable, num_undesirable, expected):
    weights = kto_recommended_weights(num_desirable, num_undesirable)
    assert weights == pytest.approx(expected)
    lambda_d, lambda_u = weights
    ratio = lambda_d * num_desirable / (lambda_u * num_undesirable)
    assert 1.0 - 1e-12 <= ratio <= 4.0 / 3.0 + 1e-12


def test_recommended_weights_land_in_the_band_for_any_counts():
    for num_desirable in range(1, 40):
        for num_undesirable in range(1, 40):
            lambda_d, lambda_u = kto_recommended_weights(num_desirable, num_undesirable)
            ratio = lambda_d * num_desirable / (lambda_u * num_undesirable)
            assert 1.0 - 1e-12 <= ratio <= 4.0 / 3.0 + 1e-12


def test_bad_arguments_fail_with_the_fix():
    logratio, desirable = torch.zeros(3), torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="same shape"):
        kto_loss(torch.zeros(4), desirable, 0.0, beta=0.1)
    with pytest.raises(TypeError, match=r"bool tensor.*labels.bool\(\)"):
        kto_loss(logratio, desirable.long(), 0.0, beta=0.1)
    for beta in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta must be > 0, got"):
            kto_loss(logratio, desirable, 0.0, beta=beta)
    with pytest.raises(ValueError, match=r"must be >= 0, got -1.0 and 1.0.*kto_recommended_weights"):
        kto_loss(logratio, desirable, 0.0, beta=0.1, desirable_weight=-1.0)
    with pytest.raises(
        ValueError, match=r"reference_point must be a \(\) tensor or a float, got shape \(3,\)"
    ):
        kto_loss(logratio, desirable, torch.zeros(3), beta=0.1)
    with pytest.raises(ValueError, match=r"logratio_sum must be a scalar.*\.sum\(\)"):
        kto_reference_point(torch.zeros(4), 4)
    with pytest.raises(ValueError, match="num_items must be > 0, got 0"):
        kto_reference_point(torch.tensor(1.0), 0)
    with pytest.raises(ValueError, match="both be >= 1, got 0 and 5"):
        kto_recommended_weights(0, 5)
