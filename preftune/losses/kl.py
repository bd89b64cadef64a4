"""KL divergence between the policy's and the reference's next-token distributions.

`token_kl` is the exact KL(pi(.|ctx) || pi_ref(.|ctx)) over the vocabulary at each given
context, from both models' log-probabilities there. Summed over a response's positions
(teacher-forced on the data's response), it is the sequence-level KL of the two models'
distributions along that response: the "KL to the reference" DPO-style trainers log at
evaluation. (Sampled estimators of KL(pi || pi_ref) for RL, k1/k2/k3, belong with PPO.)
"""

from __future__ import annotations

from torch import Tensor


def token_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """(M,) exact KL(p || q) = sum_v p(v) (log p(v) - log q(v)) from (M, V) log-probabilities.

    Both inputs must be normalised log-softmax outputs over the same vocabulary.
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have the same shape."
        )
    return (logprobs.exp() * (logprobs - ref_logprobs)).sum(dim=-1)
