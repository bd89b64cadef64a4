"""Pairwise losses of the DPO family: closed-form values, identities, gradients, stability and the registry.

Expected numbers are worked out with `math` in each test, never by calling the loss under test.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from preftune.losses.pairwise import (
    F_DIVERGENCES,
    PAIRWISE_LOSSES,
    cdpo_loss,
    chosen_nll,
    f_divergence_logratio,
    hinge_loss,
    ipo_loss,
    ipo_norm_loss,
    orpo_loss,
    robust_loss,
    sigmoid_loss,
    sigmoid_norm_loss,
    simpo_loss,
)

# keyword params that every registered loss accepts with these values (orpo takes none)
PARAMS = {"label_smoothing": 0.1, "gamma": 0.5}
METRIC_KEYS = {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}


def call(key: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float = 0.5, **overrides: float):
    entry = PAIRWISE_LOSSES[key]
    params = {name: overrides.get(name, PARAMS[name]) for name in entry.params}
    return entry.fn(chosen, rejected, beta, **params)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_closed_form_value_gradient_and_metrics():
    """z = beta * (c - r) = 0.5 * [1, 0, -2] = [0.5, 0, -1]; loss = log(1 + exp(-z))."""
    chosen = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 1.0])
    losses, metrics = sigmoid_loss(chosen, rejected, beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([softplus(-0.5), math.log(2.0), softplus(1.0)]))
    losses.sum().backward()
    # d/dc softplus(-beta (c - r)) = -beta * sigmoid(-z) = -beta / (1 + exp(z))
    expected_grad = [-0.5 / (1 + math.exp(z)) for z in (0.5, 0.0, -1.0)]
    torch.testing.assert_close(chosen.grad, torch.tensor(expected_grad))
    torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([0.5, 0.0, -0.5]))
    torch.testing.assert_close(metrics["rewards/rejected"], torch.tensor([0.0, 0.0, 0.5]))
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor([0.5, 0.0, -1.0]))
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.5, 0.0]  # a tie counts half
    assert not any(value.requires_grad for value in metrics.values())


def test_cdpo_closed_form():
    """z = 1 * (2 - 0) = 2, eps = 0.25: 0.75 * log(1 + e^-2) + 0.25 * log(1 + e^2)."""
    losses, _ = cdpo_loss(torch.tensor([2.0]), torch.tensor([0.0]), beta=1.0, label_smoothing=0.25)
    torch.testing.assert_close(losses, torch.tensor([0.75 * softplus(-2.0) + 0.25 * softplus(2.0)]))


def test_robust_closed_form_can_be_negative():
    """z = 1, eps = 0.2: (0.8 * log(1 + e^-1) - 0.2 * log(1 + e)) / 0.6 = (0.25061 - 0.26265) / 0.6."""
    losses, _ = robust_loss(torch.tensor([1.0]), torch.tensor([0.0]), beta=1.0, label_smoothing=0.2)
    expected = (0.8 * softplus(-1.0) - 0.2 * softplus(1.0)) / 0.6
    torch.testing.assert_close(losses, torch.tensor([expected]))
    assert expected == pytest.approx(-0.020070, abs=1e-5)  # unbounded below: not a likelihood


def test_ipo_closed_form():
    """beta = 0.25, target gap 1 / (2 beta) = 2; gaps h = [2, 0, -1] give [0, 4, 9]."""
    losses, metrics = ipo_loss(torch.tensor([3.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 2.0]), beta=0.25)
    torch.testing.assert_close(losses, torch.tensor([0.0, 4.0, 9.0]))
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor([0.5, 0.0, -0.25]))


def test_ipo_norm_is_ipo_on_the_per_token_means_it_is_given():
    """The formula is ipo's; the trainer divides by lengths (tests/unit/test_dpo_pair_losses.py)."""
    chosen, rejected = torch.tensor([0.3, -0.2]), torch.tensor([-0.3, 0.1])
    torch.testing.assert_close(ipo_norm_loss(chosen, rejected, 0.5)[0], ipo_loss(chosen, rejected, 0.5)[0])
    torch.testing.assert_close(ipo_norm_loss(chosen, rejected, 0.5)[0], torch.tensor([0.16, 1.69]))


