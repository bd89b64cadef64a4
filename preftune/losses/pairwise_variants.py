"""Further pairwise objectives of the DPO family, and two token-level weighting helpers.

Every loss takes the common signature of `preftune/losses/pairwise.py`:

    NAME_loss(chosen_logratio, rejected_logratio, beta, *, <its own keywords>) -> (losses, metrics)

with chosen_logratio = log pi(y_w|x) - log pi_ref(y_w|x), shape (B,), summed over response tokens,
and returns per-pair losses (B,) with detached (B,) metrics "rewards/chosen" (beta * chosen_logratio),
"rewards/rejected", "rewards/margins" and "rewards/accuracies" (1 if the margin is > 0, 0.5 on a tie, 0).
Below, c = chosen_logratio, r = rejected_logratio and z = beta * (c - r).

Implemented (papers and equations in each docstring):
- sppo_hard: SPPO, Wu et al. 2024 (arXiv 2405.00675), with hard win probabilities.
- aot, aot_unpaired: AOT, Melnyk et al. 2024 (arXiv 2406.05882), paired and unpaired forms.
- apo_zero, apo_down: APO, D'Oosterlinck et al. 2024 (arXiv 2408.06266).
- bco_pair: BCO, Jung et al. 2024 (arXiv 2404.04656), on pairs, with the reward shift delta.
- exo_pair: EXO, Ji et al. 2024 (arXiv 2402.00856), pairwise form.
- nca_pair: NCA, Chen et al. 2024 (arXiv 2402.05369), two responses per prompt.
- discopop: DiscoPOP's log-ratio modulated loss, Lu et al. 2024 (arXiv 2406.08414).
- ld_logps: LD-DPO, Liu et al. 2024 (arXiv 2409.06411), the length-desensitised sequence log-prob.
- wpo_weights: WPO, Zhou et al. 2024 (arXiv 2406.11827), per-pair weights from the policy's probabilities.

All losses use reference log-ratios and none is length-normalised. VARIANT_LOSS_FUNCTIONS maps each
loss name to (function, names of its keyword-only parameters), which the trainer fills from its config.
Departures from the papers are listed per function, after "Departure:".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.losses.pairwise import pair_metrics


def _check_pair(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> None:
    if chosen_logratio.shape != rejected_logratio.shape:
        raise ValueError(
            f"chosen_logratio {tuple(chosen_logratio.shape)} and rejected_logratio "
            f"{tuple(rejected_logratio.shape)} must have the same shape (B,)."
        )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}. Typical range: 0.01 to 0.5.")


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5), got {label_smoothing}. "
            "It is the assumed probability that a label is flipped; use 0 for clean labels."
        )


def _reward_metrics(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> dict[str, Tensor]:
    """Implicit rewards beta * logratio of each pair, detached, (B,) each (the family's metrics)."""
    return pair_metrics(beta * chosen_logratio, beta * rejected_logratio)


def sppo_hard_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPPO with hard labels: square loss pulling each log-ratio to +-1/(2 beta).

    Paper: Self-Play Preference Optimization, Wu et al. 2024 (arXiv 2405.00675), the square loss of
    Algorithm 1 (log pi/pi_t - eta * (P(y > pi_t | x) - 1/2))^2, with eta = 1/beta.
    Implemented: (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2, i.e. win probability P = 1 for the chosen
    response and P = 0 for the rejected one (TRL's "sppo_hard"). Minimum 0 at c = -r = 1/(2 beta).

    Departure: the paper estimates P with a preference model (PairRM) over several samples and
    anchors to the previous iterate pi_t; here P is the hard label and pi_ref is whatever reference
    the trainer passes (refresh it each round for the paper's self-play).
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    target = 0.5 / beta
    losses = (chosen_logratio - target) ** 2 + (rejected_logratio + target) ** 2
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def _sorted_sigmoid_loss(gap: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """cDPO-smoothed logistic loss of beta * gap, (B,)."""
    return (1 - label_smoothing) * F.softplus(-beta * gap) + label_smoothing * F.softplus(beta * gap)


def aot_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """AOT, unpaired form: the chosen log-ratios should dominate the rejected ones quantile by quantile.

    Paper: Distributional Preference Alignment of LLMs via Optimal Transport, Melnyk et al. 2024
    (arXiv 2406.05882), AOT unpaired: first-order stochastic dominance of the chosen rewards over the
    rejected ones, whose 1-D optimal transport plan matches sorted values.
    Implemented: gap_i = sort(c)_i - sort(r)_i (ascending, across the batch), and
    loss_i = (1 - eps) * softplus(-beta * gap_i) + eps * softplus(beta * gap_i), eps = label_smoothing
    (TRL's "aot_unpaired").

    The losses are per sorted position i, not per original pair: do not multiply them by per-pair
    weights (e.g. `wpo_weights`). The metrics are per original pair. Sorting is within the tensors
    given, so the result depends on how a global batch is split into micro-batches and processes.

    Departure: of the smooth relaxations of the dominance violation the paper considers, only the
    logistic one is implemented; label smoothing is TRL's addition. Registered as "aot_unpaired", TRL's name (TRL's "aot" is
    `aot_pair_loss`).
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    _check_label_smoothing(label_smoothing)
    chosen_sorted = torch.sort(chosen_logratio, dim=0).values  # (B,) ascending
    rejected_sorted = torch.sort(rejected_logratio, dim=0).values  # (B,) ascending
    losses = _sorted_sigmoid_loss(chosen_sorted - rejected_sorted, beta, label_smoothing)
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def aot_pair_loss(
    chosen_logratio: Tensor,
    rejected_logratio: Tensor,
    beta: float,
    *,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """AOT, paired form: the policy's chosen-minus-rejected log-prob gaps should dominate the reference's.

    Paper: Melnyk et al. 2024 (arXiv 2406.05882), AOT paired: first-order stochastic dominance of the
    distribution of log pi(y_w|x) - log pi(y_l|x) over that of the reference, via sorting (1-D OT).
    Implemented, with policy gap g = (c + ref_chosen_logps) - (r + ref_rejected_logps) and reference gap
    g_ref = ref_chosen_logps - ref_rejected_logps, all (B,):
    gap_i = sort(g)_i - sort(g_ref)_i, loss_i = (1 - eps) * softplus(-beta * gap_i) + eps * softplus(beta * gap_i)
    (TRL's "aot"). The reference log-probs are needed because c - r = g - g_ref alone loses the two
    orderings; sorting c - r itself would give DPO's losses in another order.

    The losses are per sorted position i, not per original pair (see `aot_loss`); the metrics are per
    pair. With equal reference log-probs for both responses (g_ref = 0) this is DPO, reordered.

    Departure: label smoothing is TRL's addition. Registered as "aot", TRL's name.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    _check_label_smoothing(label_smoothing)
    if ref_chosen_logps.shape != chosen_logratio.shape or ref_rejected_logps.shape != chosen_logratio.shape:
        raise ValueError(
            f"ref_chosen_logps {tuple(ref_chosen_logps.shape)} and ref_rejected_logps "
            f"{tuple(ref_rejected_logps.shape)} must have the log-ratios' shape {tuple(chosen_logratio.shape)}."
        )
    ref_gap = ref_chosen_logps - ref_rejected_logps  # (B,)
    policy_gap = chosen_logratio - rejected_logratio + ref_gap  # (B,) log pi(y_w|x) - log pi(y_l|x)
    gap = torch.sort(policy_gap, dim=0).values - torch.sort(ref_gap, dim=0).values  # (B,) per quantile
    losses = _sorted_sigmoid_loss(gap, beta, label_smoothing)
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def apo_zero_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """APO-zero: raise the chosen likelihood and lower the rejected one, each against the reference.

    Paper: Anchored Preference Optimization, D'Oosterlinck et al. 2024 (arXiv 2408.06266), eq. 7:
    L = -sigmoid(beta * c) + sigmoid(beta * r). For chosen outputs better than the model's own.
    Implemented: 1 - sigmoid(beta * c) + sigmoid(beta * r), in (0, 2); 1 when c = r = 0.

    Departure: the constant 1 (as in TRL) keeps the loss non-negative; gradients are unchanged.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    # 1 - sigmoid(x) = sigmoid(-x), without the cancellation near sigmoid(x) = 1
    losses = torch.sigmoid(-beta * chosen_logratio) + torch.sigmoid(beta * rejected_logratio)
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def apo_down_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """APO-down: lower both likelihoods, the rejected one more.

    Paper: D'Oosterlinck et al. 2024 (arXiv 2408.06266), eq. 8:
    L = sigmoid(beta * c) - sigmoid(beta * (c - r)). For chosen outputs worse than the model's own.
    Implemented: sigmoid(beta * c) + 1 - sigmoid(beta * (c - r)), in (0, 2); 1 when c = r = 0.

    Departure: the constant 1 (as in TRL) keeps the loss non-negative; gradients are unchanged.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    z = beta * (chosen_logratio - rejected_logratio)
    losses = torch.sigmoid(beta * chosen_logratio) + torch.sigmoid(-z)  # 1 - sigmoid(z) = sigmoid(-z)
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def bco_pair_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, delta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """BCO on pairs: a binary classifier with logit beta * logratio - delta, chosen = 1, rejected = 0.

    Paper: Binary Classifier Optimization for LLM Alignment, Jung et al. 2024 (arXiv 2404.04656), the
    BCE loss with reward shift delta: -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta)),
    r = beta * logratio; the shift tightens the bound of the BCE loss on the DPO loss.
    Implemented: softplus(-(beta * c - delta)) + softplus(beta * r - delta).

    delta is in reward units (beta * logratio). The paper sets it to a running mean of the rewards of
    both classes; the caller computes it (preftune's DPO trainer: the micro-batch's mean reward) and
    passes it here as a float, so no gradient flows through it.

    Departure: pairs only, without the paper's density-ratio weights for unpaired data.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    if not math.isfinite(delta):
        raise ValueError(
            f"delta must be a finite float, got {delta}. Pass the running mean reward (0.0 at start)."
        )
    losses = F.softplus(delta - beta * chosen_logratio) + F.softplus(beta * rejected_logratio - delta)
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def exo_pair_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, label_smoothing: float = 1e-3
) -> tuple[Tensor, dict[str, Tensor]]:
    """EXO on pairs: reverse KL from the policy's pair distribution to the smoothed label.

    Paper: Towards Efficient Exact Optimization of Language Model Alignment, Ji et al. 2024
    (arXiv 2402.00856), EXO-pref (eq. 16 as TRL cites it) with K = 2: KL(q || p) where
    q = softmax(beta * [c, r]) = [sigmoid(z), sigmoid(-z)] and p = [1 - eps, eps], eps = label_smoothing.
    Implemented: sigmoid(z) * (logsigmoid(z) - log(1 - eps)) + sigmoid(-z) * (logsigmoid(-z) - log(eps)).
    It is >= 0, with minimum 0 at z = log((1 - eps) / eps); eps = 1e-3 is the paper's recommendation.

    Departure: one temperature beta for the policy's distribution; the paper's reward temperature
    beta_r is folded into eps (hard labels smoothed to [1 - eps, eps]).
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(
            f"label_smoothing must be in (0, 1) for exo_pair, got {label_smoothing}: log(eps) is "
            "infinite at 0. The EXO paper uses 1e-3."
        )
    z = beta * (chosen_logratio - rejected_logratio)
    chosen_term = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-label_smoothing))
    rejected_term = torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(label_smoothing))
    return chosen_term + rejected_term, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def nca_pair_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """NCA with two responses: classify the chosen one as data, and each response's reward as noise.

    Paper: Noise Contrastive Alignment of Language Models with Explicit Rewards, Chen et al. 2024
    (arXiv 2402.05369), the NCA loss with K = 2 and preference (winner-takes-all) labels.
    Implemented: -logsigmoid(beta * c) - 0.5 * logsigmoid(-beta * c) - 0.5 * logsigmoid(-beta * r);
    2 log 2 when c = r = 0. Unlike DPO it optimises absolute likelihoods, not only their gap.

    Departure: none beyond restricting the paper's K responses to the pair (as TRL's "nca_pair").
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    chosen_rewards = beta * chosen_logratio
    rejected_rewards = beta * rejected_logratio
    losses = (
        F.softplus(-chosen_rewards) + 0.5 * F.softplus(chosen_rewards) + 0.5 * F.softplus(rejected_rewards)
    )
    return losses, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def discopop_loss(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, *, tau: float = 0.05
) -> tuple[Tensor, dict[str, Tensor]]:
    """DiscoPOP: a blend of the logistic (DPO) and exponential losses, mixed by the margin itself.

    Paper: Discovering Preference Optimization Algorithms with and for Large Language Models, Lu et al.
    2024 (arXiv 2406.08414), eq. 5, the log-ratio modulated loss (LRML), tau = 0.05 recommended.
    Implemented: mix = sigmoid(z / tau), loss = (1 - mix) * softplus(-z) + mix * exp(-z) (TRL's
    "discopop"). Small tau switches from logistic (z < 0) to exponential (z > 0); large tau gives
    0.5 * (softplus(-z) + exp(-z)).

    Departure: mix * exp(-z) is computed as exp(logsigmoid(z / tau) - z), the same value, so that a
    large negative z gives a large finite loss instead of 0 * inf = nan in float32.
    """
    _check_pair(chosen_logratio, rejected_logratio, beta)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}. The DiscoPOP paper uses 0.05.")
    z = beta * (chosen_logratio - rejected_logratio)
    logistic_part = torch.sigmoid(-z / tau) * F.softplus(-z)  # (1 - mix) * -logsigmoid(z)
    exponential_part = torch.exp(F.logsigmoid(z / tau) - z)  # mix * exp(-z)
    return logistic_part + exponential_part, _reward_metrics(chosen_logratio, rejected_logratio, beta)


def ld_logps(token_logps: Tensor, mask: Tensor, public_length: Tensor, alpha: float) -> Tensor:
    """Length-desensitised sequence log-prob: tokens past the pair's shared length count alpha times.

    Paper: Length Desensitization in Direct Preference Optimization, Liu et al. 2024 (arXiv 2409.06411),
    the decomposed likelihood of LD-DPO: the first l_p response tokens, l_p = the shorter response's
    length in the pair ("public length"), count fully, the rest with exponent alpha.
    Implemented: sum of the first public_length response tokens' log-probs + alpha * sum of the rest.
    alpha = 1 is the plain sum (DPO); alpha = 0 truncates to the public length. Apply it to the policy's
    and the reference's token log-probs alike, then form the log-ratios.

    Args:
        token_logps: (B, T) log-probs of the target tokens; values where mask is False are ignored
            (they may be anything, even nan).
        mask: (B, T) bool, True at response tokens, which may start anywhere (left or right padding).
        public_length: (B,) int, the pair's min(chosen length, rejected length), for both rows of a pair.
        alpha: weight in [0, 1] of the tokens past the public length.

    Returns:
        (B,) weighted sequence log-probs.

    Departure: none.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(
            f"alpha must be in [0, 1], got {alpha}. 1 is plain DPO; the paper tunes it per model."
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}. Use mask.bool().")
    if token_logps.shape != mask.shape or public_length.shape != token_logps.shape[:1]:
        raise ValueError(
            f"token_logps {tuple(token_logps.shape)} and mask {tuple(mask.shape)} must be (B, T) and "
            f"public_length {tuple(public_length.shape)} must be (B,)."
        )
    position = torch.cumsum(mask.long(), dim=1)  # (B, T) 1-based index among response tokens
    shared = mask & (position <= public_length[:, None])  # (B, T)
    tail = mask & (position > public_length[:, None])  # (B, T)
    zero = token_logps.new_zeros(())
    shared_logps = torch.where(shared, token_logps, zero).sum(dim=1)  # (B,)
    tail_logps = torch.where(tail, token_logps, zero).sum(dim=1)  # (B,)
    return shared_logps + alpha * tail_logps


def ld_logps_flat(token_logps: Tensor, sequence_index: Tensor, num_sequences: int, alpha: float) -> Tensor:
    """LD-DPO's (S,) sequence log-probs from flat (M,) token log-probs of S = 2B sequences (chosen, then
    rejected, each sequence's tokens contiguous and in order): tokens past the pair's shorter response
    count alpha times (`ld_logps`)."""
    lengths = torch.bincount(sequence_index, minlength=num_sequences)  # (S,)
    starts = torch.cumsum(lengths, dim=0) - lengths  # (S,) first flat index of each sequence
    position = (
        torch.arange(sequence_index.shape[0], device=sequence_index.device) - starts[sequence_index]
    )  # (M,)
    matrix = token_logps.new_zeros(num_sequences, int(lengths.max()))  # (S, L)
    matrix = matrix.index_put((sequence_index, position), token_logps)
    mask = torch.zeros(matrix.shape, dtype=torch.bool, device=matrix.device)
    mask[sequence_index, position] = True
    B = num_sequences // 2
    public = torch.minimum(lengths[:B], lengths[B:]).repeat(2)  # (S,) the shorter response of each pair
    return ld_logps(matrix, mask, public, alpha)


def wpo_weights(chosen_mean_logps: Tensor, rejected_mean_logps: Tensor) -> Tensor:
    """WPO per-pair weights: how likely the pair is under the current policy, per token.

    Paper: WPO: Enhancing RLHF with Weighted Preference Optimization, Zhou et al. 2024
    (arXiv 2406.11827): each pair's loss is multiplied by w = w(y_w) * w(y_l), with w(y) the policy's
    length-normalised sequence probability exp(mean over tokens of log pi(y_t | x, y_<t)).
    Implemented: exp(chosen_mean_logps + rejected_mean_logps), detached (the weights are constants of
    the step), in (0, 1] for log-probs <= 0 (in float32 it underflows to 0 only when the two means
    sum below about -103).

    Args:
        chosen_mean_logps, rejected_mean_logps: (B,) the policy's mean per-token log-prob of each response.

    Returns:
        (B,) weights, without gradient.

    Departure: the paper's "sampled alignment" normalises each token's probability by the sum over the
    vocabulary of p^2 (what TRL implements); this is the plain, unaligned weight. Do not combine it with
    the sorted `aot` losses, which are not per pair.
    """
    if chosen_mean_logps.shape != rejected_mean_logps.shape:
        raise ValueError(
            f"chosen_mean_logps {tuple(chosen_mean_logps.shape)} and rejected_mean_logps "
            f"{tuple(rejected_mean_logps.shape)} must have the same shape (B,)."
        )
    return torch.exp(chosen_mean_logps.detach() + rejected_mean_logps.detach())


PairwiseLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

VARIANT_LOSS_FUNCTIONS: dict[str, tuple[PairwiseLossFn, tuple[str, ...]]] = {
    "sppo_hard": (sppo_hard_loss, ()),
    # TRL's names: "aot" is the paired form, "aot_unpaired" the other
    "aot": (aot_pair_loss, ("ref_chosen_logps", "ref_rejected_logps", "label_smoothing")),
    "aot_unpaired": (aot_loss, ("label_smoothing",)),
    "apo_zero": (apo_zero_loss, ()),
    "apo_down": (apo_down_loss, ()),
    "bco_pair": (bco_pair_loss, ("delta",)),
    "exo_pair": (exo_pair_loss, ("label_smoothing",)),
    "nca_pair": (nca_pair_loss, ()),
    "discopop": (discopop_loss, ("tau",)),
}
"""Loss name -> (function, names of its keyword-only parameters). All use reference log-ratios;
none is length-normalised. aot also needs the reference log-probs; bco_pair needs the reward shift
delta, which both DPO trainers take as the micro-batch's mean implicit reward (a departure from the
paper's running mean; losses/registry.py, preference_loss)."""
