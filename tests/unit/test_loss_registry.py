"""One record per loss: the traits the trainers read come from the records, and `preference_loss` fills each
loss's slots from its record for both DPO trainers (closed-form values on hand-built log-probs)."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from preftune.losses.registry import (
    LABEL_NOISE_LOSSES,
    LOSSES,
    MARGIN_LOSSES,
    SFT_TERM,
    SOFT_LABEL_LOSSES,
    SORTED_LOSSES,
    combined_losses,
    preference_loss,
)
from preftune.trainers import dpo_config
from preftune.trainers.online_dpo_config import OnlineLossType


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_traits_derived_from_the_records():
    assert set(MARGIN_LOSSES) == {"sigmoid", "cdpo", "robust", "ipo", "ipo_norm", "hinge", "sigmoid_norm",
                                  "exo_pair", "discopop"}  # fmt: skip
    assert set(SOFT_LABEL_LOSSES) == {"sigmoid", "cdpo", "sigmoid_norm", "simpo"}
    assert set(LABEL_NOISE_LOSSES) == {"sigmoid", "cdpo", "robust", "sigmoid_norm", "simpo"}
    assert set(SORTED_LOSSES) == {"aot", "aot_unpaired"}
    # a label-flip rate or soft label only means something to a loss that takes label smoothing
    for name in (*SOFT_LABEL_LOSSES, *LABEL_NOISE_LOSSES):
        assert "label_smoothing" in LOSSES[name].params, name
    assert SFT_TERM == dpo_config.SFT_TERM and SFT_TERM not in LOSSES
    assert dpo_config.losses_where("margin") == MARGIN_LOSSES


def test_every_online_loss_is_filled_from_what_online_dpo_gives():
    """Online DPO gives log-probs, reference log-probs, lengths and label_smoothing: every loss it offers
    runs on them through the same function as offline DPO."""
    logps = torch.tensor([-2.0, -3.5], dtype=torch.float64)
    ref_logps = torch.tensor([-2.5, -3.0], dtype=torch.float64)
    lengths = torch.tensor([2.0, 5.0], dtype=torch.float64)
    for name in typing.get_args(OnlineLossType):
        smoothing = 0.1 if "label_smoothing" in LOSSES[name].params else 0.0
        losses, metrics = preference_loss(
            name, logps, ref_logps, lengths, 0.5, {"label_smoothing": smoothing}
        )
        assert losses.shape == (1,) and torch.isfinite(losses).all(), name


def test_reference_free_length_normalised_loss_reads_the_policy_mean_log_probs():
    """SimPO: slots are the policy's per-token means, -1.0 (chosen, 2 tokens) and -0.7 (rejected, 5 tokens);
    beta 2, gamma 0.5: softplus(0.5 - 2 (-1.0 + 0.7)) = softplus(1.1). The reference is ignored."""
    logps = torch.tensor([-2.0, -3.5], dtype=torch.float64)
    lengths = torch.tensor([2.0, 5.0], dtype=torch.float64)
    for ref in (None, torch.tensor([9.0, -9.0], dtype=torch.float64)):
        losses, _ = preference_loss("simpo", logps, ref, lengths, 2.0, {"gamma": 0.5, "label_smoothing": 0.0})
        assert losses.item() == pytest.approx(softplus(1.1), abs=1e-12)


def test_bco_shift_is_the_batch_mean_implicit_reward():
    """bco_pair: log-ratios 0.5 and -1.0 (one pair), beta 0.4: delta = 0.4 * (0.5 - 1.0) / 2 = -0.1;
    loss = softplus(delta - 0.2) + softplus(-0.4 - delta) = softplus(-0.3) + softplus(-0.3)."""
    logps = torch.tensor([-1.5, -4.0], dtype=torch.float64)
    ref_logps = torch.tensor([-2.0, -3.0], dtype=torch.float64)
    losses, _ = preference_loss("bco_pair", logps, ref_logps, torch.ones(2, dtype=torch.float64), 0.4, {})
    assert losses.item() == pytest.approx(2 * softplus(-0.3), abs=1e-12)


def test_a_parameter_the_trainer_does_not_give_is_named():
    logps = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'discopop' needs \['tau'\]"):
        preference_loss("discopop", logps, logps, torch.ones(2, dtype=torch.float64), 0.1, {})


def test_combined_losses_weight_each_term_and_keep_each_loss():
    """sigmoid (log-ratios 0.5, -1.0, beta 0.4: softplus(-0.6)) x 2 + sft (chosen NLL 1.5 / 3 = 0.5) x 0.5."""
    logps = torch.tensor([-1.5, -4.0], dtype=torch.float64)
    ref_logps = torch.tensor([-2.0, -3.0], dtype=torch.float64)
    lengths = torch.tensor([3.0, 2.0], dtype=torch.float64)
    total, metrics = combined_losses(["sigmoid", SFT_TERM], [2.0, 0.5], logps, ref_logps, lengths, 0.4,
                                     {"label_smoothing": 0.0})  # fmt: skip
    assert total.item() == pytest.approx(2 * softplus(-0.6) + 0.5 * 0.5, abs=1e-12)
    assert metrics["loss/sigmoid"].item() == pytest.approx(softplus(-0.6), abs=1e-12)
    assert metrics["loss/sft"].item() == pytest.approx(0.5, abs=1e-12)
    assert metrics["ref_logps/chosen"].item() == -2.0 and metrics["logps/rejected"].item() == -4.0