def test_hinge_closed_form_and_gradient():
    """beta = 0.5, h = [4, 1, -2]: z = [2, 0.5, -1], relu(1 - z) = [0, 0.5, 2]; slope -beta where active."""
    chosen = torch.tensor([4.0, 1.0, -2.0], requires_grad=True)
    losses, _ = hinge_loss(chosen, torch.zeros(3), beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([0.0, 0.5, 2.0]))
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([0.0, -0.5, -0.5]))


def test_simpo_closed_form_with_margin_and_smoothing():
    """beta = 2, gamma = 0.5, mean log-probs c - r = [0.5, -0.5]: z = [1, -1].

    eps = 0: softplus(gamma - z) = [log(1 + e^-0.5), log(1 + e^1.5)];
    eps = 0.1: 0.9 * softplus(gamma - z) + 0.1 * softplus(gamma + z).
    """
    chosen, rejected = torch.tensor([-0.5, -1.0]), torch.tensor([-1.0, -0.5])
    losses, metrics = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    torch.testing.assert_close(losses, torch.tensor([softplus(-0.5), softplus(1.5)]))
    torch.testing.assert_close(metrics["rewards/chosen"], torch.tensor([-1.0, -2.0]))
    smoothed, _ = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5, label_smoothing=0.1)
    expected = [0.9 * softplus(-0.5) + 0.1 * softplus(1.5), 0.9 * softplus(1.5) + 0.1 * softplus(-0.5)]
    torch.testing.assert_close(smoothed, torch.tensor(expected))


def test_sigmoid_norm_closed_form():
    """Per-token-mean log-ratios 0.1 and -0.1, beta = 5: z = 1, loss = log(1 + e^-1)."""
    losses, metrics = sigmoid_norm_loss(torch.tensor([0.1]), torch.tensor([-0.1]), beta=5.0)
    torch.testing.assert_close(losses, torch.tensor([softplus(-1.0)]))
    torch.testing.assert_close(metrics["rewards/margins"], torch.tensor([1.0]))


def test_orpo_closed_form():
    """p_w = 0.5, p_l = 0.2: odds 1 and 1/4, ratio 4, loss = -0.1 log(4/5) = 0.1 log 1.25.
    p_w = 0.75, p_l = 0.5: odds 3 and 1, ratio 3, loss = -0.1 log(3/4) = 0.1 log(4/3).
    """
    chosen = torch.tensor([math.log(0.5), math.log(0.75)], dtype=torch.float64)
    rejected = torch.tensor([math.log(0.2), math.log(0.5)], dtype=torch.float64)
    losses, metrics = orpo_loss(chosen, rejected, beta=0.1)
    expected = torch.tensor([0.1 * math.log(1.25), 0.1 * math.log(4 / 3)], dtype=torch.float64)
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(metrics["orpo/log_odds_ratio"], torch.log(torch.tensor([4.0, 3.0]).double()))
    torch.testing.assert_close(metrics["rewards/chosen"], 0.1 * chosen)


def test_orpo_is_finite_near_certainty_and_for_very_unlikely_responses():
    """log p = -1e-8 (p ~ 1) and -50 in float32, where log1p(-exp(log p)) would give -inf.

    log odds(-1e-8) = -1e-8 - log(1 - e^-1e-8) ~ -log(1e-8) = 18.4207; log odds(-50) ~ -50.
    """
    chosen = torch.tensor([-1e-8, -50.0, -1e-8, -50.0], requires_grad=True)
    rejected = torch.tensor([-50.0, -1e-8, -1e-8, -50.0], requires_grad=True)
    losses, _ = orpo_loss(chosen, rejected, beta=0.1)
    losses.sum().backward()
    for tensor in (losses, chosen.grad, rejected.grad):
        assert tensor is not None and torch.isfinite(tensor).all()
    gap = -math.log(1e-8) + 50.0  # log odds(chosen) - log odds(rejected) for the first pair
    expected = [0.1 * softplus(-gap), 0.1 * softplus(gap), 0.1 * math.log(2.0), 0.1 * math.log(2.0)]
    torch.testing.assert_close(losses, torch.tensor(expected), rtol=1e-4, atol=1e-6)


