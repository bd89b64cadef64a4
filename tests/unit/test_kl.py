"""Exact token KL against hand-computed values and its basic properties."""

import math

import pytest
import torch

from preftune.losses.kl import token_kl


def test_token_kl_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    kl = token_kl(p.log(), q.log())
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    torch.testing.assert_close(kl, torch.tensor([0.0, expected]))


def test_token_kl_is_non_negative_and_zero_only_for_equal_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(16, 30).log_softmax(-1), torch.randn(16, 30).log_softmax(-1)
    assert torch.all(token_kl(a, b) > 0)
    torch.testing.assert_close(token_kl(a, a), torch.zeros(16))
    assert not torch.allclose(token_kl(a, b), token_kl(b, a))  # not symmetric


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        token_kl(torch.zeros(2, 3), torch.zeros(2, 4))
