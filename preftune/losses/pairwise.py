"""Pairwise preference losses of the DPO family, as pure functions, and the registry that picks one.

Implemented (registry key: objective, paper):
- `sigmoid`: DPO, Rafailov et al. 2023 (arXiv 2305.18290, eq. 7); with `label_smoothing` > 0 it is
  conservative DPO (Mitchell 2023, a note without an arXiv id).
- `cdpo`: the same objective with `label_smoothing` required in (0, 0.5).
- `robust`: rDPO, Chowdhury et al. 2024 (arXiv 2403.00409), the de-biased loss for flipped labels.
- `ipo`: IPO, Azar et al. 2023 (arXiv 2310.12036, eq. 17), on summed log-ratios as the paper writes it.
- `ipo_norm`: IPO on per-token-mean log-ratios, the form of the paper's experiments (TRL's `ipo`).
- `hinge`: the SLiC-HF rank-calibration hinge, Zhao et al. 2023 (arXiv 2305.10425), on log-ratios.
- `simpo`: SimPO, Meng et al. 2024 (arXiv 2405.14734, eq. 6), reference-free.
- `sigmoid_norm`: DPO on per-token-mean log-ratios (length-normalised DPO, as in SimPO's analysis).
- `orpo`: the odds-ratio term of ORPO, Hong et al. 2024 (arXiv 2403.07691, eq. 6-7), reference-free.
Also here: `chosen_nll` (the length-normalised NLL of the chosen response that ORPO and RPO add; the DPO
trainer sums it with a pairwise loss as `--loss_type orpo sft` with `--loss_weights`) and
`f_divergence_logratio` (f-DPO, Wang et al. 2023, arXiv 2309.16240, which swaps the reverse-KL log-ratio
for f'(pi/pi_ref)).

Every loss in `PAIRWISE_LOSSES` has one signature::

    NAME_loss(chosen_logratio, rejected_logratio, beta, *, <its keyword params>) -> (losses, metrics)

with `chosen_logratio = logps(y_w) - ref_logps(y_w)`, shape (B,), summed over response tokens.
Reference-free losses (`reference_free=True`: simpo, orpo) take the policy's own log-probs in the same
two slots, and losses with `length_normalized=True` (sigmoid_norm, ipo_norm, simpo, orpo) take per-token means
(summed log-probs or log-ratios divided by the response length); the trainer fills the slots as the
registry entry says and passes the keyword params named in its `params`. Each loss returns per-pair
losses (B,), never reduced, and detached (B,) metrics: "rewards/chosen" (beta * chosen slot),
"rewards/rejected", "rewards/margins" (chosen - rejected) and "rewards/accuracies" (1 where the chosen
reward is higher, 0.5 on a tie, 0 otherwise).

The losses with a `label_smoothing` parameter take it as a float or as a (B,) tensor, one flip
probability per pair. For soft labels p = P(y_w is truly preferred) the expected-loss forms (sigmoid,
cdpo, sigmoid_norm, simpo) take eps = 1 - p; robust takes per-pair known flip rates, not posteriors.

Departures from the papers are listed in each function's docstring under "Departure:".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence", "js", "alpha"]
F_DIVERGENCES: tuple[str, ...] = get_args(FDivergence)
"""Every name `f_divergence_logratio` takes: TRL's, and preftune's shorter synonyms."""
F_DIVERGENCE_SYNONYMS: dict[str, str] = {"js": "js_divergence", "alpha": "alpha_divergence"}
"""preftune's short names of the divergences TRL calls "js_divergence" and "alpha_divergence"."""


def _check_pair(chosen: Tensor, rejected: Tensor, beta: float) -> None:
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must have the same shape, "
            "one value per pair (B,)."
        )
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}. Pass a positive value such as 0.1.")


