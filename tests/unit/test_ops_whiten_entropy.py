"""Ops for the policy-gradient trainers: masked whitening, entropy."""

import math

import pytest
import torch

from preftune.ops.logprobs import entropy_from_logits
from preftune.ops.whiten import whiten

# --- whiten -----------------------------------------------------------------------------------


def test_whiten_closed_form():
    """Counted 2, 4, 6: mean 4, unbiased variance (4 + 0 + 4) / 2 = 4, std 2 -> -1, 0, 1;
    shift_mean=False adds the mean back -> 3, 4, 5. The padded entry stays 0."""
    values = torch.tensor([[2.0, 4.0], [6.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(whiten(values, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(whiten(values, mask, shift_mean=False), torch.tensor([[3.0, 4.0], [5.0, 0.0]]))


def test_whiten_gives_zero_mean_unit_unbiased_variance_over_counted_entries():
    torch.manual_seed(0)
    values = 3.0 + 5.0 * torch.randn(4, 7, dtype=torch.float64)
    mask = torch.rand(4, 7) > 0.4
    out = whiten(values, mask)[mask]
    torch.testing.assert_close(out.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(out.var(), torch.tensor(1.0, dtype=torch.float64))  # unbiased
    scaled = whiten(values, mask, shift_mean=False)[mask]
    torch.testing.assert_close(scaled.mean(), values[mask].mean())
    torch.testing.assert_close(scaled.var(), torch.tensor(1.0, dtype=torch.float64))


def test_whiten_ignores_padding():
    """More padding columns, holding NaN, change nothing; the result equals whitening the flat counted values."""
    torch.manual_seed(0)
    values = torch.randn(3, 5)
    mask = torch.rand(3, 5) > 0.3
    padded_values = torch.cat([values, torch.full((3, 4), float("nan"))], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    out = whiten(padded_values, padded_mask)
    torch.testing.assert_close(out[:, :5], whiten(values, mask))
    assert torch.all(out[:, 5:] == 0) and torch.all(out[~padded_mask] == 0)
    flat = values[mask]
    torch.testing.assert_close(out[padded_mask], (flat - flat.mean()) / torch.sqrt(flat.var() + 1e-8))


def test_whiten_needs_two_counted_entries():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.ones(2, 2), torch.tensor([[True, False], [False, False]]))


# --- entropy_from_logits ------------------------------------------------------------------------


def test_entropy_closed_forms():
    """Uniform over 4 tokens: log 4. p = (1/2, 1/4, 1/4): 0.5 log 2 + 2 * 0.25 log 4 = 1.5 log 2.
    A -inf logit is a token with p = 0: (0, 0, -inf) is uniform over two, log 2."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf]])
    expected = torch.tensor([math.log(4.0), 1.5 * math.log(2.0)])
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    torch.testing.assert_close(
        entropy_from_logits(torch.tensor([0.0, 0.0, -math.inf])), torch.tensor(math.log(2.0))
    )


def test_entropy_matches_float64_reference_for_any_shape_dtype_and_scale():
    torch.manual_seed(0)
    for scale in (1.0, 30.0, 1e4):
        logits = scale * torch.randn(2, 3, 11, dtype=torch.float64)
        expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        out = entropy_from_logits(logits.float())
        assert out.dtype == torch.float32 and out.shape == (2, 3)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    bf16 = torch.randn(4, 9).bfloat16()
    assert entropy_from_logits(bf16).dtype == torch.float32
    torch.testing.assert_close(entropy_from_logits(bf16), entropy_from_logits(bf16.float()))


def test_entropy_gradient_is_analytic_and_finite_with_masked_tokens():
    """dH/dz_v = -p_v (log p_v + H); 0 at a -inf logit (no NaN)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 6, dtype=torch.float64)
    logits[0, 2] = -math.inf
    logits.requires_grad_(True)
    entropy_from_logits(logits).sum().backward()
    logp = logits.detach().log_softmax(-1)
    p = logp.exp()
    H = -(p * torch.where(p > 0, logp, 0.0)).sum(-1, keepdim=True)
    expected = -p * (torch.where(p > 0, logp, 0.0) + H)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=1e-5)
    assert logits.grad[0, 2] == 0
