"""KTO: preference tuning from unpaired desirable / undesirable examples.

Paper: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv 2402.01306). With the implied reward r = log pi(y|x) - log pi_ref(y|x) (the
`logratio`, summed over response tokens) and the reference point z_ref = KL(pi || pi_ref),
the KTO loss (eq. 8) is

    L_KTO = E_{x,y ~ D} [lambda_y - v(x, y)],
    v(x, y) = lambda_D * sigmoid(beta * (r - z_ref))   if y is desirable,
              lambda_U * sigmoid(beta * (z_ref - r))   if y is undesirable,

so each example contributes lambda_y - v = lambda_y * (1 - sigmoid(beta * s)), where
s = r - z_ref for a desirable example and s = z_ref - r for an undesirable one.

Implemented:
- `kto_reference_point`: the batch estimate of z_ref from section 4.1. Each prompt x_i is
  scored with a response y_j of a *different* example of the batch (mismatched pairs), and
  z_ref = max(0, mean_j [log pi(y_j|x_i) - log pi_ref(y_j|x_i)]), with no gradient.
- `kto_loss`: per-example lambda_y - v(x, y), shape (N,), and detached metrics.
- `kto_recommended_weights`: lambda_D, lambda_U for an imbalanced data set, following the
  paper's guidance (section 4.2) that lambda_D * n_D / (lambda_U * n_U) lie in [1, 4/3].

Departures:
- Exact value, not just the same gradient: we return lambda_y - v, written as
  lambda_y * sigmoid(-beta * s) (equal to lambda_y * (1 - sigmoid(beta * s)) but accurate
  when beta * s is large), so the mean over all N rows is the paper's L_KTO itself. Forms that
  drop the constant lambda_y (returning -v) have the same gradient but a shifted value.
- The reference point takes the *sum* of the mismatched log-ratios and their *global* count
  instead of the per-row values, so it equals the mean over the whole set however the set is
  split across processes. TRL 1.16 averages each process's mean instead, which differs
  whenever processes hold different numbers of mismatched pairs.
- Kept from the paper, easy to miss: z_ref is clamped at 0 and detached (section 4.1);
  `kto_loss` also detaches whatever reference point it is given, so no caller can
  backpropagate through it. The expectation in L_KTO runs over all rows of both classes, so
  the caller averages the (N,) losses over the global number of rows, not per class.
- Building the mismatched pairs (which y_j goes with which x_i) and turning paired data into
  unpaired rows are data concerns and live outside this module.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kto_reference_point(logratio_sum: Tensor, num_items: int | Tensor) -> Tensor:
    """KTO's reference point z_ref, the batch estimate of KL(pi || pi_ref) (arXiv 2402.01306, sec. 4.1).

    z_ref = max(0, logratio_sum / num_items), detached.

    The inputs are sums, not per-row values, so that the result does not depend on how the
    mismatched pairs are split across processes: each process computes
    `(kl_logps - ref_kl_logps).sum()` over its mismatched completions (M,), the trainer
    all-reduces that sum (SUM) and the count of completions, and passes both here. In a
    single process, `logratio_sum=(kl_logps - ref_kl_logps).sum()` and `num_items=M`.
    Because no gradient flows through z_ref, the policy's forward pass on the mismatched
    completions can run under `torch.no_grad()`.

    Args:
        logratio_sum: () sum over mismatched completions y_j of
            log pi(y_j | x_i) - log pi_ref(y_j | x_i), each summed over response tokens.
        num_items: global number of mismatched completions in that sum, int or () tensor.
            A tensor is not checked (that would sync with the device); a zero count gives NaN.

    Returns:
        () the reference point, >= 0, with no gradient.
    """
    if logratio_sum.ndim != 0:
        raise ValueError(
            f"logratio_sum must be a scalar, got shape {tuple(logratio_sum.shape)}. Pass "
            "(kl_logps - ref_kl_logps).sum(), all-reduced over processes, and the count as num_items."
        )
    if isinstance(num_items, int) and num_items <= 0:
        raise ValueError(
            f"num_items must be > 0, got {num_items}. It is the number of mismatched completions "
            "summed in logratio_sum; KTO needs batches of at least 2 examples to form them."
        )
    mean = logratio_sum.detach() / num_items
    return mean.clamp(min=0.0)


def kto_loss(
    logratio: Tensor,
    desirable: Tensor,
    reference_point: Tensor | float,
    beta: float,
    *,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-example KTO loss lambda_y - v(x, y) (arXiv 2402.01306, eq. 8).

    desirable row:   lambda_D * (1 - sigmoid(beta * (logratio - z_ref)))
    undesirable row: lambda_U * (1 - sigmoid(beta * (z_ref - logratio)))

    Args:
        logratio: (N,) log pi(y|x) - log pi_ref(y|x), summed over response tokens.
        desirable: (N,) bool, True where y is a desirable response for x.
        reference_point: z_ref, () tensor or float, usually from `kto_reference_point`;
            treated as a constant (detached).
        beta: > 0, scale of the implied reward; larger keeps the policy closer to pi_ref.
        desirable_weight, undesirable_weight: lambda_D, lambda_U >= 0
            (see `kto_recommended_weights`).

    Returns:
        (N,) losses in [0, lambda_y] and detached metrics: "reward/implicit" (N,) beta * logratio
        of every row, "mask/desirable" (N,) bool to split it by class, "kl/reference_point" ().
    """
    if logratio.shape != desirable.shape:
        raise ValueError(
            f"logratio {tuple(logratio.shape)} and desirable {tuple(desirable.shape)} must have the "
            "same shape: one label per example."
        )
    if desirable.dtype != torch.bool:
        raise TypeError(f"desirable must be a bool tensor, got {desirable.dtype}. Use labels.bool().")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}. Typical values are 0.01 to 1; 0.1 is common.")
    if not (desirable_weight >= 0 and undesirable_weight >= 0):
        raise ValueError(
            f"desirable_weight and undesirable_weight must be >= 0, got {desirable_weight} and "
            f"{undesirable_weight}. Use kto_recommended_weights(n_desirable, n_undesirable)."
        )
    z_ref = torch.as_tensor(reference_point, dtype=logratio.dtype, device=logratio.device).detach()
    if z_ref.ndim != 0:
        raise ValueError(f"reference_point must be a () tensor or a float, got shape {tuple(z_ref.shape)}.")
    # lambda_y * (1 - sigmoid(t)) == lambda_y * sigmoid(-t); the latter keeps precision for large t.
    losses = torch.where(
        desirable,
        desirable_weight * torch.sigmoid(-beta * (logratio - z_ref)),
        undesirable_weight * torch.sigmoid(-beta * (z_ref - logratio)),
    )
    return losses, {
        "reward/implicit": beta * logratio.detach(),
        "mask/desirable": desirable.detach(),
        "kl/reference_point": z_ref,
    }


def kto_recommended_weights(num_desirable: int, num_undesirable: int) -> tuple[float, float]:
    """(lambda_D, lambda_U) for a data set with n_D desirable and n_U undesirable examples.

    The paper (arXiv 2402.01306, section 4.2) advises choosing the weights so that
    lambda_D * n_D / (lambda_U * n_U) lies in [1, 4/3]. We fix lambda_U = 1 and move
    lambda_D as little as possible from its default of 1:

        lambda_D = clip(1, n_U / n_D, (4/3) * n_U / n_D)

    so (1, 1) is kept whenever n_D / n_U is already in [1, 4/3]; with fewer desirable than
    undesirable examples lambda_D = n_U / n_D (the ratio is 1); with more than 4/3 as many,
    lambda_D = (4/3) * n_U / n_D (the ratio is 4/3).
    """
    if num_desirable < 1 or num_undesirable < 1:
        raise ValueError(
            f"num_desirable and num_undesirable must both be >= 1, got {num_desirable} and "
            f"{num_undesirable}. KTO needs examples of both classes; count them in the training set."
        )
    lower = num_undesirable / num_desirable
    desirable_weight = min(max(1.0, lower), 4.0 / 3.0 * lower)
    return desirable_weight, 1.0