def _check_label_smoothing(
    label_smoothing: float | Tensor, loss: str, *, allow_zero: bool = True, allow_half: bool = True
) -> None:
    """A scalar eps in [0, 0.5) (or (0, 0.5)); a (B,) tensor of per-pair eps may also reach 0.5 (a
    coin-flip label, which pulls the margin to 0) unless `allow_half` is False."""
    if isinstance(label_smoothing, Tensor):
        low = label_smoothing >= 0 if allow_zero else label_smoothing > 0
        high = label_smoothing <= 0.5 if allow_half else label_smoothing < 0.5
        if label_smoothing.ndim != 1 or not bool(torch.all(low & high)):
            interval = ("[0" if allow_zero else "(0") + (", 0.5]" if allow_half else ", 0.5)")
            raise ValueError(
                f"per-pair label_smoothing for the '{loss}' loss must be a (B,) tensor with values in {interval}, "
                f"got shape {tuple(label_smoothing.shape)} and values {label_smoothing.tolist()[:8]}. It is each "
                "pair's probability of a flipped label, e.g. 1 - chosen_probability."
            )
        return
    low_ok = label_smoothing >= 0 if allow_zero else label_smoothing > 0
    if not (low_ok and label_smoothing < 0.5):
        interval = "[0, 0.5)" if allow_zero else "(0, 0.5); use 'sigmoid' for clean labels"
        raise ValueError(
            f"label_smoothing for the '{loss}' loss must be in {interval}, got {label_smoothing}. "
            "It is the assumed probability that a pair's label is flipped."
        )


def pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The family's per-pair metrics, detached, (B,) each: rewards, their margin and 1 / 0.5 / 0 accuracy."""
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    accuracies = (chosen > rejected).to(chosen.dtype) + 0.5 * (chosen == rejected).to(chosen.dtype)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": accuracies,
    }


