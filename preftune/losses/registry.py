"""Every pairwise preference objective by name, as `--loss_type` takes them, and how a trainer applies them.

One `PairwiseLoss` record per loss is the single source of what the code knows about it: the function,
whether it needs a reference, whether it takes per-token-mean log-probs, the keyword parameters the
trainer fills, and its traits (a margin loss where an f-divergence applies, soft labels, a label-flip
rate, computed per sorted position). The core family (preftune/losses/pairwise.py) carries its traits in
its records; the variants' (pairwise_variants.py) are given here. The tuples below are derived from the
records; `preference_loss` fills one loss's inputs and `combined_losses` adds up weighted losses, for
both DPO trainers (offline and online).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from preftune.losses.pairwise import PAIRWISE_LOSSES, PairwiseLoss, chosen_nll, f_divergence_logratio
from preftune.losses.pairwise_variants import VARIANT_LOSS_FUNCTIONS

_VARIANT_TRAITS: dict[str, dict[str, bool]] = {
    "exo_pair": {"margin": True},
    "discopop": {"margin": True},
    "aot": {"per_sorted_position": True},
    "aot_unpaired": {"per_sorted_position": True},
}

LOSSES: dict[str, PairwiseLoss] = {
    **PAIRWISE_LOSSES,
    **{
        name: replace(
            PairwiseLoss(fn, reference_free=False, length_normalized=False, params=params),
            **_VARIANT_TRAITS.get(name, {}),
        )
        for name, (fn, params) in VARIANT_LOSS_FUNCTIONS.items()
    },
}


def losses_where(trait: str) -> tuple[str, ...]:
    """The names of the losses whose record has `trait` (a boolean field of PairwiseLoss) set."""
    return tuple(name for name, spec in LOSSES.items() if getattr(spec, trait))


MARGIN_LOSSES = losses_where("margin")
"""Losses of the margin beta * (logratio_chosen - logratio_rejected) alone, where an f-divergence applies."""
SOFT_LABEL_LOSSES = losses_where("soft_labels")
"""Losses whose label smoothing is the expected loss under label flips: a soft label p enters as 1 - p."""
LABEL_NOISE_LOSSES = losses_where("label_noise")
"""Losses whose label smoothing is a label-flip rate, which --label_noise may set."""
SORTED_LOSSES = losses_where("per_sorted_position")
"""Losses computed per sorted position across the batch, not per pair: no per-pair weights apply."""

SFT_TERM = "sft"
"""The --loss_type entry for the NLL of the chosen response (RPO / ORPO's language-modelling term);
trainers/dpo_config.py names it too, without importing torch."""


def preference_loss(
    name: str,
    logps: Tensor,
    ref_logps: Tensor | None,
    lengths: Tensor,
    beta: float,
    params: Mapping[str, Any],
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(B,) losses and metrics of the registered loss `name` from (2B,) policy log-probs (chosen first, then
    rejected), their reference log-probs (None: reference-free), and response lengths.

    Fills the loss's slots from its record: the policy's log-probs for reference-free losses, else the
    log-ratios (through the f-divergence's f'(u) - f'(1), the paper's `f_alpha`; reverse_kl is DPO's
    log-ratio), divided by the lengths for length-normalised losses; then its keyword parameters from
    `params` (label_smoothing, gamma, tau) and, with a reference, the reference log-probs and BCO's shift
    delta (the batch's mean implicit reward beta * logratio)."""
    spec, B = LOSSES[name], logps.shape[0] // 2
    if ref_logps is None or spec.reference_free:
        values = logps
    else:
        values = f_divergence_logratio(logps - ref_logps, f_divergence, alpha=f_alpha)  # type: ignore[arg-type]
    if spec.length_normalized:
        values = values / lengths
    given: dict[str, Any] = dict(params)
    if ref_logps is not None:
        given |= {"ref_chosen_logps": ref_logps[:B], "ref_rejected_logps": ref_logps[B:]}
        if "delta" in spec.params:
            given["delta"] = (beta * (logps - ref_logps)).mean().item()
    missing = [p for p in spec.params if p not in given]
    if missing:
        raise ValueError(
            f"Loss {name!r} needs {missing}, which this trainer does not give; choose another loss."
        )
    return spec.fn(values[:B], values[B:], beta, **{p: given[p] for p in spec.params})


def combined_losses(
    names: Sequence[str],
    weights: Sequence[float],
    logps: Tensor,
    ref_logps: Tensor | None,
    lengths: Tensor,
    beta: float,
    params: Mapping[str, Any],
    f_divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(B,) sum of `weights[i]` times loss `names[i]` (each by `preference_loss`, or the chosen response's
    NLL for SFT_TERM), and (B,) metrics: each loss's own under `loss/<name>`, the first loss's metrics
    where two share a name, and the policy's (and reference's) log-probs."""
    B = logps.shape[0] // 2
    total = torch.zeros(B, device=logps.device)
    metrics: dict[str, Tensor] = {}
    for name, weight in zip(names, weights, strict=True):
        if name == SFT_TERM:
            losses, part = chosen_nll(logps[:B], lengths[:B])
        else:
            losses, part = preference_loss(
                name, logps, ref_logps, lengths, beta, params, f_divergence, f_alpha
            )
        total = total + weight * losses
        metrics = {**part, **metrics, f"loss/{name}": losses.detach()}
    metrics["logps/chosen"], metrics["logps/rejected"] = logps[:B].detach(), logps[B:].detach()
    if ref_logps is not None:
        metrics["ref_logps/chosen"], metrics["ref_logps/rejected"] = ref_logps[:B], ref_logps[B:]
    return total, metrics
