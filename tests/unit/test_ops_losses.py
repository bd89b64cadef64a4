"""Closed forms, identities, gradients and masking invariance of ops and the SFT loss."""

import math

import torch

from preftune.losses import sft_loss
from preftune.ops.logprobs import gather_token_logps, masked_token_logps
from preftune.ops.reduce import masked_mean, masked_sum, reduce_loss


def test_gather_token_logps_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gather_token_logps(logits, labels), expected)


def test_gather_token_logps_closed_form_uniform_logits():
    """Equal logits over V=4 tokens: every token has log-prob log(1/4)."""
    logps = gather_token_logps(torch.zeros(1, 3, 4), torch.tensor([[0, 2, 3]]))
    torch.testing.assert_close(logps, torch.full((1, 3), math.log(0.25)))


def test_temperature_divides_logits():
    """logits (2, 0) at T=2 become (1, 0): log p(0) = 1 - log(e + 1)."""
    logps = gather_token_logps(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    torch.testing.assert_close(logps, torch.tensor([[1.0 - math.log(math.e + 1.0)]]))


def test_gather_token_logps_gradient_float64():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    # computed in float32 internally, so compare with the analytic gradient d/dz log softmax = onehot - p
    out = gather_token_logps(logits, labels).sum()
    out.backward()
    probs = torch.softmax(logits.detach(), -1)
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    torch.testing.assert_close(logits.grad, onehot - probs, atol=1e-6, rtol=1e-5)


def test_masked_token_logps_equals_full_gather_where_masked():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    labels = torch.randint(0, 7, (3, 5))
    mask = torch.rand(3, 5) > 0.5
    full = gather_token_logps(logits, labels)
    torch.testing.assert_close(masked_token_logps(logits, labels, mask), torch.where(mask, full, 0.0))


def test_masked_token_logps_gradient_flows_only_to_selected_positions():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    masked_token_logps(logits, torch.zeros(2, 3, dtype=torch.long), mask).sum().backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask].abs().sum(-1) > 0).all()


def test_masked_reductions_ignore_masked_values():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_sum(values, mask).item() == 11.0
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), torch.tensor([1.5, 4.0]))
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_reduce_loss_global_token_count_makes_split_irrelevant():
    """Summing micro-batch losses normalised by the global count equals the one-batch mean."""
    torch.manual_seed(0)
    losses = torch.rand(8, 6)
    mask = torch.rand(8, 6) > 0.3
    whole = reduce_loss(losses, mask)
    total = mask.sum()
    parts = sum(reduce_loss(losses[i : i + 2], mask[i : i + 2], num_items=total) for i in range(0, 8, 2))
    torch.testing.assert_close(parts, whole)
    # the naive mean of per-micro-batch means differs when token counts differ
    naive = sum(reduce_loss(losses[i : i + 2], mask[i : i + 2]) for i in range(0, 8, 2)) / 4
    assert not torch.allclose(naive, whole)


def test_reduce_loss_sequence_normalization():
    """Two sequences with mean token losses 1 and 3 -> (1 + 3) / 2 = 2."""
    losses = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert reduce_loss(losses, mask, normalization="sequence").item() == 2.0


def test_sft_loss_closed_form_and_masking():
    """Target log-probs log(0.5), log(0.25) -> NLL (log 2 + log 4) / 2 = 1.5 log 2."""
    token_logps = torch.tensor([[math.log(0.5), math.log(0.25), -50.0]])
    mask = torch.tensor([[True, True, False]])
    losses, metrics = sft_loss(token_logps, mask)
    assert losses[0, 2].item() == 0.0
    torch.testing.assert_close(reduce_loss(losses, mask), torch.tensor(1.5 * math.log(2.0)))
    torch.testing.assert_close(metrics["train/nll_sum"], torch.tensor(3.0 * math.log(2.0)))
    assert metrics["train/num_loss_tokens"].item() == 2


def test_sft_loss_gradient_is_minus_mask():
    token_logps = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    losses, _ = sft_loss(token_logps, mask)
    losses.sum().backward()
    torch.testing.assert_close(token_logps.grad, -mask.double())