def sigmoid_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float | Tensor = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO, Rafailov et al. 2023, arXiv 2305.18290, eq. 7: -log sigmoid(z), z = beta * (c - r).

    With label_smoothing eps > 0 this is conservative DPO (Mitchell 2023): the expected loss when
    each label is flipped with probability eps, (1 - eps) * softplus(-z) + eps * softplus(z).

    Args:
        chosen_logratio, rejected_logratio: (B,) summed log-ratios of y_w and y_l.
        label_smoothing: eps in [0, 0.5); 0 gives plain DPO. Or a (B,) tensor of per-pair eps in
            [0, 0.5], e.g. 1 - p for soft labels p = P(y_w is truly preferred): the expected loss
            when each pair's true label is drawn from its soft label.

    Returns:
        (B,) losses and the detached (B,) reward metrics (module docstring).
    Departure: none.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    _check_label_smoothing(label_smoothing, "sigmoid")
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,)
    losses = (1 - label_smoothing) * F.softplus(-logits) + label_smoothing * F.softplus(logits)
    return losses, pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def cdpo_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Conservative DPO (Mitchell 2023 note, no arXiv id): `sigmoid_loss` with label smoothing required.

    (1 - eps) * softplus(-z) + eps * softplus(z), z = beta * (c - r), eps in (0, 0.5). Shapes as in
    `sigmoid_loss`. Its minimum sits at the finite margin z = log((1 - eps) / eps), unlike DPO's.
    A (B,) tensor gives each pair its own eps, in (0, 0.5].
    Departure: none.
    """
    _check_label_smoothing(label_smoothing, "cdpo", allow_zero=False)
    return sigmoid_loss(chosen_logratio, rejected_logratio, beta, label_smoothing=label_smoothing)


def robust_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float | Tensor = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """rDPO, Chowdhury et al. 2024, arXiv 2403.00409 (section 3, the de-biased DPO loss).

    ((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 eps), z = beta * (c - r), where eps in
    [0, 0.5) is the known rate of flipped labels. Averaged over flips of rate eps it equals the clean
    DPO loss (unbiased), whereas cDPO's smoothing changes the minimiser. It is not bounded below.

    Args:
        chosen_logratio, rejected_logratio: (B,) summed log-ratios of y_w and y_l.
        label_smoothing: the flip rate eps; 0 gives plain DPO. A (B,) tensor gives each pair its own
            known flip rate, each < 0.5 (the de-biasing divides by 1 - 2 eps). It is not a soft label:
            for a posterior p over the true label the expected loss is `sigmoid_loss` with eps = 1 - p.

    Returns:
        (B,) losses and the detached (B,) reward metrics.
    Departure: none.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    _check_label_smoothing(label_smoothing, "robust", allow_half=False)
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,)
    losses = ((1 - label_smoothing) * F.softplus(-logits) - label_smoothing * F.softplus(logits)) / (
        1 - 2 * label_smoothing
    )
    return losses, pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def ipo_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO, Azar et al. 2023, arXiv 2310.12036, eq. 17: (h - 1 / (2 beta))^2, h = c - r; beta is tau.

    The squared loss pulls the log-ratio gap h to 1 / (2 tau) instead of to infinity.

    Args:
        chosen_logratio, rejected_logratio: (B,) log-ratios summed over tokens, as in the paper.

    Returns:
        (B,) losses and the detached (B,) reward metrics (rewards = beta * log-ratio).
    Departure: none. TRL's "ipo" divides each log-ratio by its response length first: that is
    `ipo_norm` here.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    gap = chosen_logratio - rejected_logratio  # (B,)
    losses = (gap - 1 / (2 * beta)) ** 2
    return losses, pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def ipo_norm_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO on per-token-mean log-ratios: `ipo_loss`'s (h - 1 / (2 beta))^2 with h = c - r, beta is tau.

    The trainer passes (logps - ref_logps) / response length, (B,), for each response: TRL's "ipo". The
    paper (arXiv 2310.12036, eq. 17) defines h on whole sequences; TRL's code notes that the IPO authors
    confirmed the paper's reported results use this per-token normalisation. The target gap 1 / (2 tau)
    is then in nats per token, so a tau tuned for one form is far off for the other.

    Returns:
        (B,) losses and the detached (B,) reward metrics (rewards = beta * mean log-ratio).
    Departure: h on per-token means, as in the authors' experiments, not on summed log-ratios as in eq. 17.
    """
    return ipo_loss(chosen_logratio, rejected_logratio, beta)


def hinge_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC-HF rank calibration, Zhao et al. 2023, arXiv 2305.10425: relu(1 - beta * (c - r)).

    The paper's hinge is max(0, delta - log pi(y_w|x) + log pi(y_l|x)); ours equals
    beta * max(0, 1/beta - h) with h = c - r: the margin is delta = 1/beta and the loss is scaled by beta.

    Args:
        chosen_logratio, rejected_logratio: (B,) summed log-ratios of y_w and y_l.

    Returns:
        (B,) losses and the detached (B,) reward metrics.
    Departure: SLiC-HF compares policy log-probs without a reference; we use log-ratios (the form
    TRL calls "hinge"), and leave out its regulariser -lambda log pi(y_ref|x) (add
    `chosen_nll`, `--loss_type hinge sft`; it uses y_w where the paper uses the SFT target).
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    losses = torch.relu(1 - beta * (chosen_logratio - rejected_logratio))
    return losses, pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def simpo_loss(
    chosen_logratio: Tensor,
    rejected_logratio: Tensor,
    beta: float,
    *,
    gamma: float,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SimPO, Meng et al. 2024, arXiv 2405.14734, eq. 6: -log sigmoid(beta * (c - r) - gamma).

    Reference-free: the slots hold the policy's per-token-mean log-probs (1/|y|) log pi(y|x), (B,),
    not log-ratios. gamma is the target reward margin itself, in reward units (eq. 6); the paper
    reports its hyper-parameters as the ratio gamma / beta, so pass gamma = ratio * beta.
    label_smoothing eps mixes in the flipped pair as cDPO does: (1 - eps) * softplus(gamma - z) +
    eps * softplus(gamma + z), z = beta * (c - r); a (B,) tensor gives each pair its own eps in [0, 0.5].

    Returns:
        (B,) losses and the detached (B,) metrics, rewards = beta * mean log-prob (the paper's reward).
    Departure: label smoothing is not in the paper. The flipped pair keeps the margin (the rejected
    response must win by gamma), so smoothing is the expected loss under label flips; TRL's CPO
    trainer smooths with softplus(z - gamma) instead.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    _check_label_smoothing(label_smoothing, "simpo")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}. It is the target reward margin.")
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,)
    losses = (1 - label_smoothing) * F.softplus(gamma - logits) + label_smoothing * F.softplus(gamma + logits)
    return losses, pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def sigmoid_norm_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float | Tensor = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Length-normalised DPO: `sigmoid_loss` on per-token-mean log-ratios.

    The formula is DPO's (arXiv 2305.18290, eq. 7), with label smoothing as in `sigmoid_loss`; the
    trainer passes (logps - ref_logps) / response length, (B,), for each response. Normalising
    removes the pull towards longer responses that summed log-ratios give, as discussed in SimPO
    (arXiv 2405.14734), which ablates length normalisation.
    Departure: DPO uses summed log-ratios. A beta tuned for summed log-ratios is too small here.
    """
    _check_label_smoothing(label_smoothing, "sigmoid_norm")  # name this loss in the error
    return sigmoid_loss(chosen_logratio, rejected_logratio, beta, label_smoothing=label_smoothing)


