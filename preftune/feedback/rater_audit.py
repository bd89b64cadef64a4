"""What the ratings say about their raters: length and position bias, agreement, error rates,
fatigue and group divergence. Pure functions of a `Ratings`; `audit.py` adds the files.

The reference for every per-rater measure is the **consensus of the others**: the
Dawid-Skene posterior log-odds of the item (prior 0.5) computed without the rater's ratings
(`consensus_log_odds` with one block per annotator), so a rater is never compared with their
own vote, nor with their own repeat rating of the item. It exists only for ratings of items
that another annotator also rated ("overlap ratings"); without any, every per-annotator
estimate is None and an "info" flag says why.
- `agreement`: share of a rater's overlap ratings that pick the consensus' winner (ratings
  where the others are exactly split are left out);
- `flip_rate`: the Dawid-Skene error rate (see `dawid_skene.py` on what identifies it);
- `fatigue_slope`: least-squares slope of the expected agreement with the consensus,
  v q + (1 - v)(1 - q) with q = P(a wins | others), on the relative position in the session
  order / session_length (session_length = the rater's largest order + 1), so the slope is
  the change in agreement from the first to the last item. Its 95% interval is slope +-
  1.96 se (bootstrap se over `num_bootstrap` resamples, or the robust formula);
- `length_bias`: `agreement.length_excess`: the share of the rater's verdicts that go to the
  longer response whatever its quality, against E = (1 - f) q + f (1 - q), what an unbiased rater
  with the rater's flip rate f would do given q = P(longer is better | the others' ratings),
  with P(longer is better) fitted (`longer_prior`) to the other raters' ratings.
Groups are measured against the consensus of the *other groups* (the group's own raters left
out), so a group that shares a bias is not compared with itself. Group divergence compares
agreement beyond what the raters' flip rates predict, within and between groups.

Flags (severity "warning") need both significance and a material effect, and test each
rater or group at the family-wise level `significance` (Bonferroni over the raters or groups
tested): a flip rate >= `max_flip_rate`; a fatigue slope whose corrected interval is below 0
and <= -`fatigue_min_drop`; a length excess whose corrected interval is above 0 and >=
`length_min_excess`; group divergence with permutation p < significance and within-minus-
between excess agreement >= `divergence_min_effect`; a share of first-shown choices whose interval
excludes 0.5 by >= `position_min_effect`. Position bias, pooled fatigue and group divergence
are one family of three dataset-level tests (Bonferroni: each at significance / 3). Raters with fewer than `min_overlap_ratings` overlap
ratings are reported but never flagged. Raw "chosen is longer" shares are "info": without a
consensus they cannot separate length bias from longer answers being better.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from preftune.feedback.agreement import (
    GroupDivergence,
    LengthExcess,
    bonferroni_z,
    consensus_log_odds,
    detectable_effect,
    group_divergence,
    krippendorff_alpha_binary,
    length_excess,
    longer_prior,
    proportion_z_test,
    slope_with_se,
)
from preftune.feedback.dawid_skene import DawidSkeneResult, dawid_skene, vote_log_odds
from preftune.feedback.ratings import Ratings
from preftune.stats import wilson_interval

Z95 = 1.959964
NUM_PANEL_TESTS = 3
"""Dataset-level tests sharing one family-wise level: position bias, pooled fatigue, group divergence."""
FATIGUE_BINS = 5


@dataclass
class AuditThresholds:
    """When a finding becomes a warning flag (see preftune/feedback/rater_audit.py)."""

    significance: float = 0.05
    """Family-wise error level of each kind of test (Bonferroni over the raters or groups tested)."""
    max_flip_rate: float = 0.3
    """Flag raters whose estimated flip (error) rate is at least this."""
    fatigue_min_drop: float = 0.1
    """Flag fatigue only when agreement drops at least this much from a session's start to its end."""
    length_min_excess: float = 0.1
    """Flag length bias only when a rater or group errs towards the longer response at least this much more."""
    length_min_effect: float = 0.05
    """Report raw length bias (info) when the accuracy of 'prefer longer' is this far from 0.5."""
    position_min_effect: float = 0.02
    """Flag position bias only when the share choosing the first-shown response is this far from 0.5."""
    divergence_min_effect: float = 0.03
    """Flag group divergence only when within-group agreement exceeds between-group agreement by this."""
    min_overlap_ratings: int = 30
    """Raters with fewer ratings of items others also rated are reported but never flagged."""
    min_cap_count: int = 3
    """Responses that must share the largest length before it counts as a truncation cap."""

    def __post_init__(self) -> None:
        if not 0 < self.significance < 1:
            raise ValueError(f"significance must be in (0, 1), got {self.significance}. Typical: 0.05.")
        for name in (
            "max_flip_rate",
            "fatigue_min_drop",
            "length_min_excess",
            "length_min_effect",
            "position_min_effect",
            "divergence_min_effect",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if self.min_overlap_ratings < 1 or self.min_cap_count < 1:
            raise ValueError(
                f"min_overlap_ratings and min_cap_count must be >= 1, got {self.min_overlap_ratings} "
                f"and {self.min_cap_count}."
            )


def make_flag(finding: str, evidence: str, severity: str = "warning") -> dict[str, str]:
    """One entry of audit.json's `flags`: what was found, the numbers behind it, and how serious."""
    return {"finding": finding, "evidence": evidence, "severity": severity}


@dataclass
class RatingAudit:
    """Flat metrics (keys as in audit.json), flags, and the series the report plots."""

    metrics: dict[str, Any] = field(default_factory=dict)
    flags: list[dict[str, str]] = field(default_factory=list)
    plots: dict[str, Any] = field(default_factory=dict)


def _ci(low: float, high: float) -> list[float]:
    return [low, high]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# ----------------------------------------------------------------------------- no annotators needed


def length_bias(ratings: Ratings, thresholds: AuditThresholds) -> RatingAudit:
    """Dataset-level length statistics: the share of ratings whose chosen response has more words,
    and the accuracy of the rule "prefer the longer one" over pairs of unequal length."""
    chose_longer = ratings.chose_longer
    unequal = ~np.isnan(chose_longer)
    n, longer = int(unequal.sum()), float(np.nansum(chose_longer))
    accuracy = longer / n if n else math.nan
    low, high = wilson_interval(longer, n) if n else (math.nan, math.nan)  # no unequal pair: null interval
    z, p = proportion_z_test(longer, n)
    chosen_words = np.where(ratings.votes == 1, ratings.a_words, ratings.b_words)
    rejected_words = np.where(ratings.votes == 1, ratings.b_words, ratings.a_words)
    out = RatingAudit()
    if len(ratings) == 0:  # e.g. every row a tie: nothing to measure
        out.metrics = {"length_bias/num_unequal": 0}
        return out
    out.metrics = {
        "length_bias/share_chosen_longer": longer / len(ratings),
        "length_bias/share_equal_length": 1 - n / len(ratings),
        "length_bias/num_unequal": n,
        "length_bias/prefer_longer_accuracy": _nan_to_none(accuracy),
        "length_bias/prefer_longer_ci": _ci(low, high),
        "length_bias/prefer_shorter_accuracy": _nan_to_none(1 - accuracy),
        "length_bias/z": _nan_to_none(z),
        "length_bias/p_value": _nan_to_none(p),
        "length_bias/mean_words_chosen": float(chosen_words.mean()),
        "length_bias/mean_words_rejected": float(rejected_words.mean()),
    }
    if n and p < thresholds.significance and abs(accuracy - 0.5) >= thresholds.length_min_effect:
        side = "longer" if accuracy > 0.5 else "shorter"
        out.flags.append(
            make_flag(
                f"The chosen response is usually the {side} one",
                f"'prefer {side}' is right on {max(accuracy, 1 - accuracy):.1%} of {n} pairs of unequal length "
                f"(95% CI of 'prefer longer' [{low:.3f}, {high:.3f}], p = {p:.2g}); mean words chosen "
                f"{chosen_words.mean():.1f} vs rejected {rejected_words.mean():.1f}. Without a consensus this "
                "mixes rater length bias with real quality differences; a reward model trained on it may "
                f"learn to prefer {side} answers.",
                "info",
            )
        )
    return out


def position_bias(ratings: Ratings, thresholds: AuditThresholds) -> RatingAudit:
    """P(the rater chose the response shown first), over ratings that record `shown_first`."""
    known = ratings.chose_first >= 0
    out = RatingAudit()
    n = int(known.sum())
    if n == 0:
        return out
    first = float(ratings.chose_first[known].sum())
    low, high = wilson_interval(first, n)
    _, p = proportion_z_test(first, n)
    share = first / n
    out.metrics = {
        "position_bias/n": n,
        "position_bias/share_chose_first": share,
        "position_bias/ci": _ci(low, high),
        "position_bias/p_value": p,
    }
    z = (share - 0.5) / math.sqrt(0.25 / n)
    if (
        abs(z) >= bonferroni_z(NUM_PANEL_TESTS, thresholds.significance)
        and abs(share - 0.5) >= thresholds.position_min_effect
    ):
        out.flags.append(
            make_flag(
                "Position bias: raters favour the response shown " + ("first" if share > 0.5 else "second"),
                f"the first-shown response was chosen in {share:.1%} of {n} ratings (95% CI [{low:.3f}, {high:.3f}], "
                f"p = {p:.2g}); randomise the presentation order, or balance it per pair.",
            )
        )
    return out


# ----------------------------------------------------------------------------- annotators


@dataclass(frozen=True)
class _Consensus:
    """Per-rating comparison with the consensus of the others (arrays are (R,))."""

    has_others: np.ndarray  # bool: someone else (another rater, or another group) rated the item
    agree: np.ndarray  # float: 1/0 agreement with the others' winner, NaN when none or split
    soft_agree: np.ndarray  # float: expected agreement v q + (1 - v)(1 - q), NaN when no others
    longer_log_odds: (
        np.ndarray
    )  # float: the others' log-odds that the longer wins (prior 0.5), NaN if none/equal


def _consensus(ratings: Ratings, log_odds: np.ndarray, num_others: np.ndarray) -> _Consensus:
    has_others = num_others > 0
    decided = has_others & (np.abs(log_odds) > 1e-9)  # split others (log-odds 0, up to rounding): no winner
    says_a = log_odds > 0
    agree = np.where(decided, (ratings.votes == 1) == says_a, np.nan)
    q = 1 / (1 + np.exp(-log_odds))
    soft = np.where(has_others, ratings.votes * q + (1 - ratings.votes) * (1 - q), np.nan)
    longer_log_odds = np.where(has_others, log_odds * _longer_sign(ratings), np.nan)
    return _Consensus(has_others, agree.astype(np.float64), soft, longer_log_odds)


def _longer_sign(ratings: Ratings) -> np.ndarray:
    """(R,) +1 when the item's "a" is the longer response, -1 when "b" is, NaN for equal lengths:
    turns log-odds of "a wins" into log-odds of "the longer wins"."""
    sign = np.sign(ratings.a_words - ratings.b_words).astype(np.float64)
    return np.where(sign == 0, np.nan, sign)


def _length_excess(
    ratings: Ratings, consensus: _Consensus, evidence: np.ndarray, flips: np.ndarray, mine: np.ndarray
) -> LengthExcess:
    """`length_excess` of the ratings `mine` against the consensus, with P(longer is better) fitted to
    the other ratings (those outside `mine`), so a biased rater or group does not set its own baseline."""
    others = ~mine
    prior = longer_prior(ratings.item_index[others], (evidence * _longer_sign(ratings))[others])
    log_odds = math.log(prior / (1 - prior)) + consensus.longer_log_odds[mine]
    return length_excess(ratings.chose_longer[mine], log_odds, flips[mine])


def _relative_position(ratings: Ratings, annotator_index: np.ndarray) -> np.ndarray:
    """(R,) order / session_length, session_length = the rater's largest order + 1; NaN if unknown."""
    order = ratings.order
    largest = np.full(annotator_index.max() + 1, np.nan)
    known = ~np.isnan(order)
    if known.any():
        np.fmax.at(largest, annotator_index[known], order[known])
    return order / (largest[annotator_index] + 1)


def _fatigue_bins(position: np.ndarray, soft: np.ndarray) -> list[float | None]:
    bins = np.minimum((position * FATIGUE_BINS).astype(np.int64), FATIGUE_BINS - 1)
    return [
        _nan_to_none(float(soft[bins == b].mean())) if (bins == b).any() else None
        for b in range(FATIGUE_BINS)
    ]


def _annotator_index(annotators: list[str]) -> tuple[list[str], np.ndarray]:
    """Sorted distinct ids, and each rating's index into them ((R,) int64)."""
    names, index = np.unique(np.array(annotators), return_inverse=True)
    return [str(name) for name in names], index.reshape(-1)


def annotator_audit(
    ratings: Ratings, thresholds: AuditThresholds, num_bootstrap: int = 1000, seed: int = 0
) -> RatingAudit:
    """Agreement, flip rates, fatigue and length bias per annotator, and per group; see the module
    docstring. Needs an `annotator` on every rating (`audit.py` passes the rows that have one);
    groups are audited over the ratings that have an `annotator_group`."""
    if not ratings.has_annotators:
        raise ValueError("annotator_audit needs an annotator id on every rating (the 'annotator' column).")
    rng = np.random.default_rng(seed)
    annotators = [str(a) for a in ratings.annotators]  # all set: checked above
    names, annotator_index = _annotator_index(annotators)
    result = dawid_skene(ratings.item_index.tolist(), annotators, ratings.votes.tolist())
    out = RatingAudit()
    num_overlap_items = int((np.bincount(ratings.item_index) >= 2).sum())
    out.metrics.update(
        {
            "agreement/num_annotators": len(names),
            "agreement/num_items": len(ratings.items),
            "agreement/num_overlap_items": num_overlap_items,
            "agreement/krippendorff_alpha": _nan_to_none(
                krippendorff_alpha_binary(ratings.item_index, ratings.votes)
            ),
            "agreement/ds_prior": result.prior,
            "agreement/ds_iterations": result.iterations,
            "agreement/ds_converged": result.converged,
        }
    )
    _, num_others = consensus_log_odds(ratings.item_index, np.zeros(len(ratings)), annotator_index)
    if not (num_others > 0).any():
        _no_overlap(out, ratings, names, annotator_index, num_overlap_items)
        return out
    evidence = vote_log_odds(annotators, ratings.votes, result.flip_rate)
    consensus = _consensus(ratings, *consensus_log_odds(ratings.item_index, evidence, annotator_index))
    position = _relative_position(ratings, annotator_index)
    flips = np.array([result.flip_rate[a] for a in annotators])  # (R,) the rater's flip rate
    _per_annotator(
        out,
        ratings,
        names,
        annotator_index,
        result.flip_rate,
        _RaterEvidence(consensus, evidence, flips, position),
        thresholds,
        num_bootstrap,
        rng,
    )
    _pooled_fatigue(out, consensus, position, thresholds, num_bootstrap, rng)
    alpha = out.metrics["agreement/krippendorff_alpha"]
    if alpha is not None:
        out.flags.append(
            make_flag(
                f"Inter-annotator agreement: Krippendorff's alpha = {alpha:.3f}",
                f"over {num_overlap_items} items rated by at least two annotators (1 = perfect, 0 = chance); the "
                f"Dawid-Skene fit {'converged' if result.converged else 'did NOT converge'} in {result.iterations} iterations.",
                "info",
            )
        )
    grouped = np.array([g is not None for g in ratings.groups])
    if len({g for g in ratings.groups if g is not None}) >= 2:
        if not grouped.all():
            out.flags.append(
                make_flag(
                    f"annotator_group on {int(grouped.sum())} of {len(ratings)} annotated rows",
                    "the group statistics use only the rows that name a group.",
                    "info",
                )
            )
        _groups(out, ratings.subset(grouped), result, thresholds, num_bootstrap, rng)
    return out


def _no_overlap(
    out: RatingAudit, ratings: Ratings, names: list[str], annotator_index: np.ndarray, num_overlap_items: int
) -> None:
    """No item rated by two annotators: every per-annotator estimate is None, with a note saying why."""
    repeats = (
        f" ({num_overlap_items} items were rated twice, but each time by the same annotator: a rater's repeat "
        "rating is not a second opinion)"
        if num_overlap_items
        else ""
    )
    out.flags.append(
        make_flag(
            "No item was rated by two annotators: agreement, flip rates, fatigue and per-annotator length bias "
            "cannot be estimated",
            f"{len(ratings)} ratings of {len(ratings.items)} items by {len(names)} annotators{repeats}. Flip "
            "rates need items rated by several annotators (the same pair_id, or the same prompt and responses, "
            "on rows of different annotators); have a share of items (e.g. 20%) rated by several annotators.",
            "info",
        )
    )
    for j, name in enumerate(names):
        key = f"annotators/{name}"
        out.metrics[f"{key}/n"] = int((annotator_index == j).sum())
        out.metrics[f"{key}/n_overlap"] = 0
        for metric in ("agreement", "flip_rate", "fatigue_slope", "length_bias"):
            out.metrics[f"{key}/{metric}"] = None


@dataclass(frozen=True)
class _RaterEvidence:
    """What the per-annotator measures read, per rating ((R,) arrays)."""

    consensus: _Consensus
    evidence: np.ndarray  # each vote's log-odds that "a" wins (`vote_log_odds`)
    flips: np.ndarray  # the rater's Dawid-Skene flip rate
    position: np.ndarray  # relative position in the rater's session, NaN when unknown


def _per_annotator(
    out: RatingAudit,
    ratings: Ratings,
    names: list[str],
    annotator_index: np.ndarray,
    flip_rate: dict[str, float],
    per_rating: _RaterEvidence,
    thresholds: AuditThresholds,
    num_bootstrap: int,
    rng: np.random.Generator,
) -> None:
    """annotators/<id>/... metrics, flags and plot series."""
    consensus, position = per_rating.consensus, per_rating.position
    chose_longer = ratings.chose_longer
    testable = [
        j
        for j in range(len(names))
        if ((annotator_index == j) & consensus.has_others).sum() >= thresholds.min_overlap_ratings
    ]
    z = bonferroni_z(len(testable), thresholds.significance)
    plots: dict[str, Any] = {"annotators": names, "flip_rate": [], "fatigue_bins": {}, "fatigue_fit": {}}
    for j, name in enumerate(names):
        mine = annotator_index == j
        overlap = mine & consensus.has_others
        decided = overlap & ~np.isnan(consensus.agree)
        agreed = float(consensus.agree[decided].sum())
        timed = overlap & ~np.isnan(position)
        slope, se, intercept = slope_with_se(position[timed], consensus.soft_agree[timed], num_bootstrap, rng)
        excess = _length_excess(ratings, consensus, per_rating.evidence, per_rating.flips, mine)
        num_decided = int(decided.sum())
        low, high = wilson_interval(agreed, num_decided) if num_decided else (math.nan, math.nan)
        key = f"annotators/{name}"
        out.metrics.update(
            {
                f"{key}/n": int(mine.sum()),
                f"{key}/n_overlap": int(overlap.sum()),
                f"{key}/group": Counter(
                    g for g, m in zip(ratings.groups, mine, strict=True) if m
                ).most_common(1)[0][0],
                f"{key}/agreement": _nan_to_none(agreed / decided.sum()) if decided.any() else None,
                f"{key}/agreement_ci": _ci(low, high),
                f"{key}/flip_rate": _nan_to_none(flip_rate[name]),
                f"{key}/fatigue_slope": _nan_to_none(slope),
                f"{key}/fatigue_ci": _ci(slope - Z95 * se, slope + Z95 * se),
                f"{key}/length_bias": _nan_to_none(excess.excess),
                f"{key}/length_bias_ci": _ci(
                    excess.excess - Z95 * excess.se, excess.excess + Z95 * excess.se
                ),
                f"{key}/share_chosen_longer": _nan_to_none(float(np.nanmean(chose_longer[mine])))
                if (~np.isnan(chose_longer[mine])).any()
                else None,
            }
        )
        if (ratings.chose_first[mine] >= 0).any():
            out.metrics[f"{key}/share_chose_first"] = float(
                ratings.chose_first[mine][ratings.chose_first[mine] >= 0].mean()
            )
        plots["flip_rate"].append(_nan_to_none(flip_rate[name]))
        if timed.any():
            plots["fatigue_bins"][name] = _fatigue_bins(position[timed], consensus.soft_agree[timed])
            plots["fatigue_fit"][name] = [_nan_to_none(intercept), _nan_to_none(slope)]
        if j in testable:
            _annotator_flags(out, name, flip_rate[name], int(overlap.sum()), slope, se, excess, z, thresholds)
    out.plots.update(plots)


def _annotator_flags(
    out: RatingAudit,
    name: str,
    flip: float,
    n_overlap: int,
    slope: float,
    se: float,
    excess: LengthExcess,
    z: float,
    thresholds: AuditThresholds,
) -> None:
    if flip >= thresholds.max_flip_rate:
        out.flags.append(
            make_flag(
                f"Annotator {name} is unreliable: estimated flip rate {flip:.2f}",
                f"Dawid-Skene error rate {flip:.3f} >= {thresholds.max_flip_rate} from {n_overlap} ratings of items "
                "others also rated; consider down-weighting or re-rating their items.",
            )
        )
    if not math.isnan(slope) and slope + z * se < 0 and slope <= -thresholds.fatigue_min_drop:
        out.flags.append(
            make_flag(
                f"Annotator {name} shows fatigue: agreement falls by {-slope:.2f} over a session",
                f"slope of agreement with the others' consensus on position in session {slope:.3f} (95% CI "
                f"[{slope - Z95 * se:.3f}, {slope + Z95 * se:.3f}]; below 0 even at the corrected z = {z:.2f}) over "
                f"{n_overlap} overlap ratings; shorten sessions or add breaks.",
            )
        )
    if _length_biased(excess, z, thresholds):
        out.flags.append(
            make_flag(
                f"Annotator {name} is length-biased", _length_evidence(excess, z, "the others' ratings")
            )
        )


def _length_biased(excess: LengthExcess, z: float, thresholds: AuditThresholds) -> bool:
    return (
        not math.isnan(excess.excess)
        and excess.excess - z * excess.se > 0
        and excess.excess >= thresholds.length_min_excess
    )


def _length_evidence(excess: LengthExcess, z: float, reference: str) -> str:
    return (
        f"chose the longer response on {excess.chose_longer:.1%} of {excess.num} ratings of pairs of unequal "
        f"length, where an unbiased rater with the same flip rate would have chosen it on "
        f"{excess.expected_longer:.1%} given {reference}: {excess.excess:.1%} of the verdicts go to the longer "
        f"response whatever its quality (95% CI [{excess.excess - Z95 * excess.se:.3f}, "
        f"{excess.excess + Z95 * excess.se:.3f}]; above 0 at corrected z = {z:.2f})."
    )


def _pooled_fatigue(
    out: RatingAudit,
    consensus: _Consensus,
    position: np.ndarray,
    thresholds: AuditThresholds,
    num_bootstrap: int,
    rng: np.random.Generator,
) -> None:
    timed = consensus.has_others & ~np.isnan(position)
    if not timed.any():
        return
    slope, se, intercept = slope_with_se(position[timed], consensus.soft_agree[timed], num_bootstrap, rng)
    z = bonferroni_z(NUM_PANEL_TESTS, thresholds.significance)
    out.metrics.update(
        {
            "fatigue/pooled_slope": _nan_to_none(slope),
            "fatigue/pooled_ci": _ci(slope - Z95 * se, slope + Z95 * se),
            "fatigue/n": int(timed.sum()),
            # the drop over a session this test flags 80% of the time (its power statement)
            "fatigue/detectable_drop": _nan_to_none(
                detectable_effect(se, max(z * se, thresholds.fatigue_min_drop))
            ),
        }
    )
    out.plots["fatigue_pooled"] = {
        "bins": _fatigue_bins(position[timed], consensus.soft_agree[timed]),
        "fit": [_nan_to_none(intercept), _nan_to_none(slope)],
    }
    if not math.isnan(slope) and slope + z * se < 0 and slope <= -thresholds.fatigue_min_drop:
        out.flags.append(
            make_flag(
                f"The panel as a whole tires: agreement falls by {-slope:.2f} over a session",
                f"pooled slope {slope:.3f} (95% CI [{slope - Z95 * se:.3f}, {slope + Z95 * se:.3f}]) over "
                f"{int(timed.sum())} overlap ratings.",
            )
        )


def _groups(
    out: RatingAudit,
    ratings: Ratings,
    result: DawidSkeneResult,
    thresholds: AuditThresholds,
    num_bootstrap: int,
    rng: np.random.Generator,
) -> None:
    """groups/<name>/... against the other groups' consensus, and the divergence test, over `ratings`
    (each with an annotator and a group); flip rates from the Dawid-Skene fit `result`."""
    annotators = [str(a) for a in ratings.annotators]
    names, annotator_index = _annotator_index(annotators)
    evidence = vote_log_odds(annotators, ratings.votes, result.flip_rate)
    flips = np.array([result.flip_rate[a] for a in annotators])  # (R,)
    group_names = sorted({str(g) for g in ratings.groups})
    group_index = np.array([group_names.index(str(g)) for g in ratings.groups])
    other = _consensus(ratings, *consensus_log_odds(ratings.item_index, evidence, group_index))
    rater_group = np.zeros(len(names), dtype=np.int64)
    for j in range(len(names)):
        rater_group[j] = np.bincount(group_index[annotator_index == j]).argmax()
    z = bonferroni_z(len(group_names), thresholds.significance)
    chose_longer = ratings.chose_longer
    plots: dict[str, list] = {
        "groups": group_names,
        "share_chosen_longer": [],
        "length_bias": [],
        "length_bias_se": [],
    }
    for g, name in enumerate(group_names):
        mine = group_index == g
        decided = mine & ~np.isnan(other.agree)
        excess = _length_excess(ratings, other, evidence, flips, mine)
        group_flips = [result.flip_rate[names[j]] for j in range(len(names)) if rater_group[j] == g]
        share_longer = (
            float(np.nanmean(chose_longer[mine])) if (~np.isnan(chose_longer[mine])).any() else math.nan
        )
        key = f"groups/{name}"
        out.metrics.update(
            {
                f"{key}/n": int(mine.sum()),
                f"{key}/num_annotators": len(group_flips),
                f"{key}/n_overlap_other_groups": int((mine & other.has_others).sum()),
                f"{key}/agreement_with_other_groups": _nan_to_none(float(other.agree[decided].mean()))
                if decided.any()
                else None,
                f"{key}/mean_flip_rate": _nan_to_none(float(np.mean(group_flips))) if group_flips else None,
                f"{key}/share_chosen_longer": _nan_to_none(share_longer),
                f"{key}/length_bias": _nan_to_none(excess.excess),
                f"{key}/length_bias_ci": _ci(
                    excess.excess - Z95 * excess.se, excess.excess + Z95 * excess.se
                ),
            }
        )
        plots["share_chosen_longer"].append(_nan_to_none(share_longer))
        plots["length_bias"].append(_nan_to_none(excess.excess))
        plots["length_bias_se"].append(_nan_to_none(excess.se))
        if _length_biased(excess, z, thresholds):
            out.flags.append(
                make_flag(
                    f"Group {name} is length-biased", _length_evidence(excess, z, "the other groups' ratings")
                )
            )
    out.plots["group_length"] = plots
    rater_flips = np.array([result.flip_rate[name] for name in names])  # (A,)
    divergence = group_divergence(
        ratings.item_index, ratings.votes, annotator_index, rater_group, rater_flips, num_bootstrap, rng
    )
    _divergence(out, divergence, thresholds, num_bootstrap)


def _divergence(
    out: RatingAudit, divergence: GroupDivergence, thresholds: AuditThresholds, num_bootstrap: int
) -> None:
    z = NormalDist().inv_cdf(
        1 - thresholds.significance / NUM_PANEL_TESTS
    )  # the permutation test is one-sided
    spread = divergence.null_std
    detectable = detectable_effect(spread, max(z * spread, thresholds.divergence_min_effect))
    out.metrics.update(
        {
            "group_divergence/within_agreement": _nan_to_none(divergence.within),
            "group_divergence/between_agreement": _nan_to_none(divergence.between),
            "group_divergence/within_expected": _nan_to_none(divergence.within_expected),
            "group_divergence/between_expected": _nan_to_none(divergence.between_expected),
            "group_divergence/statistic": _nan_to_none(divergence.statistic),
            "group_divergence/p_value": _nan_to_none(divergence.p_value),
            "group_divergence/num_within_pairs": divergence.num_within,
            "group_divergence/num_between_pairs": divergence.num_between,
            # the excess agreement within groups this test flags 80% of the time (its power statement)
            "group_divergence/detectable_excess": _nan_to_none(detectable),
        }
    )
    if (
        not math.isnan(divergence.p_value)
        and divergence.p_value < thresholds.significance / NUM_PANEL_TESTS
        and divergence.statistic >= thresholds.divergence_min_effect
    ):
        out.flags.append(
            make_flag(
                "Annotator groups prefer systematically different responses",
                f"two ratings of one item agree {divergence.within:.1%} of the time when both raters share a group "
                f"({divergence.num_within} pairs; their flip rates predict {divergence.within_expected:.1%}) but "
                f"{divergence.between:.1%} across groups ({divergence.num_between} pairs; predicted "
                f"{divergence.between_expected:.1%}): excess agreement within groups {divergence.statistic:.3f}, "
                f"permutation p = {divergence.p_value:.3g} ({num_bootstrap} relabellings of annotators' groups). "
                "Check the guidelines each group follows.",
            )
        )


def audit_limits(audit: dict[str, Any]) -> list[str]:
    """What the audit could not see, in sentences for audit.json and report.html: the power of the fatigue and
    group tests where they flagged nothing, and the biases that comparing raters with each other cannot show."""
    findings = " ".join(flag["finding"] for flag in audit.get("flags", []))
    limits = []
    drop, slope, ci = (
        audit.get(k) for k in ("fatigue/detectable_drop", "fatigue/pooled_slope", "fatigue/pooled_ci")
    )
    if drop is not None and slope is not None and "tires" not in findings:
        limits.append(
            f"Fatigue: over the {audit['fatigue/n']} ratings of items someone else also rated, the pooled test "
            f"flags a fall in agreement of {drop:.2f} or more over a session 80% of the time; it measured "
            f"{slope:.3f} (95% CI [{ci[0]:.3f}, {ci[1]:.3f}]), so a smaller fall is not ruled out. More items "
            "rated twice, or longer sessions, narrow the test."
        )
    excess, statistic = (
        audit.get("group_divergence/detectable_excess"),
        audit.get("group_divergence/statistic"),
    )
    if excess is not None and statistic is not None and "groups prefer" not in findings:
        limits.append(
            f"Rater groups: the divergence test flags groups whose raters agree among themselves {excess:.3f} or "
            f"more beyond what they agree with the other groups 80% of the time; it measured {statistic:.3f} "
            f"(p = {audit['group_divergence/p_value']:.2g}, {audit['group_divergence/num_between_pairs']} pairs of "
            "ratings across groups), so a smaller departure is not ruled out. Items rated by raters of several "
            "groups narrow the test."
        )
    limits.append(
        "Shared biases: agreement, flip rates, fatigue and the group test compare raters with each other, so a "
        "bias that every rater shares leaves them unchanged. The position test (against 50%) does see a "
        "position bias all raters share; a length preference all raters share shows only as "
        "length_bias/share_chosen_longer, which is no bias by itself (longer answers may be better). To see "
        "shared biases, rate a small subset with gold or adjudicated labels and compare the panel with it."
    )
    return limits
