"""Best-of-n estimators from N scored samples per prompt: expected reward and KL for every n <= N.

Best-of-n draws n responses from the policy and keeps the one the judge scores highest.
Given N >= n samples of a prompt we do not rerun it for each n: we take the exact
distribution of the best of n draws **with replacement** from the N samples, i.e. best-of-n
of the empirical distribution. It uses all N samples for every n and gives a proper
distribution over the samples, so the reward and the KL below describe the same policy. (It
is biased towards the mean as n nears N, where draws repeat; WebGPT's without-replacement
estimator, Nakano et al. 2021, arXiv 2112.09332, is unbiased for the reward but has no KL.)

Selection probabilities. Let the N scores of a prompt be r_1..r_N, le_j = #{k: r_k <= r_j}
and lt_j = #{k: r_k < r_j}. The best of n uniform draws scores <= r_j with probability
(le_j / N)^n, so the tie group of r_j (le_j - lt_j samples) is selected with probability
(le_j / N)^n - (lt_j / N)^n, shared equally by its members (exact for any tie-breaking rule
that treats tied samples alike). Without ties, the sample of rank i (1 = lowest) gets
p_i = (i/N)^n - ((i-1)/N)^n. The expected reward of best-of-n is sum_j p_j r_j; the gold reward
of the selected sample is sum_j p_j g_j with the same p (the judge may rank differently).

KL. The analytical value log n - (n-1)/n, used since Stiennon et al. 2020 (arXiv 2009.01325),
is exact for continuous rewards and in general an upper bound on KL(best-of-n || base)
(Beirami et al. 2024, arXiv 2401.01879, theorem 3.1). We measure the plug-in KL of best-of-n
over the empirical distribution to that distribution, summed over distinct responses y:

    KL_hat(n) = sum_y p(y) log(p(y) / q(y)),  q(y) = (copies of y) / N,  p(y) = sum of p_j over its copies.

Properties (tested): KL_hat(1) = 0; KL_hat(n) <= log n - (n-1)/n (best-of-n of any discrete
distribution obeys the bound, and merging copies cannot raise a KL); KL_hat(n) <= log n, as
p_j <= n / N. With distinct, untied samples it tends to the bound as N grows with n fixed
(the sum over ranks tends to the integral of n u^(n-1) log(n u^(n-1)) over [0, 1], which is
log n - (n-1)/n: N = 16, n = 2 gives 0.1915 against 0.1931), and it falls below the bound as n
nears N (n = N = 16: 1.794 against 1.835; the gap tends to about 0.04 for large N). Repeated
responses and tied scores lower it further.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def kl_bound(n: int) -> float:
    """log n - (n - 1) / n: the analytical KL(best-of-n || base), an upper bound in general.

    n = 1 gives 0; n = 2 gives log 2 - 1/2 = 0.19315; it grows like log n - 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    return math.log(n) - (n - 1) / n


def best_of_n_probabilities(scores: Tensor, n: int) -> Tensor:
    """(P, N) probability that each of the N samples of each prompt is the best of n draws.

    scores: (P, N) judge scores, N samples per prompt. Each row sums to 1; ties share their
    group's probability equally (see the module docstring).
    """
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must have shape (P, N) with N >= 1, got {tuple(scores.shape)}.")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf): a NaN has no rank.")
    N = scores.shape[1]
    values = scores.double()
    ordered = values.sort(dim=1).values  # (P, N) ascending
    at_most = torch.searchsorted(ordered, values, right=True).double()  # le_j = #{k: r_k <= r_j}, (P, N)
    below = torch.searchsorted(ordered, values, right=False).double()  # lt_j = #{k: r_k < r_j}, (P, N)
    group = (at_most / N) ** n - (below / N) ** n  # probability of r_j's tie group, (P, N)
    return group / (at_most - below)


def expected_best_of_n(values: Tensor, probabilities: Tensor) -> Tensor:
    """(P,) expected value of the selected sample: sum_j p_j v_j per prompt.

    values: (P, N) any per-sample quantity (the judge score itself, or the gold reward of the
    sample, which the judge may rank differently); probabilities: (P, N) from
    `best_of_n_probabilities`.
    """
    return (probabilities * values.double()).sum(dim=1)


def best_of_n_kl(probabilities: Tensor, response_ids: Tensor) -> Tensor:
    """(P,) plug-in KL(best-of-n || empirical) over distinct responses (module docstring).

    probabilities: (P, N) from `best_of_n_probabilities`; response_ids: (P, N) integer ids in
    [0, N) naming each sample's distinct response within its prompt (equal ids = the same
    text), e.g. the index of the response's first copy.
    """
    if probabilities.shape != response_ids.shape:
        raise ValueError(
            f"probabilities {tuple(probabilities.shape)} and response_ids {tuple(response_ids.shape)} "
            "must have the same shape (P, N)."
        )
    N = probabilities.shape[1]
    p = torch.zeros_like(probabilities, dtype=torch.float64).scatter_add_(
        1, response_ids, probabilities.double()
    )
    q = torch.zeros_like(p).scatter_add_(
        1, response_ids, torch.full_like(p, 1.0 / N)
    )  # (P, N) per distinct id
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim=1)  # p = 0 wherever q = 0: those terms are 0