def orpo_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """ORPO odds-ratio term, Hong et al. 2024, arXiv 2403.07691, eq. 7 (weighted by lambda in eq. 6).

    -beta * log sigmoid(log odds(y_w) - log odds(y_l)), odds(y) = p / (1 - p), where beta is the
    paper's lambda and log p is the policy's per-token-mean log-prob, (B,), given in the log-ratio
    slots (reference-free). log(1 - p) is computed as log(-expm1(log p)), accurate as log p -> 0-;
    log p must be < 0 (at 0 the odds are infinite).

    Returns:
        (B,) losses and detached (B,) metrics: rewards = beta * mean log-prob, and
        "orpo/log_odds_ratio", log odds(y_w) - log odds(y_l).
    Departure: none in this term. The NLL term of eq. 6 is separate: add `chosen_nll` with weight 1
    and this term with weight 1 (`--loss_type orpo sft`).
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    log_odds_chosen = chosen_logratio - torch.log(-torch.expm1(chosen_logratio))  # (B,)
    log_odds_rejected = rejected_logratio - torch.log(-torch.expm1(rejected_logratio))  # (B,)
    log_odds_ratio = log_odds_chosen - log_odds_rejected
    losses = -beta * F.logsigmoid(log_odds_ratio)
    metrics = pair_metrics(beta * chosen_logratio, beta * rejected_logratio)
    metrics["orpo/log_odds_ratio"] = log_odds_ratio.detach()
    return losses, metrics


def chosen_nll(chosen_logps: Tensor, chosen_lengths: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Length-normalised NLL of the chosen response, -logps(y_w) / |y_w|: ORPO's L_SFT, RPO's NLL.

    ORPO (arXiv 2403.07691, eq. 6) and RPO (Pang et al. 2024, arXiv 2404.19733) add this term to a
    pairwise loss; the DPO trainer sums them as `--loss_type <loss> sft` with `--loss_weights`.

    Args:
        chosen_logps: (B,) log pi(y_w|x) summed over response tokens.
        chosen_lengths: (B,) number of response tokens of y_w, each >= 1.

    Returns:
        (B,) losses and {"nll/chosen": the same values, detached}.
    Departure: each pair is normalised by its own length; ORPO's code (and TRL's "sft" term) divide
    the batch's summed NLL by its total token count, which weights long responses more.
    """
    if chosen_logps.shape != chosen_lengths.shape:
        raise ValueError(
            f"chosen_logps {tuple(chosen_logps.shape)} and chosen_lengths {tuple(chosen_lengths.shape)} "
            "must have the same shape (B,)."
        )
    if bool(torch.any(chosen_lengths < 1)):
        raise ValueError(
            f"chosen_lengths must be >= 1, got {chosen_lengths.tolist()}. Drop pairs with an empty chosen "
            "response when building the dataset."
        )
    losses = -chosen_logps / chosen_lengths
    return losses, {"nll/chosen": losses.detach()}


