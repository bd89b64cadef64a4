"""Soft labels (the `chosen_probability` column) and label-noise settings: losses, data and config checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from preftune.data import DataConfig, DataError, parse_pairs
from preftune.data.io import RowTable
from preftune.data.pairs import chosen_probabilities
from preftune.data.tokenize import encode_dataset
from preftune.engine import TrainConfig
from preftune.feedback.aggregate import parse_label_noise, resolve_label_smoothing
from preftune.losses import bradley_terry_loss
from preftune.losses.pairwise import cdpo_loss, robust_loss, sigmoid_loss, sigmoid_norm_loss, simpo_loss
from preftune.losses.registry import LABEL_NOISE_LOSSES, SOFT_LABEL_LOSSES
from preftune.losses.reward import compose_label_smoothing
from preftune.models.loading import ModelConfig
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.reward_config import RewardConfig

# ----------------------------------------------------------------------------- Bradley-Terry


def test_soft_label_bradley_terry_closed_form():
    """gap = [1, 0, -2], p = [0.8, 0.6, 1]: loss = p * softplus(-gap) + (1 - p) * softplus(gap).

    softplus(-1) = log(1 + e^-1) = 0.3132617, softplus(1) = 1 + softplus(-1) = 1.3132617, so pair 0 is
    0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.5132617; at gap 0 every p gives log 2; p = 1 is plain BT,
    softplus(2) = 2.1269280.
    """
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.zeros(3)
    p = torch.tensor([0.8, 0.6, 1.0])
    losses, _ = bradley_terry_loss(chosen, rejected, label_smoothing=1 - p)
    torch.testing.assert_close(losses, torch.tensor([0.5132617, math.log(2.0), 2.1269280]))


def test_soft_label_of_one_is_the_plain_loss_and_a_uniform_tensor_is_the_scalar():
    chosen, rejected, margin = torch.randn(6), torch.randn(6), torch.rand(6)
    plain, _ = bradley_terry_loss(chosen, rejected, margin=margin)
    hard, _ = bradley_terry_loss(
        chosen, rejected, margin=margin, label_smoothing=compose_label_smoothing(0.0, torch.ones(6))
    )
    torch.testing.assert_close(hard, plain)
    scalar, _ = bradley_terry_loss(chosen, rejected, margin=margin, label_smoothing=0.15)
    tensor, _ = bradley_terry_loss(chosen, rejected, margin=margin, label_smoothing=torch.full((6,), 0.15))
    torch.testing.assert_close(tensor, scalar)


def test_soft_label_gradient_points_to_the_log_odds_of_p():
    """d loss / d r_w = sigmoid(gap) - p: pushes r_w up while sigmoid(gap) < p, down past gap = logit(p)."""
    p = torch.tensor([0.9, 0.9, 0.6], dtype=torch.float64)
    chosen = torch.tensor([0.0, 5.0, math.log(0.6 / 0.4)], dtype=torch.float64, requires_grad=True)
    losses, _ = bradley_terry_loss(chosen, torch.zeros(3, dtype=torch.float64), label_smoothing=1 - p)
    losses.sum().backward()
    assert chosen.grad is not None
    torch.testing.assert_close(chosen.grad, torch.sigmoid(chosen.detach()) - p)
    assert chosen.grad[0] < 0 < chosen.grad[1]  # below logit(0.9): up; far above it: down
    assert chosen.grad[2].abs() < 1e-12  # at logit(p) the soft label is met


def test_soft_label_gradcheck_and_ensemble_heads():
    chosen = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor([0.0, 0.1, 0.3, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c, r: bradley_terry_loss(c, r, label_smoothing=eps)[0], (chosen, rejected)
    )
    losses, _ = bradley_terry_loss(chosen, rejected, label_smoothing=eps)  # (B, K): one eps per pair
    for k in range(3):
        head, _ = bradley_terry_loss(chosen[:, k], rejected[:, k], label_smoothing=eps)
        torch.testing.assert_close(losses[:, k], head)


def test_per_pair_smoothing_is_checked():
    with pytest.raises(ValueError, match=r"in \[0, 0.5\]"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), label_smoothing=torch.tensor([0.1, 0.6]))
    with pytest.raises(ValueError, match="one value per pair"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), label_smoothing=torch.tensor([0.1, 0.2, 0.3]))


def test_compose_label_smoothing_is_the_probability_of_exactly_one_flip():
    """eps = 0.1, p = 0.8 (q = 0.2): 0.1 * 0.8 + 0.9 * 0.2 = 0.26, and 1 - 2 * 0.26 = 0.8 * 0.6."""
    p = torch.tensor([0.8, 1.0, 0.5])
    torch.testing.assert_close(compose_label_smoothing(0.1, p), torch.tensor([0.26, 0.1, 0.5]))
    torch.testing.assert_close(compose_label_smoothing(0.0, p), 1 - p)
    torch.testing.assert_close(1 - 2 * compose_label_smoothing(0.3, p), (1 - 2 * 0.3) * (2 * p - 1))


# ----------------------------------------------------------------------------- DPO family


@pytest.mark.parametrize(
    ("fn", "extra"),
    [
        (sigmoid_loss, {}),
        (cdpo_loss, {}),
        (robust_loss, {}),
        (sigmoid_norm_loss, {}),
        (simpo_loss, {"gamma": 0.4}),
    ],
    ids=["sigmoid", "cdpo", "robust", "sigmoid_norm", "simpo"],
)
def test_per_pair_smoothing_matches_the_scalar_when_all_equal(fn, extra):
    chosen, rejected = torch.randn(5), torch.randn(5)
    scalar, _ = fn(chosen, rejected, 0.3, label_smoothing=0.2, **extra)
    tensor, _ = fn(chosen, rejected, 0.3, label_smoothing=torch.full((5,), 0.2), **extra)
    torch.testing.assert_close(tensor, scalar)


def test_per_pair_dpo_smoothing_is_the_expected_loss_under_soft_labels():
    """z = beta * (c - r) = [1, -0.5]; p = [0.9, 0.7]: p * softplus(-z) + (1 - p) * softplus(z), pair by pair."""
    chosen, rejected, p = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.7])
    losses, _ = sigmoid_loss(chosen, rejected, 0.5, label_smoothing=1 - p)
    z = torch.tensor([1.0, -0.5])
    torch.testing.assert_close(losses, p * F.softplus(-z) + (1 - p) * F.softplus(z))
    for i in range(2):  # each pair equals the scalar cDPO loss at its own eps
        alone, _ = cdpo_loss(chosen[i : i + 1], rejected[i : i + 1], 0.5, label_smoothing=float(1 - p[i]))
        torch.testing.assert_close(losses[i : i + 1], alone)


def test_per_pair_dpo_smoothing_ranges():
    zeros = torch.zeros(2)
    sigmoid_loss(zeros, zeros, 0.1, label_smoothing=torch.tensor([0.0, 0.5]))  # a coin flip is allowed
    with pytest.raises(ValueError, match=r"'robust' loss must be a \(B,\) tensor with values in \[0, 0.5\)"):
        robust_loss(zeros, zeros, 0.1, label_smoothing=torch.tensor([0.0, 0.5]))  # 1 / (1 - 2 eps)
    with pytest.raises(ValueError, match=r"'cdpo' loss .* \(0, 0.5\]"):
        cdpo_loss(zeros, zeros, 0.1, label_smoothing=torch.tensor([0.0, 0.2]))
    with pytest.raises(ValueError, match=r"'simpo' loss"):
        simpo_loss(zeros, zeros, 0.1, gamma=0.5, label_smoothing=torch.tensor([0.6, 0.2]))


# ----------------------------------------------------------------------------- data


def _table(*rows):
    return RowTable("mem.jsonl", list(rows), list(range(1, len(rows) + 1)))


def test_chosen_probability_column_is_validated_and_batched(tiny_tokenizer):
    base = {"prompt": "hello", "chosen": " world", "rejected": " dog"}
    parsed = parse_pairs(_table({**base, "chosen_probability": 0.75}, base))
    assert parsed.examples[0].meta == {"chosen_probability": 0.75}
    assert parsed.examples[1].meta == {}
    pairs, _ = encode_dataset(tiny_tokenizer, parsed, max_length=32)
    probabilities = chosen_probabilities(pairs)
    assert probabilities is not None
    torch.testing.assert_close(probabilities, torch.tensor([0.75, 1.0]))  # missing = a hard label
    assert chosen_probabilities(pairs[1:]) is None
    for bad, message in [
        (0.3, r"outside \[0.5, 1\].*write 0.7"),
        (1.5, "outside"),
        ("high", "expected a number"),
    ]:
        with pytest.raises(DataError, match=message):
            parse_pairs(_table({**base, "chosen_probability": bad}))


# ----------------------------------------------------------------------------- settings


def _dpo(**fields) -> DPOConfig:
    return DPOConfig(
        model=ModelConfig(model="m"),
        data=DataConfig(dataset="d.jsonl"),
        train=TrainConfig(output_dir="o"),
        **fields,
    )


def test_label_noise_values():
    assert parse_label_noise("none") is None
    assert parse_label_noise("auto") == "auto"
    assert parse_label_noise("0.1") == pytest.approx(0.1)
    for bad in ("0.5", "-0.1", "nan", "sometimes"):
        with pytest.raises(ValueError, match="label_noise must be 'none', 'auto' or a flip rate"):
            parse_label_noise(bad)
    assert resolve_label_smoothing("none", 0.2, "unused.jsonl", "train") == (0.2, None)
    assert resolve_label_smoothing("0.05", 0.0, "unused.jsonl", "train") == (
        0.05,
        {"label_noise": "0.05", "label_smoothing": 0.05},
    )


def test_label_noise_only_with_losses_that_use_a_flip_rate():
    assert set(SOFT_LABEL_LOSSES) < set(LABEL_NOISE_LOSSES)
    for loss in LABEL_NOISE_LOSSES:  # cdpo's flip rate may come from label_noise instead
        _dpo(loss_type=[loss], label_noise="auto")
    _dpo(loss_type=["sigmoid", "sft"], label_noise="0.1")
    for loss_type in (["ipo"], ["hinge"], ["sigmoid", "exo_pair"], ["sft", "orpo"]):
        with pytest.raises(ValueError, match="--label_noise auto sets the label-flip rate"):
            _dpo(loss_type=loss_type, label_noise="auto")
    with pytest.raises(ValueError, match="give only one of them"):
        _dpo(loss_type=["robust"], label_noise="auto", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_noise must be"):
        _dpo(loss_type=["robust"], label_noise="often")
    with pytest.raises(ValueError, match="cdpo needs --label_smoothing"):
        _dpo(loss_type=["cdpo"])  # unchanged without label_noise


def test_reward_config_label_noise():
    rm = {
        "model": ModelConfig(model="m"),
        "data": DataConfig(dataset="d.jsonl"),
        "train": TrainConfig(output_dir="o"),
    }
    assert RewardConfig(**rm, label_noise="auto").label_noise == "auto"
    with pytest.raises(ValueError, match="give only one of them"):
        RewardConfig(**rm, label_noise="0.1", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_noise must be"):
        RewardConfig(**rm, label_noise="1.2")
