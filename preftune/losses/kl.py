"""KL divergence between the policy and the reference: exact per context, and sampled estimates.

`token_kl` is the exact KL(pi(.|ctx) || pi_ref(.|ctx)) over the vocabulary at each given
context, from both models' log-probabilities there. Summed over a response's positions
(teacher-forced on the data's response), it is the sequence-level KL of the two models'
distributions along that response: the "KL to the reference" DPO-style trainers log at
evaluation.

`kl_estimate` and `KL_ESTIMATORS` are the sampled estimators of KL(pi || pi_ref) that RL
trainers (PPO, RLOO, GRPO) use, from logratio = log pi(x) - log pi_ref(x) at tokens x SAMPLED
FROM pi. Schulman, "Approximating KL divergence" (2020, joschu.net/blog/kl-approx.html), with
r = pi_ref(x) / pi(x) = exp(-logratio):
- k1 = -log r = logratio: unbiased, high variance, negative on some samples;
- k2 = 0.5 (log r)^2: biased (its expectation is an f-divergence that matches KL to second
  order as pi_ref -> pi), low variance, >= 0;
- k3 = (r - 1) - log r = expm1(-logratio) + logratio: unbiased (E_pi[r] = 1), >= 0 (log r <= r - 1).
GRPO (arXiv 2402.03300, eq. 4) uses k3 as its per-token KL term.
Departure: none; expm1 keeps k3 accurate for small log-ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def token_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(M,) exact KL(p || q) = sum_v p(v) (log p(v) - log q(v)) from (M, V) log-probabilities.

    Both inputs must be normalised log-softmax outputs over the same vocabulary.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have the same shape."
        )
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(dim=-1)


def kl_k1(logratio: Tensor) -> Tensor:
    """k1 = logratio, any shape -> same shape. Unbiased for KL(pi || pi_ref); can be negative."""
    return logratio


def kl_k2(logratio: Tensor) -> Tensor:
    """k2 = 0.5 * logratio^2, any shape -> same shape. Biased, low variance, >= 0."""
    return 0.5 * logratio.square()


def kl_k3(logratio: Tensor) -> Tensor:
    """k3 = exp(-logratio) - 1 + logratio, any shape -> same shape. Unbiased and >= 0."""
    return torch.expm1(-logratio) + logratio


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logratio: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from logratio = logps - ref_logps, shape kept.

    The tokens must be sampled from pi (the policy that produced `logps`); sum the estimates
    over a response's tokens for the sequence KL. `estimator` names an entry of KL_ESTIMATORS.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}.")
    return KL_ESTIMATORS[estimator](logratio)