def test_sigmoid_is_stable_for_large_margins():
    chosen = torch.tensor([500.0, -500.0], requires_grad=True)
    losses, _ = sigmoid_loss(chosen, torch.zeros(2), beta=1.0)
    torch.testing.assert_close(losses, torch.tensor([0.0, 500.0]))
    losses.sum().backward()
    assert chosen.grad is not None
    torch.testing.assert_close(chosen.grad, torch.tensor([0.0, -1.0]))


@pytest.mark.parametrize("beta", [0.1, 1.0, 7.0])
@pytest.mark.parametrize(
    ("key", "params"),
    [
        ("sigmoid", {"label_smoothing": 0.0}),
        ("sigmoid", {"label_smoothing": 0.3}),
        ("cdpo", {"label_smoothing": 0.1}),
        ("robust", {"label_smoothing": 0.3}),
        ("sigmoid_norm", {"label_smoothing": 0.0}),
        ("simpo", {"gamma": 0.0, "label_smoothing": 0.2}),
    ],
)
def test_log2_when_policy_equals_reference(key, params, beta):
    """z = 0: (1 - eps) log 2 + eps log 2 = log 2, and rDPO's ((1 - eps) - eps) log 2 / (1 - 2 eps) = log 2."""
    zeros = torch.zeros(3)
    losses, metrics = PAIRWISE_LOSSES[key].fn(zeros, zeros, beta, **params)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2.0)))
    assert metrics["rewards/accuracies"].tolist() == [0.5] * 3


@pytest.mark.parametrize("beta", [0.1, 1.0, 7.0])
def test_ipo_and_hinge_when_policy_equals_reference(beta):
    """h = 0: IPO gives (0 - 1 / (2 beta))^2 = 1 / (4 beta^2); the hinge gives relu(1) = 1."""
    zeros = torch.zeros(3)
    torch.testing.assert_close(ipo_loss(zeros, zeros, beta)[0], torch.full((3,), 1 / (4 * beta**2)))
    torch.testing.assert_close(hinge_loss(zeros, zeros, beta)[0], torch.ones(3))


@pytest.mark.parametrize("key", sorted(PAIRWISE_LOSSES))
def test_gradients_match_finite_differences(key):
    """float64 gradcheck; inputs are negative (valid mean log-probs for orpo) and off the hinge's kink."""
    chosen = torch.tensor([-0.3, -1.2, -2.5, -0.05], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-0.9, -0.4, -2.0, -3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, r: call(key, c, r, beta=0.7)[0], (chosen, rejected))


@pytest.mark.parametrize("divergence", F_DIVERGENCES)
def test_f_divergence_gradients_match_finite_differences(divergence):
    logratio = torch.tensor([-2.0, -0.1, 0.0, 0.8, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: f_divergence_logratio(x, divergence, alpha=0.3), (logratio,))


@pytest.mark.parametrize("key", sorted(set(PAIRWISE_LOSSES) - {"orpo"}))
def test_margin_losses_depend_only_on_chosen_minus_rejected(key):
    chosen, rejected = -torch.rand(6), -torch.rand(6)
    shift = torch.randn(6) * 3
    torch.testing.assert_close(call(key, chosen + shift, rejected + shift)[0], call(key, chosen, rejected)[0])


def test_orpo_is_not_shift_invariant():
    """The odds p / (1 - p) are not a function of log p_w - log p_l alone."""
    chosen, rejected = torch.tensor([-0.2]), torch.tensor([-0.6])
    near_one, _ = orpo_loss(chosen, rejected, beta=1.0)
    shifted, _ = orpo_loss(chosen - 2.0, rejected - 2.0, beta=1.0)
    assert not torch.allclose(near_one, shifted, rtol=1e-2)


@pytest.mark.parametrize("eps", [0.05, 0.25, 0.45])
def test_cdpo_is_the_expected_dpo_loss_under_label_flips(eps):
    chosen, rejected = torch.randn(5), torch.randn(5)
    smoothed, _ = cdpo_loss(chosen, rejected, beta=0.3, label_smoothing=eps)
    forward, _ = sigmoid_loss(chosen, rejected, beta=0.3)
    backward, _ = sigmoid_loss(rejected, chosen, beta=0.3)
    torch.testing.assert_close(smoothed, (1 - eps) * forward + eps * backward)


def test_cdpo_minimum_is_at_the_log_odds_of_the_label():
    """d/dz [(1 - eps) softplus(-z) + eps softplus(z)] = 0 at z = log((1 - eps) / eps)."""
    eps, beta = 0.2, 0.5
    chosen = torch.tensor([math.log((1 - eps) / eps) / beta], requires_grad=True)
    cdpo_loss(chosen, torch.zeros(1), beta=beta, label_smoothing=eps)[0].sum().backward()
    assert chosen.grad is not None
    assert chosen.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_simpo_smoothing_is_the_expected_loss_under_label_flips():
    """A flipped pair asks the other response to win by gamma."""
    chosen, rejected, eps = -torch.rand(5), -torch.rand(5), 0.3
    smoothed, _ = simpo_loss(chosen, rejected, beta=2.0, gamma=0.8, label_smoothing=eps)
    forward, _ = simpo_loss(chosen, rejected, beta=2.0, gamma=0.8)
    backward, _ = simpo_loss(rejected, chosen, beta=2.0, gamma=0.8)
    torch.testing.assert_close(smoothed, (1 - eps) * forward + eps * backward)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.45])
