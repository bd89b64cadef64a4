"""Exact token KL against hand-computed values; sampled estimators k1/k2/k3 against exact expectations."""

import math
from typing import get_args

import pytest
import torch

from preftune.losses.kl import KL_ESTIMATORS, KLEstimator, kl_estimate, kl_k3, token_kl


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


# --- sampled estimators k1, k2, k3 (Schulman 2020) ---------------------------------------------


def _categoricals(seed: int, size: int = 6, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of p and q over `size` outcomes in float64; q is p's logits moved by `spread` noise."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, generator=g, dtype=torch.float64)
    log_p = logits.log_softmax(-1)
    log_q = (logits + spread * torch.randn(size, generator=g, dtype=torch.float64)).log_softmax(-1)
    return log_p, log_q


def test_estimators_closed_form():
    """logratio = log 2 (pi twice pi_ref at the sample): k1 = log 2, k2 = 0.5 (log 2)^2,
    k3 = exp(-log 2) - 1 + log 2 = 0.5 - 1 + log 2 = log 2 - 0.5."""
    logratio = torch.tensor([math.log(2.0), 0.0])
    torch.testing.assert_close(kl_estimate(logratio, "k1"), torch.tensor([math.log(2.0), 0.0]))
    torch.testing.assert_close(kl_estimate(logratio, "k2"), torch.tensor([0.5 * math.log(2.0) ** 2, 0.0]))
    torch.testing.assert_close(kl_estimate(logratio, "k3"), torch.tensor([math.log(2.0) - 0.5, 0.0]))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_and_k3_are_unbiased(estimator, seed):
    """The exact expectation sum_x p(x) k(log p(x) - log q(x)) is KL(p || q), even for p far from q."""
    log_p, log_q = _categoricals(seed, spread=1.5)
    expectation = (log_p.exp() * kl_estimate(log_p - log_q, estimator)).sum()
    torch.testing.assert_close(expectation, token_kl(log_p, log_q))


def test_k2_expectation_is_half_mean_square_and_close_to_kl_only_for_close_distributions():
    log_p, log_q = _categoricals(0, spread=0.02)
    logratio = log_p - log_q
    expectation = (log_p.exp() * kl_estimate(logratio, "k2")).sum()
    torch.testing.assert_close(expectation, 0.5 * (log_p.exp() * logratio**2).sum())
    kl = token_kl(log_p, log_q)
    assert abs(expectation - kl) < 0.05 * kl  # third-order difference
    # far apart the bias is large: k2 is not unbiased
    log_p, log_q = _categoricals(0, spread=2.0)
    far = (log_p.exp() * kl_estimate(log_p - log_q, "k2")).sum()
    assert abs(far - token_kl(log_p, log_q)) > 0.05 * token_kl(log_p, log_q)


def test_k3_is_non_negative_and_zero_only_at_zero():
    logratio = torch.linspace(-30.0, 30.0, 2001, dtype=torch.float64)
    k3 = kl_estimate(logratio, "k3")
    assert torch.all(k3 >= 0)
    assert torch.all((k3 == 0) == (logratio == 0))
    # k1 is negative wherever pi < pi_ref at the sample
    assert torch.all(kl_estimate(logratio, "k1")[logratio < 0] < 0)


def test_k3_keeps_precision_for_tiny_logratios():
    """k3(x) = x^2 / 2 - x^3 / 6 + ... = 5e-9 at x = 1e-4. In float32 exp(-x) - 1 + x is off by
    about float32's eps (6e-8) near 1, ten times the answer; expm1(-x) + x is within 1%."""
    x = torch.tensor([1e-4])
    exact = torch.tensor([0.5e-8 - 1e-12 / 6])
    torch.testing.assert_close(kl_estimate(x, "k3"), exact, rtol=1e-2, atol=0)
    assert not torch.allclose(torch.exp(-x) - 1 + x, exact, rtol=1e-2, atol=0)


def test_k3_gradient_float64():
    """d k3 / d logratio = 1 - exp(-logratio)."""
    logratio = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kl_k3, (logratio,))
    kl_k3(logratio).sum().backward()
    torch.testing.assert_close(logratio.grad, 1.0 - torch.exp(-logratio.detach()))


def test_estimator_names_match_the_literal():
    assert set(get_args(KLEstimator)) == set(KL_ESTIMATORS)
    with pytest.raises(ValueError, match="Unknown KL estimator"):
        kl_estimate(torch.zeros(2), "k4")  # type: ignore[arg-type]
