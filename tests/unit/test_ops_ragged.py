"""Ops for the policy-gradient trainers: ragged -> padded layout, masked whitening, entropy."""

import math

import pytest
import torch

from preftune.ops.logprobs import entropy_from_logits
from preftune.ops.ragged import pad_ragged
from preftune.ops.whiten import whiten

# --- pad_ragged -------------------------------------------------------------------------------


def _random_ragged(
    seed: int, num_seqs: int = 6, max_len: int = 5
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (num_seqs,), generator=g).tolist()
    seq_index = torch.repeat_interleave(torch.arange(num_seqs), torch.tensor(lengths))
    values = torch.randn(seq_index.numel(), generator=g)
    return values, seq_index, lengths


def test_pad_ragged_closed_form():
    """Tokens 1, 2 of sequence 0 and 3, 4, 5 of sequence 2; sequences 1 and 3 are empty -> T = 3."""
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    padded, mask = pad_ragged(values, torch.tensor([0, 0, 2, 2, 2]), num_seqs=4, fill=-1.0)
    expected = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -1.0, -1.0], [3.0, 4.0, 5.0], [-1.0, -1.0, -1.0]])
    torch.testing.assert_close(padded, expected)
    assert mask.tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, True],
        [False, False, False],
    ]


@pytest.mark.parametrize("seed", range(5))
def test_pad_ragged_is_inverted_by_boolean_indexing_and_matches_a_loop(seed):
    values, seq_index, lengths = _random_ragged(seed)
    padded, mask = pad_ragged(values, seq_index, num_seqs=len(lengths))
    torch.testing.assert_close(padded[mask], values)
    assert padded.shape == (len(lengths), max(max(lengths), 1))
    assert mask.sum(dim=1).tolist() == lengths
    start = 0
    for row, length in enumerate(lengths):
        torch.testing.assert_close(padded[row, :length], values[start : start + length])
        assert torch.all(padded[row, length:] == 0.0)
        start += length


def test_pad_ragged_keeps_trailing_dims_and_gradients():
    values = torch.randn(4, 3, requires_grad=True)
    padded, mask = pad_ragged(values, torch.tensor([0, 1, 1, 1]), num_seqs=2)
    assert padded.shape == (2, 3, 3)
    torch.testing.assert_close(padded[mask], values)
    (padded * 2).sum().backward()
    torch.testing.assert_close(values.grad, torch.full((4, 3), 2.0))


def test_pad_ragged_with_no_tokens_gives_one_empty_column():
    padded, mask = pad_ragged(torch.zeros(0), torch.zeros(0, dtype=torch.long), num_seqs=3)
    assert padded.shape == (3, 1) and not mask.any()


@pytest.mark.parametrize(
    ("seq_index", "match"),
    [([0, 1, 0], "non-decreasing"), ([0, 3], r"in \[0, 3\)"), ([-1, 0], r"in \[0, 3\)"), ([0], "shape")],
)
def test_pad_ragged_rejects_bad_indices(seq_index, match):
    with pytest.raises(ValueError, match=match):
        pad_ragged(
            torch.zeros(len(seq_index) if match != "shape" else 2), torch.tensor(seq_index), num_seqs=3
        )


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