def test_robust_is_unbiased_under_label_flips(eps):
    """(1 - eps) * robust(c, r) + eps * robust(r, c) = softplus(-z): the clean DPO loss."""
    chosen, rejected = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    forward, _ = robust_loss(chosen, rejected, beta=0.8, label_smoothing=eps)
    backward, _ = robust_loss(rejected, chosen, beta=0.8, label_smoothing=eps)
    clean, _ = sigmoid_loss(chosen, rejected, beta=0.8)
    torch.testing.assert_close((1 - eps) * forward + eps * backward, clean)


def test_simpo_without_margin_or_smoothing_is_dpo_on_the_same_inputs():
    chosen, rejected = -torch.rand(5), -torch.rand(5)
    simpo, simpo_metrics = simpo_loss(chosen, rejected, beta=2.5, gamma=0.0)
    dpo, dpo_metrics = sigmoid_loss(chosen, rejected, beta=2.5)
    torch.testing.assert_close(simpo, dpo)
    torch.testing.assert_close(simpo_metrics["rewards/margins"], dpo_metrics["rewards/margins"])


def test_simpo_gamma_is_in_reward_units():
    """beta * (c - r) - gamma = beta * ((c - gamma / beta) - r): the margin shifts the chosen slot by gamma / beta."""
    chosen, rejected, beta, gamma = -torch.rand(5), -torch.rand(5), 2.0, 0.6
    with_margin, _ = simpo_loss(chosen, rejected, beta=beta, gamma=gamma)
    shifted, _ = sigmoid_loss(chosen - gamma / beta, rejected, beta=beta)
    torch.testing.assert_close(with_margin, shifted)


def test_sigmoid_norm_is_sigmoid_on_the_inputs_it_is_given():
    chosen, rejected = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(
        sigmoid_norm_loss(chosen, rejected, beta=3.0, label_smoothing=0.1)[0],
        sigmoid_loss(chosen, rejected, beta=3.0, label_smoothing=0.1)[0],
    )


LOGRATIOS = [-2.0, -0.5, 0.0, 0.7, 3.0]


# f' of Wang et al. 2023, Table 1, as the paper writes it (constants included)
TABLE_1_F_PRIME = {
    "reverse_kl": lambda u, alpha: math.log(u) + 1,
    "forward_kl": lambda u, alpha: -1 / u,
    "js": lambda u, alpha: math.log(2 * u / (1 + u)),
    "alpha": lambda u, alpha: (1 - u**-alpha) / alpha,
}


