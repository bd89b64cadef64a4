"""Pairwise loss variants: closed-form values, identities, gradients, stability, the registry, and the
LD-DPO / WPO helpers. c, r are the chosen / rejected log-ratios and z = beta * (c - r)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from preftune.losses.pairwise_variants import (
    VARIANT_LOSS_FUNCTIONS,
    aot_loss,
    aot_pair_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    exo_pair_loss,
    ld_logps,
    nca_pair_loss,
    sppo_hard_loss,
    wpo_weights,
)

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _required_kwargs(name: str, chosen: torch.Tensor) -> dict:
    """Keyword arguments without a default, filled with neutral values."""
    if name == "aot":
        return {"ref_chosen_logps": torch.zeros_like(chosen), "ref_rejected_logps": torch.zeros_like(chosen)}
    if name == "bco_pair":
        return {"delta": 0.0}
    return {}


def _call(name: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float):
    fn, _ = VARIANT_LOSS_FUNCTIONS[name]
    return fn(chosen, rejected, beta, **_required_kwargs(name, chosen))


ALL = sorted(VARIANT_LOSS_FUNCTIONS)


# ---------------------------------------------------------------- the family's shared contract


def test_registry_lists_each_function_with_its_keyword_only_parameters():
    assert set(VARIANT_LOSS_FUNCTIONS) == {
        "sppo_hard", "aot_unpaired", "aot", "apo_zero", "apo_down", "bco_pair", "exo_pair", "nca_pair", "discopop",
    }  # fmt: skip
    for name, (fn, params) in VARIANT_LOSS_FUNCTIONS.items():
        signature = inspect.signature(fn).parameters.values()
        keyword_only = tuple(p.name for p in signature if p.kind is inspect.Parameter.KEYWORD_ONLY)
        positional = tuple(p.name for p in signature if p.kind is not inspect.Parameter.KEYWORD_ONLY)
        assert params == keyword_only, name
        assert positional == ("chosen_logratio", "rejected_logratio", "beta"), name
        trl_names = {"aot": "aot_pair_loss", "aot_unpaired": "aot_loss"}  # registered under TRL's names
        assert fn.__name__ == trl_names.get(name, f"{name}_loss")


@pytest.mark.parametrize("name", ALL)
def test_metrics_are_detached_implicit_rewards_with_half_credit_ties(name):
    chosen = torch.tensor([1.0, 0.5, -2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    losses, metrics = _call(name, chosen, rejected, beta=0.5)
    assert losses.shape == (3,) and losses.requires_grad
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert not any(m.requires_grad for m in metrics.values())
    torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([0.5, 0.25, -1.0]))
    torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([0.0, 0.25, 0.5]))
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor([0.5, 0.0, -1.5]))
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("name", ALL)
def test_gradients_match_finite_differences_in_float64(name):
    torch.manual_seed(0)
    chosen = torch.randn(5, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, dtype=torch.float64, requires_grad=True)
    kwargs = _required_kwargs(name, chosen)
    if name == "aot":  # a reference that reorders the pairs, so that the sort matters
        kwargs = {
            "ref_chosen_logps": torch.randn(5, dtype=torch.float64),
            "ref_rejected_logps": torch.zeros(5),
        }
    if name == "bco_pair":
        kwargs = {"delta": 0.3}
    fn, _ = VARIANT_LOSS_FUNCTIONS[name]
    assert torch.autograd.gradcheck(lambda c, r: fn(c, r, 0.7, **kwargs)[0], (chosen, rejected))


@pytest.mark.parametrize("name", ALL)
def test_finite_for_extreme_logratios_in_float32(name):
    chosen = torch.tensor([-500.0, 500.0, 0.0], requires_grad=True)
    rejected = torch.tensor([500.0, -500.0, 0.0], requires_grad=True)
    losses, _ = _call(name, chosen, rejected, beta=0.1)
    losses.sum().backward()
    assert torch.isfinite(losses).all(), losses
    assert chosen.grad is not None and torch.isfinite(chosen.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_mismatched_shapes_and_non_positive_beta_fail_with_the_fix(name):
    with pytest.raises(ValueError, match="same shape"):
        _call(name, torch.zeros(3), torch.zeros(4), beta=0.1)
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0.0. Typical range"):
        _call(name, torch.zeros(3), torch.zeros(3), beta=0.0)


# ---------------------------------------------------------------- SPPO (hard labels)


def test_sppo_hard_closed_form():
    """beta = 0.5, so the targets are c = +1, r = -1: (c - 1)^2 + (r + 1)^2 = 0, 2 and 5."""
    losses, _ = sppo_hard_loss(_t(1.0, 0.0, 2.0), _t(-1.0, 0.0, 1.0), beta=0.5)
    torch.testing.assert_close(losses, _t(0.0, 2.0, 5.0))


@pytest.mark.parametrize("beta", [0.1, 0.25, 2.0])
def test_sppo_hard_at_the_reference_is_twice_the_squared_target(beta):
    losses, _ = sppo_hard_loss(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), beta)
    torch.testing.assert_close(losses, torch.full((2,), 2 / (4 * beta**2), dtype=torch.float64))


# ---------------------------------------------------------------- AOT


def test_aot_compares_sorted_chosen_with_sorted_rejected():
    """sort(c) = [-1, 2], sort(r) = [0, 1], so the gaps are [-1, 1] (pairwise they would be [2, -2])."""
    losses, metrics = aot_loss(_t(2.0, -1.0), _t(0.0, 1.0), beta=1.0)
    torch.testing.assert_close(losses, _t(math.log1p(math.e), math.log1p(math.exp(-1.0))))
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0]  # metrics stay per original pair
    eps = 0.1
    smoothed, _ = aot_loss(_t(2.0, -1.0), _t(0.0, 1.0), beta=1.0, label_smoothing=eps)
    # (1 - eps) * softplus(-gap) + eps * softplus(gap), gap = [-1, 1]
    expected = [(1 - eps) * math.log1p(math.e) + eps * math.log1p(math.exp(-1.0))]
    expected.append((1 - eps) * math.log1p(math.exp(-1.0)) + eps * math.log1p(math.e))
    torch.testing.assert_close(smoothed, _t(*expected))


def test_aot_pair_compares_sorted_policy_gaps_with_sorted_reference_gaps():
    """Reference gaps [2, 0] and c - r = [-1, 3] make policy gaps [1, 3]; sorted: [1, 3] - [0, 2] = [1, 1]."""
    losses, _ = aot_pair_loss(
        _t(-1.0, 3.0), _t(0.0, 0.0), beta=1.0, ref_chosen_logps=_t(2.0, 0.0), ref_rejected_logps=_t(0.0, 0.0)
    )
    torch.testing.assert_close(losses, torch.full((2,), math.log1p(math.exp(-1.0)), dtype=torch.float64))


def test_aot_pair_with_equal_reference_gaps_is_dpo_reordered():
    torch.manual_seed(1)
    chosen, rejected, beta = torch.randn(6), torch.randn(6), 0.3
    ref = torch.randn(6)  # the same log-prob for both responses: reference gaps are all 0
    losses, _ = aot_pair_loss(chosen, rejected, beta, ref_chosen_logps=ref, ref_rejected_logps=ref)
    dpo = F.softplus(-beta * (chosen - rejected))
    torch.testing.assert_close(torch.sort(losses).values, torch.sort(dpo).values)


def test_aot_losses_do_not_depend_on_the_order_of_the_pairs():
    torch.manual_seed(2)
    chosen, rejected, ref_chosen, ref_rejected = torch.randn(4, 8).unbind(0)
    perm = torch.randperm(8)
    unpaired, _ = aot_loss(chosen, rejected, beta=0.5)
    unpaired_shuffled, _ = aot_loss(chosen[perm], rejected[perm], beta=0.5)
    torch.testing.assert_close(unpaired_shuffled, unpaired)  # the same losses at the same sorted positions
    # the unpaired form even ignores which rejected response came with which chosen one
    torch.testing.assert_close(aot_loss(chosen, rejected[torch.randperm(8)], beta=0.5)[0], unpaired)
    paired, _ = aot_pair_loss(
        chosen, rejected, 0.5, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected
    )
    paired_shuffled, _ = aot_pair_loss(
        chosen[perm],
        rejected[perm],
        0.5,
        ref_chosen_logps=ref_chosen[perm],
        ref_rejected_logps=ref_rejected[perm],
    )
    torch.testing.assert_close(paired_shuffled, paired)


def test_aot_bad_arguments_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        aot_loss(torch.zeros(2), torch.zeros(2), 0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="must have the log-ratios' shape"):
        aot_pair_loss(
            torch.zeros(2),
            torch.zeros(2),
            0.1,
            ref_chosen_logps=torch.zeros(3),
            ref_rejected_logps=torch.zeros(2),
        )


# ---------------------------------------------------------------- APO


def test_apo_zero_closed_form():
    """1 - sigmoid(c) + sigmoid(r) at beta = 1: (0, 0) -> 1; (ln3, -ln3) -> 1 - 3/4 + 1/4; (0, ln3) -> 1 - 1/2 + 3/4."""
    losses, _ = apo_zero_loss(_t(0.0, LN3, 0.0), _t(0.0, -LN3, LN3), beta=1.0)
    torch.testing.assert_close(losses, _t(1.0, 0.5, 1.25))


def test_apo_down_closed_form():
    """sigmoid(c) + 1 - sigmoid(c - r) at beta = 1: (0, 0) -> 1; (ln3, ln3) -> 3/4 + 1/2; (0, -ln3) -> 1/2 + 1/4."""
    losses, _ = apo_down_loss(_t(0.0, LN3, 0.0), _t(0.0, LN3, -LN3), beta=1.0)
    torch.testing.assert_close(losses, _t(1.0, 1.25, 0.75))


def test_apo_gradients_at_the_reference():
    """At c = r = 0, sigmoid' = 1/4. apo_zero: d/dc = -beta/4, d/dr = beta/4 (chosen up, rejected down).
    apo_down: d/dc = beta/4 - beta/4 = 0, d/dr = beta/4 (the rejected one goes down first)."""
    beta = 0.8
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    apo_zero_loss(chosen, rejected, beta)[0].sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([-beta / 4]))
    torch.testing.assert_close(rejected.grad, torch.tensor([beta / 4]))
    chosen.grad, rejected.grad = None, None
    apo_down_loss(chosen, rejected, beta)[0].sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([0.0]))
    torch.testing.assert_close(rejected.grad, torch.tensor([beta / 4]))


# ---------------------------------------------------------------- BCO (pairs)


def test_bco_pair_closed_form():
    """beta = 0.5, delta = 0.2, c = 1, r = -1: softplus(-(0.5 - 0.2)) + softplus(-0.5 - 0.2)."""
    losses, _ = bco_pair_loss(_t(1.0), _t(-1.0), beta=0.5, delta=0.2)
    torch.testing.assert_close(losses, _t(math.log1p(math.exp(-0.3)) + math.log1p(math.exp(-0.7))))
    at_reference, _ = bco_pair_loss(torch.zeros(2), torch.zeros(2), beta=0.5, delta=0.0)
    torch.testing.assert_close(at_reference, torch.full((2,), 2 * math.log(2.0)))


def test_bco_pair_shifting_rewards_and_delta_together_changes_nothing():
    torch.manual_seed(3)
    chosen, rejected, beta, delta, shift = torch.randn(5), torch.randn(5), 0.4, 0.3, 1.7
    losses, _ = bco_pair_loss(chosen, rejected, beta, delta=delta)
    shifted, _ = bco_pair_loss(chosen + shift / beta, rejected + shift / beta, beta, delta=delta + shift)
    torch.testing.assert_close(shifted, losses)
    unshifted, _ = bco_pair_loss(chosen + shift / beta, rejected + shift / beta, beta, delta=delta)
    assert not torch.allclose(unshifted, losses)  # the shift is what delta absorbs


def test_bco_pair_without_shift_is_two_binary_cross_entropies():
    chosen, rejected, beta = torch.randn(4), torch.randn(4), 0.2
    losses, _ = bco_pair_loss(chosen, rejected, beta, delta=0.0)
    torch.testing.assert_close(losses, -F.logsigmoid(beta * chosen) - F.logsigmoid(-beta * rejected))
    with pytest.raises(ValueError, match="delta must be a finite float"):
        bco_pair_loss(chosen, rejected, beta, delta=math.nan)


# ---------------------------------------------------------------- EXO (pairs)


def test_exo_pair_closed_form():
    """beta = 1, z = ln 3: q = [3/4, 1/4]; KL(q || [1 - eps, eps]) = 3/4 ln(3/4 / 0.9) + 1/4 ln(1/4 / 0.1)."""
    losses, _ = exo_pair_loss(_t(LN3), _t(0.0), beta=1.0, label_smoothing=0.1)
    torch.testing.assert_close(losses, _t(0.75 * math.log(0.75 / 0.9) + 0.25 * math.log(0.25 / 0.1)))


@pytest.mark.parametrize("eps", [1e-3, 0.1, 0.3])
def test_exo_pair_at_the_reference_and_at_its_minimum(eps):
    """At z = 0, q = [1/2, 1/2]: ln(1/2) - (ln(1 - eps) + ln eps) / 2. At z = ln((1 - eps)/eps), q = p: 0."""
    zeros = torch.zeros(2, dtype=torch.float64)
    at_reference, _ = exo_pair_loss(zeros, zeros, beta=0.3, label_smoothing=eps)
    expected = math.log(0.5) - 0.5 * (math.log1p(-eps) + math.log(eps))
    torch.testing.assert_close(at_reference, torch.full((2,), expected, dtype=torch.float64))
    beta = 0.5
    chosen = torch.full((1,), math.log((1 - eps) / eps) / beta, dtype=torch.float64, requires_grad=True)
    at_minimum, _ = exo_pair_loss(chosen, torch.zeros(1, dtype=torch.float64), beta, label_smoothing=eps)
    at_minimum.sum().backward()
    torch.testing.assert_close(at_minimum, torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(chosen.grad, torch.zeros(1, dtype=torch.float64))


def test_exo_pair_is_finite_for_extreme_label_smoothing():
    chosen, rejected = torch.tensor([-500.0, 0.0, 500.0]), torch.zeros(3)
    for eps in (1e-30, 1e-300, 1 - 1e-12):
        losses, _ = exo_pair_loss(chosen, rejected, beta=0.1, label_smoothing=eps)
        assert torch.isfinite(losses).all() and (losses >= 0).all(), (eps, losses)
    for eps in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \(0, 1\) for exo_pair"):
            exo_pair_loss(chosen, rejected, beta=0.1, label_smoothing=eps)


# ---------------------------------------------------------------- NCA (pairs)


def test_nca_pair_closed_form():
    """beta = 1, c = ln 3, r = -ln 3: -ln(3/4) - 1/2 ln(1/4) - 1/2 ln(3/4)."""
    losses, _ = nca_pair_loss(_t(LN3), _t(-LN3), beta=1.0)
    torch.testing.assert_close(losses, _t(-math.log(0.75) - 0.5 * math.log(0.25) - 0.5 * math.log(0.75)))


@pytest.mark.parametrize("beta", [0.05, 1.0, 3.0])
def test_nca_pair_at_the_reference_is_two_log_two(beta):
    """ln 2 + 1/2 ln 2 + 1/2 ln 2, for any beta."""
    losses, _ = nca_pair_loss(torch.zeros(3), torch.zeros(3), beta)
    torch.testing.assert_close(losses, torch.full((3,), 2 * math.log(2.0)))


# ---------------------------------------------------------------- DiscoPOP


def test_discopop_closed_form():
    """beta = tau = 1, z = ln 3: mix = 3/4; 1/4 * ln(1 + 1/3) + 3/4 * 1/3. At z = 0: ln(2)/2 + 1/2."""
    losses, _ = discopop_loss(_t(LN3, 0.0), _t(0.0, 0.0), beta=1.0, tau=1.0)
    torch.testing.assert_close(losses, _t(0.25 * math.log(4 / 3) + 0.25, 0.5 * math.log(2.0) + 0.5))


def test_discopop_limits_in_tau():
    """tau -> 0: logistic for z < 0, exponential for z > 0. tau -> inf: the average of the two."""
    z = _t(-2.0, -1.0, 1.0, 2.0)
    zeros = torch.zeros(4, dtype=torch.float64)
    sharp, _ = discopop_loss(z, zeros, beta=1.0, tau=1e-6)
    torch.testing.assert_close(sharp, torch.where(z < 0, F.softplus(-z), torch.exp(-z)))
    flat, _ = discopop_loss(z, zeros, beta=1.0, tau=1e9)
    torch.testing.assert_close(flat, 0.5 * F.softplus(-z) + 0.5 * torch.exp(-z))


def test_discopop_large_negative_margin_is_finite_where_the_direct_formula_gives_nan():
    chosen, rejected = torch.tensor([-100.0]), torch.tensor([0.0])
    mix = torch.sigmoid(chosen / 0.05)
    direct = (1 - mix) * F.softplus(-chosen) + mix * torch.exp(-chosen)  # 0 * inf in float32
    assert torch.isnan(direct).all()
    losses, _ = discopop_loss(chosen, rejected, beta=1.0, tau=0.05)
    torch.testing.assert_close(losses, torch.tensor([100.0]))  # softplus(100) = 100, the exp part is e^-1900
    with pytest.raises(ValueError, match="tau must be > 0, got 0.0"):
        discopop_loss(chosen, rejected, beta=1.0, tau=0.0)


# ---------------------------------------------------------------- LD-DPO sequence log-probs

NAN = math.nan


def _ld_example():
    """A pair: row 0 is left-padded with 3 response tokens, row 1 right-padded with 2; public length 2."""
    token_logps = torch.tensor([[NAN, NAN, -1.0, -2.0, -3.0], [-4.0, -5.0, NAN, NAN, NAN]])
    mask = torch.tensor([[False, False, True, True, True], [True, True, False, False, False]])
    return token_logps, mask, torch.tensor([2, 2])


def test_ld_logps_hand_example_with_left_padding():
    """alpha = 0.5: row 0 = -1 - 2 + 0.5 * (-3) = -4.5; row 1 has no tail: -4 - 5 = -9. Padding is nan."""
    token_logps, mask, public_length = _ld_example()
    torch.testing.assert_close(
        ld_logps(token_logps, mask, public_length, alpha=0.5), torch.tensor([-4.5, -9.0])
    )


def test_ld_logps_alpha_one_is_the_plain_sum_and_alpha_zero_truncates():
    torch.manual_seed(4)
    token_logps = -torch.rand(4, 7)
    mask = torch.rand(4, 7) > 0.3
    public_length = torch.tensor([0, 2, 3, 9])
    plain = ld_logps(token_logps, mask, public_length, alpha=1.0)
    torch.testing.assert_close(plain, (token_logps * mask).sum(dim=1))
    truncated = ld_logps(token_logps, mask, public_length, alpha=0.0)
    for b in range(4):  # slow reference: the first public_length response tokens of each row
        response = token_logps[b][mask[b]]
        torch.testing.assert_close(truncated[b], response[: int(public_length[b])].sum())


def test_ld_logps_does_not_depend_on_padding_side_or_amount():
    token_logps, mask, public_length = _ld_example()
    expected = ld_logps(token_logps, mask, public_length, alpha=0.3)
    # the same responses, right-padded for row 0 and left-padded for row 1, with two more pad columns
    moved_logps = torch.tensor(
        [[-1.0, -2.0, -3.0, NAN, NAN, NAN, NAN], [NAN, NAN, NAN, NAN, NAN, -4.0, -5.0]]
    )
    moved_mask = ~torch.isnan(moved_logps)
    torch.testing.assert_close(ld_logps(moved_logps, moved_mask, public_length, alpha=0.3), expected)


def test_ld_logps_gradient_reaches_only_counted_tokens_with_their_weight():
    token_logps, mask, public_length = _ld_example()
    token_logps = token_logps.nan_to_num(0.0).requires_grad_()
    ld_logps(token_logps, mask, public_length, alpha=0.25).sum().backward()
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.25], [1.0, 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(token_logps.grad, expected)


def test_ld_logps_bad_arguments_fail_with_the_fix():
    token_logps, mask, public_length = _ld_example()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        ld_logps(token_logps, mask, public_length, alpha=1.5)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor.*mask.bool\(\)"):
        ld_logps(token_logps, mask.long(), public_length, alpha=0.5)
    with pytest.raises(ValueError, match=r"public_length \(3,\) must be \(B,\)"):
        ld_logps(token_logps, mask, torch.tensor([1, 2, 3]), alpha=0.5)


# ---------------------------------------------------------------- WPO weights


def test_wpo_weights_closed_form_range_and_no_gradient():
    """exp(-0.5 - 1.0), exp(0 + 0) = 1, exp(-2 - 3)."""
    chosen = torch.tensor([-0.5, 0.0, -2.0], requires_grad=True)
    rejected = torch.tensor([-1.0, 0.0, -3.0], requires_grad=True)
    weights = wpo_weights(chosen, rejected)
    torch.testing.assert_close(weights, torch.tensor([math.exp(-1.5), 1.0, math.exp(-5.0)]))
    assert not weights.requires_grad and weights.grad_fn is None
    torch.manual_seed(5)
    random_weights = wpo_weights(-5 * torch.rand(100), -5 * torch.rand(100))
    assert ((random_weights > 0) & (random_weights <= 1)).all()
    with pytest.raises(ValueError, match="same shape"):
        wpo_weights(torch.zeros(2), torch.zeros(3))


def test_ld_logps_flat_matches_the_padded_form():
    from preftune.losses.pairwise_variants import ld_logps_flat

    # 2 pairs: chosen lengths 3, 1; rejected lengths 2, 4 (sequences 0, 1 chosen; 2, 3 rejected)
    lengths = [3, 1, 2, 4]
    sequence_index = torch.tensor([s for s, n in enumerate(lengths) for _ in range(n)])
    token_logps = -torch.arange(1.0, 11.0)  # -1 ... -10
    alpha = 0.25
    result = ld_logps_flat(token_logps, sequence_index, 4, alpha)
    # public lengths: pair 0 -> min(3, 2) = 2, pair 1 -> min(1, 4) = 1
    expected = [-1 - 2 + alpha * -3, -4.0, -5 - 6, -7 + alpha * (-8 - 9 - 10)]
    torch.testing.assert_close(result, torch.tensor(expected))
    torch.testing.assert_close(ld_logps_flat(token_logps, sequence_index, 4, 1.0),
                               torch.tensor([-6.0, -4.0, -11.0, -34.0]))  # fmt: skip
