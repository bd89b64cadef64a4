"""DPOTrainer.pair_losses on hand-built log-probs: how the trainer fills each loss's slots from its flags."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.dpo_helpers import loss_only_trainer


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_forward_kl_with_sigmoid_norm_has_no_length_term():
    """Issue 18: log-ratios -0.5 (chosen, 3 tokens) and -2.0 (rejected, 9 tokens), beta 0.1.

    f'(u) = 1 - 1/u: c = (1 - e^0.5) / 3, r = (1 - e^2) / 9, loss = softplus(-0.1 (c - r)) = 0.668769.
    """
    trainer = loss_only_trainer(loss_type=["sigmoid_norm"], f_divergence_type="forward_kl", beta=0.1)
    logps, ref_logps = (
        torch.tensor([-1.5, -5.0], dtype=torch.float64),
        torch.tensor([-1.0, -3.0], dtype=torch.float64),
    )
    losses, _ = trainer.pair_losses(logps, ref_logps, torch.tensor([3.0, 9.0], dtype=torch.float64))
    c, r = (1 - math.exp(0.5)) / 3, (1 - math.exp(2.0)) / 9
    assert losses.item() == pytest.approx(softplus(-0.1 * (c - r)), abs=1e-12)
    assert losses.item() == pytest.approx(0.668769, abs=1e-6)


@pytest.mark.parametrize("name", ["alpha_divergence", "alpha"])
@pytest.mark.parametrize("coef", [0.2, 0.5, 0.9])
def test_f_alpha_divergence_coef_is_trls_coefficient(name, coef):
    """TRL 1.16: f'(u) = (u^(a-1) - 1) / (a - 1) with a = --f_alpha_divergence_coef (the paper's alpha is 1 - a).

    Log-ratios 0.7 (chosen) and -1.2 (rejected), beta 0.5, sigmoid: loss = softplus(-0.5 (f'(e^0.7) - f'(e^-1.2))).
    """
    trainer = loss_only_trainer(f_divergence_type=name, f_alpha_divergence_coef=coef, beta=0.5)
    logps = torch.tensor([-2.3, -4.2], dtype=torch.float64)
    ref_logps = torch.tensor([-3.0, -3.0], dtype=torch.float64)
    losses, _ = trainer.pair_losses(logps, ref_logps, torch.ones(2, dtype=torch.float64))

    def f_prime(u: float) -> float:
        return (u ** (coef - 1) - 1) / (coef - 1)

    expected = softplus(-0.5 * (f_prime(math.exp(0.7)) - f_prime(math.exp(-1.2))))
    assert losses.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("coef", [0.0, 1.0, 1.5])
def test_f_alpha_divergence_coef_out_of_range_names_the_limits(coef):
    with pytest.raises(ValueError, match=r"TRL's coefficient a .*reverse_kl \(a = 1\)"):
        loss_only_trainer(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=coef)


def test_ipo_sums_log_ratios_and_ipo_norm_averages_them_per_token():
    """Log-ratios 1.2 (chosen, 4 tokens) and -0.6 (rejected, 2 tokens), beta 0.5: target gap 1 / (2 beta) = 1.

    ipo (eq. 17, summed): h = 1.8, loss (1.8 - 1)^2 = 0.64. ipo_norm (TRL's ipo): h = 0.3 + 0.3 = 0.6,
    loss (0.6 - 1)^2 = 0.16.
    """
    logps, ref_logps = (
        torch.tensor([-3.8, -5.6], dtype=torch.float64),
        torch.tensor([-5.0, -5.0], dtype=torch.float64),
    )
    lengths = torch.tensor([4.0, 2.0], dtype=torch.float64)
    summed, _ = loss_only_trainer(loss_type=["ipo"], beta=0.5).pair_losses(logps, ref_logps, lengths)
    normalised, _ = loss_only_trainer(loss_type=["ipo_norm"], beta=0.5).pair_losses(logps, ref_logps, lengths)
    assert summed.item() == pytest.approx(0.64, abs=1e-12)
    assert normalised.item() == pytest.approx(0.16, abs=1e-12)