@pytest.mark.parametrize(
    ("divergence", "alpha"),
    [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.3), ("alpha", 0.5), ("alpha", 0.9)],
)
def test_f_divergence_is_f_prime_of_the_ratio_shifted_to_zero_at_one(divergence, alpha):
    """Table 1's f'(u) - f'(1) at u = exp(logratio): forward KL is 1 - 1/u, reverse KL log u."""
    f_prime = TABLE_1_F_PRIME[divergence]
    logratio = torch.tensor(LOGRATIOS, dtype=torch.float64)
    expected = torch.tensor([f_prime(math.exp(x), alpha) - f_prime(1.0, alpha) for x in LOGRATIOS])
    torch.testing.assert_close(
        f_divergence_logratio(logratio, divergence, alpha=alpha), expected.to(torch.float64)
    )


@pytest.mark.parametrize("divergence", F_DIVERGENCES)
def test_f_divergence_is_zero_where_the_policy_equals_the_reference(divergence):
    values = f_divergence_logratio(torch.zeros(3, dtype=torch.float64), divergence, alpha=0.3)
    torch.testing.assert_close(values, torch.zeros(3, dtype=torch.float64))


def test_forward_kl_on_a_length_normalised_loss_has_no_length_term():
    """Issue 18's reproduction: log-ratios -0.5 and -2.0 over lengths 3 and 9, sigmoid_norm, beta 0.1.

    1 - 1/u: c = (1 - e^0.5) / 3 = -0.216241, r = (1 - e^2) / 9 = -0.709895,
    loss = softplus(-0.1 * (c - r)) = softplus(-0.0493654) = 0.668769. With f'(u) = -1/u the margin
    gains 0.1 * (1/9 - 1/3) = -0.0222 and the loss is 0.679668.
    """
    chosen = f_divergence_logratio(torch.tensor([-0.5], dtype=torch.float64), "forward_kl") / 3
    rejected = f_divergence_logratio(torch.tensor([-2.0], dtype=torch.float64), "forward_kl") / 9
    c, r = (1 - math.exp(0.5)) / 3, (1 - math.exp(2.0)) / 9
    losses, _ = sigmoid_norm_loss(chosen, rejected, beta=0.1)
    assert losses.item() == pytest.approx(softplus(-0.1 * (c - r)), abs=1e-12)
    assert losses.item() == pytest.approx(0.668769, abs=1e-6)


def test_reverse_kl_is_the_identity_and_alpha_interpolates_to_both_kls():
    logratio = torch.tensor(LOGRATIOS, dtype=torch.float64)
    assert f_divergence_logratio(logratio, "reverse_kl") is logratio
    # (1 - u^-alpha) / alpha -> log u as alpha -> 0, and -> 1 - 1/u (forward KL) as alpha -> 1;
    # the error is first order in alpha (resp. 1 - alpha), ~ alpha * logratio^2 / 2
    torch.testing.assert_close(f_divergence_logratio(logratio, "alpha", alpha=1e-9), logratio)
    near_one = f_divergence_logratio(logratio, "alpha", alpha=1 - 1e-9)
    torch.testing.assert_close(near_one, f_divergence_logratio(logratio, "forward_kl"))


def test_js_is_finite_for_extreme_logratios():
    """log 2 + logsigmoid(x): -> log 2 for x = 200 and log 2 - 200 for x = -200 (exp(200) overflows)."""
    values = f_divergence_logratio(torch.tensor([200.0, -200.0]), "js")
    torch.testing.assert_close(values, torch.tensor([math.log(2.0), math.log(2.0) - 200.0]))


def test_f_divergence_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown divergence 'chi2'"):
        f_divergence_logratio(torch.zeros(2), "chi2")  # type: ignore[arg-type]
    for alpha in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            f_divergence_logratio(torch.zeros(2), "alpha", alpha=alpha)