def f_divergence_logratio(logratio: Tensor, divergence: FDivergence, alpha: float = 0.5) -> Tensor:
    """f'(u) - f'(1) at u = pi / pi_ref, the value f-DPO puts where DPO has log(pi / pi_ref).

    Wang et al. 2023, arXiv 2309.16240 (Table 1 lists f and f'). Each f' is shifted so that f'(1) = 0:
    f(u) + c (u - 1) defines the same divergence, so the shift changes nothing in the objective, and
    a policy equal to its reference gets 0 in every slot, as in DPO. The shift matters once a loss
    divides each response's value by its own length (sigmoid_norm, ipo_norm): a constant left in f'
    would add k (1/L_chosen - 1/L_rejected) to the margin. Apply it to both log-ratios, then call a
    loss of the two values' difference (sigmoid, cdpo, robust, ipo, hinge, ...); losses that read
    each log-ratio on its own (nca_pair, apo_*, ...) have no f-divergence form. With u = exp(logratio):
    - "reverse_kl": f'(u) = log u + 1 -> logratio (this is DPO);
    - "forward_kl": f'(u) = -1/u -> 1 - exp(-logratio);
    - "js_divergence" (or "js"): f'(u) = log(2u / (1 + u)) -> log 2 + logsigmoid(logratio);
    - "alpha_divergence" (or "alpha"): f'(u) = (1 - u^-alpha) / alpha, alpha in (0, 1)
      -> -expm1(-alpha * logratio) / alpha; alpha -> 0 gives reverse_kl, alpha -> 1 forward_kl.
    `alpha` is the paper's, read only for the alpha divergence. Returns a tensor of logratio's shape.
    Nothing is clamped: large negative log-ratios overflow forward_kl and alpha to -inf rather than
    being silently cut.
    Departure: none. The names are TRL's. TRL 1.16's alpha coefficient a gives (u^(a-1) - 1) / (a - 1):
    the paper's alpha is 1 - a (DPOConfig's --f_alpha_divergence_coef is TRL's a, and converts).
    """
    kind = F_DIVERGENCE_SYNONYMS.get(divergence, divergence)
    if kind == "reverse_kl":
        return logratio
    if kind == "forward_kl":
        return -torch.expm1(-logratio)  # 1 - 1/u without cancellation near u = 1
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(logratio)  # log(2u / (1 + u)) without overflow
    if kind == "alpha_divergence":
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1) for the alpha divergence, got {alpha}. Try 0.5.")
        return -torch.expm1(-alpha * logratio) / alpha
    raise ValueError(f"Unknown divergence {divergence!r}; choose one of {F_DIVERGENCES}.")


@dataclass(frozen=True)
class PairwiseLoss:
    """A registry entry: the loss and what the trainer must feed it."""

    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]
    """NAME_loss(chosen, rejected, beta, **{p: config[p] for p in params}) -> (losses (B,), metrics)."""
    reference_free: bool
    """True: the slots take the policy's log-probs and no reference model is needed."""
    length_normalized: bool
    """True: the slots take per-token means (summed values divided by the response length)."""
    params: tuple[str, ...]
    """Names of the keyword-only parameters of `fn`, which the trainer passes from its config."""
    margin: bool = False
    """True: a function of the margin beta * (chosen - rejected) alone, so an f-divergence
    (`f_divergence_logratio`) may replace the log-ratio in both slots."""
    soft_labels: bool = False
    """True: its label smoothing is the expected loss under label flips, so a soft label p (P(chosen is
    truly preferred)) may enter as per-pair smoothing 1 - p."""
    label_noise: bool = False
    """True: its label smoothing is a label-flip rate, which an estimate from the ratings may set."""
    per_sorted_position: bool = False
    """True: computed per sorted position across the batch, not per pair, so no per-pair weight applies."""


_FLIPS = {"soft_labels": True, "label_noise": True}  # the loss under label flips (cDPO's smoothing)

PAIRWISE_LOSSES: dict[str, PairwiseLoss] = {
    "sigmoid": PairwiseLoss(sigmoid_loss, False, False, ("label_smoothing",), margin=True, **_FLIPS),
    "cdpo": PairwiseLoss(cdpo_loss, False, False, ("label_smoothing",), margin=True, **_FLIPS),
    "robust": PairwiseLoss(robust_loss, False, False, ("label_smoothing",), margin=True, label_noise=True),
    "ipo": PairwiseLoss(ipo_loss, False, False, (), margin=True),
    "ipo_norm": PairwiseLoss(ipo_norm_loss, False, True, (), margin=True),
    "hinge": PairwiseLoss(hinge_loss, False, False, (), margin=True),
    "simpo": PairwiseLoss(simpo_loss, True, True, ("gamma", "label_smoothing"), **_FLIPS),
    "sigmoid_norm": PairwiseLoss(sigmoid_norm_loss, False, True, ("label_smoothing",), margin=True, **_FLIPS),
    "orpo": PairwiseLoss(orpo_loss, True, True, ()),
}