def test_chosen_nll_is_normalised_by_length():
    """-[-6, -2] / [3, 4] = [2, 0.5]."""
    chosen_logps = torch.tensor([-6.0, -2.0], requires_grad=True)
    losses, metrics = chosen_nll(chosen_logps, torch.tensor([3, 4]))
    torch.testing.assert_close(losses, torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(metrics["nll/chosen"], torch.tensor([2.0, 0.5]))
    assert not metrics["nll/chosen"].requires_grad
    losses.sum().backward()
    torch.testing.assert_close(chosen_logps.grad, torch.tensor([-1 / 3, -1 / 4]))


def test_chosen_nll_rejects_bad_lengths():
    with pytest.raises(ValueError, match="chosen_lengths must be >= 1"):
        chosen_nll(torch.tensor([-1.0, -2.0]), torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="same shape"):
        chosen_nll(torch.tensor([-1.0, -2.0]), torch.tensor([3]))


def test_registry_keys_and_flags():
    assert set(PAIRWISE_LOSSES) == {
        "sigmoid",
        "cdpo",
        "robust",
        "ipo",
        "ipo_norm",
        "hinge",
        "simpo",
        "sigmoid_norm",
        "orpo",
    }
    assert {k for k, v in PAIRWISE_LOSSES.items() if v.reference_free} == {"simpo", "orpo"}
    assert {k for k, v in PAIRWISE_LOSSES.items() if v.length_normalized} == {
        "simpo",
        "orpo",
        "sigmoid_norm",
        "ipo_norm",
    }


@pytest.mark.parametrize("key", sorted(PAIRWISE_LOSSES))
def test_registry_params_are_the_keyword_only_parameters(key):
    entry = PAIRWISE_LOSSES[key]
    assert callable(entry.fn)
    parameters = inspect.signature(entry.fn).parameters.values()
    keyword_only = tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
    positional = tuple(p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    assert entry.params == keyword_only
    assert positional == ("chosen_logratio", "rejected_logratio", "beta")


@pytest.mark.parametrize("key", sorted(PAIRWISE_LOSSES))
def test_every_loss_returns_per_pair_losses_and_detached_metrics(key):
    chosen = -torch.rand(4, requires_grad=True)
    losses, metrics = call(key, chosen, -torch.rand(4))
    assert losses.shape == (4,)
    assert METRIC_KEYS <= set(metrics)
    assert all(value.shape == (4,) and not value.requires_grad for value in metrics.values())
    losses.sum().backward()  # per pair, not reduced: the trainer chooses the reduction


@pytest.mark.parametrize("key", sorted(PAIRWISE_LOSSES))
@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf])
def test_bad_beta_fails_with_the_value(key, beta):
    with pytest.raises(ValueError, match=f"beta must be a finite number > 0, got {beta}"):
        call(key, -torch.rand(3), -torch.rand(3), beta=beta)


@pytest.mark.parametrize("key", sorted(PAIRWISE_LOSSES))
def test_mismatched_shapes_fail(key):
    with pytest.raises(ValueError, match="must have the same shape"):
        call(key, -torch.rand(3), -torch.rand(4))


@pytest.mark.parametrize(
    ("key", "eps", "interval"),
    [
        ("sigmoid", -0.1, r"\[0, 0.5\)"),
        ("sigmoid", 0.5, r"\[0, 0.5\)"),
        ("sigmoid_norm", 0.7, r"\[0, 0.5\)"),
        ("robust", 0.5, r"\[0, 0.5\)"),
        ("simpo", 0.5, r"\[0, 0.5\)"),
        ("cdpo", 0.0, r"\(0, 0.5\); use 'sigmoid'"),
        ("cdpo", 0.5, r"\(0, 0.5\)"),
    ],
)
def test_bad_label_smoothing_fails_with_the_range(key, eps, interval):
    with pytest.raises(
        ValueError, match=rf"label_smoothing for the '{key}' loss must be in {interval}.*got {eps}"
    ):
        call(key, -torch.rand(3), -torch.rand(3), label_smoothing=eps)


@pytest.mark.parametrize("gamma", [-0.5, math.inf])
def test_simpo_rejects_a_bad_margin(gamma):
    with pytest.raises(ValueError, match=f"gamma must be a finite number >= 0, got {gamma}"):
        simpo_loss(-torch.rand(3), -torch.rand(3), beta=2.0, gamma=gamma)


@pytest.mark.parametrize(("trl_name", "short"), [("js_divergence", "js"), ("alpha_divergence", "alpha")])
def test_f_divergence_takes_trls_names(trl_name, short):
    logratio = torch.tensor(LOGRATIOS, dtype=torch.float64)
    torch.testing.assert_close(
        f_divergence_logratio(logratio, trl_name, alpha=0.3),
        f_divergence_logratio(logratio, short, alpha=0.3),
    )
