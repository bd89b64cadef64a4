"""One training pair per rated item, from repeated ratings; and the label-flip rate of a rating set.

Input: validated rating rows (`parse_pairs(load_rows(path)).examples`, or plain dicts, validated
here), several ratings per item possible. Items, the canonical response "a" and votes are those
of `preftune.feedback.ratings` (item = `pair_id`, else the prompt and the two responses). Output:
one row per item, in order of first appearance:

    {"prompt", "chosen", "rejected", "weight", "chosen_probability", "num_ratings"[, "pair_id"]}

- `chosen` is the response the aggregate prefers, `rejected` the other one.
- `chosen_probability` (the soft label, `preftune.data.formats.SOFT_LABEL`) is p = P(chosen is
  truly preferred), in [0.5, 1]. The reward-model and DPO trainers read it: their loss becomes
  the expected loss when the pair's true label is drawn from p, p * loss(chosen wins) +
  (1 - p) * loss(rejected wins), i.e. per-pair label smoothing 1 - p.
- `weight` is 2p - 1, in [0, 1]: the expected signed label (+1 when chosen truly wins, -1 when
  not), E[y] = p - (1 - p). A loss that takes hard labels (ipo, hinge, ...) weighted by it follows
  the posterior-expected gradient to first order in the margin (exactly, for the logistic loss,
  at margin 0), and a coin-flip item (p = 0.5) gets weight 0, so it pulls neither way. The
  posterior itself as a weight would not: a coin flip would still count half, always towards
  the response that happens to be called chosen. Both columns encode the same uncertainty: train
  with the soft label (sigmoid, cdpo, sigmoid_norm, simpo, the reward model) and each item's
  optimum is calibrated (margin logit(p)); keeping the weight as well leaves that optimum where it
  is but lets uncertain items pull less on the shared parameters (they are counted down twice).

Methods:
- `majority`: p = the share of the item's ratings that chose the winner; a single rating gives
  p = 1. Ties (as many ratings each way) are dropped and counted in `counts["ties_dropped"]`.
- `dawid_skene`: p = the Dawid-Skene posterior of the winner (`preftune.feedback.dawid_skene`,
  symmetric one-coin model), which trusts reliable raters more and turns a single rating into
  a soft label by its rater's estimated flip rate (p = 1 - f: the class prior is 0.5, so it does
  not depend on which response sorts first). Needs an `annotator` on every rating and at
  least one item rated twice. An exact posterior of 0.5 is a tie: dropped and counted.

`estimate_label_noise` gives the ratings-weighted mean Dawid-Skene flip rate of a rating set,
which the trainers' `label_noise="auto"` uses as --label_smoothing.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from preftune.data import PairExample, load_rows, parse_pairs
from preftune.data.formats import SOFT_LABEL
from preftune.data.io import RowTable, write_jsonl
from preftune.feedback.dawid_skene import DawidSkeneResult, dawid_skene
from preftune.feedback.ratings import Ratings, ratings_from_rows, response_text

logger = logging.getLogger(__name__)

AggregateMethod = Literal["majority", "dawid_skene"]
AGGREGATE_METHODS: tuple[str, ...] = get_args(AggregateMethod)


def aggregate_ratings(
    rows: Sequence[PairExample] | Sequence[Mapping[str, Any]], method: AggregateMethod
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One row per item (module docstring) and counts: "ratings", "items", "multiply_rated" (items
    with two or more ratings), "ties_dropped" and "rows" (written). Rows as dicts are validated
    first (row numbers from 1)."""
    if method not in AGGREGATE_METHODS:
        raise ValueError(f"Unknown aggregation method {method!r}; choose one of {AGGREGATE_METHODS}.")
    pairs = _as_pairs(rows)
    ratings = ratings_from_rows(pairs)
    num_ratings = np.bincount(ratings.item_index, minlength=len(ratings.items))  # (I,)
    if method == "majority":
        prob_a = np.bincount(ratings.item_index, ratings.votes, len(ratings.items)) / num_ratings  # (I,)
    else:
        result = _dawid_skene(ratings)
        prob_a = np.empty(len(ratings.items))
        prob_a[np.asarray(result.items, dtype=np.int64)] = result.posterior  # DS keys are our item indices
    first = {}  # item -> its first rating, which gives the prompt and the responses' form
    for pair, index in zip(pairs, ratings.item_index.tolist(), strict=True):
        first.setdefault(index, pair)
    out: list[dict[str, Any]] = []
    for index, pair in sorted(first.items()):
        if prob_a[index] == 0.5:
            continue
        a_is_chosen = response_text(pair.chosen) < response_text(pair.rejected)  # a = the smaller text
        a, b = (pair.chosen, pair.rejected) if a_is_chosen else (pair.rejected, pair.chosen)
        p = float(max(prob_a[index], 1.0 - prob_a[index]))
        row = {
            "prompt": pair.prompt,
            "chosen": a if prob_a[index] > 0.5 else b,
            "rejected": b if prob_a[index] > 0.5 else a,
            "weight": 2.0 * p - 1.0,
            SOFT_LABEL: p,
            "num_ratings": int(num_ratings[index]),
        }
        if "pair_id" in pair.meta:
            row["pair_id"] = pair.meta["pair_id"]
        out.append(row)
    counts = {
        "ratings": len(ratings),
        "items": len(ratings.items),
        "multiply_rated": int((num_ratings >= 2).sum()),
        "ties_dropped": len(ratings.items) - len(out),
        "rows": len(out),
    }
    logger.info("Aggregated by %s: %s.", method, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out, counts


def write_aggregated(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write aggregated rows as JSON lines (a pairwise dataset every trainer reads); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, (dict(row) for row in rows))
    return path


@dataclass(frozen=True)
class LabelNoiseEstimate:
    """The Dawid-Skene flip rates of a rating set, and their ratings-weighted mean."""

    flip_rate: float
    """Mean estimated P(verdict != truth) over ratings: sum_j n_j * f_j / sum_j n_j."""
    per_annotator: dict[str, float]
    """Annotator id -> estimated flip rate f_j."""
    num_ratings: int
    num_items: int
    num_multiply_rated: int
    iterations: int
    converged: bool

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (for summary.json)."""
        return asdict(self)


def estimate_label_noise(rows: Sequence[PairExample] | Sequence[Mapping[str, Any]]) -> LabelNoiseEstimate:
    """Fit Dawid-Skene to the ratings and average the annotators' flip rates over the ratings.

    Raises ValueError when a rating has no `annotator` or no item is rated twice (the flip
    rates cannot be told apart from the items' difficulty then).
    """
    ratings = ratings_from_rows(_as_pairs(rows))
    result = _dawid_skene(ratings)
    per_rating = Counter(a for a in ratings.annotators if a is not None)
    total = sum(per_rating.values())
    flip_rate = sum(n * result.flip_rate[name] for name, n in per_rating.items()) / total
    num_ratings = np.bincount(ratings.item_index, minlength=len(ratings.items))
    return LabelNoiseEstimate(
        flip_rate=float(flip_rate),
        per_annotator=dict(result.flip_rate),
        num_ratings=len(ratings),
        num_items=len(ratings.items),
        num_multiply_rated=int((num_ratings >= 2).sum()),
        iterations=result.iterations,
        converged=result.converged,
    )


def parse_label_noise(value: str) -> float | Literal["auto"] | None:
    """A `label_noise` setting: "none" -> None, "auto" -> "auto", a number in [0, 0.5) -> that float."""
    if value in ("none", "auto"):
        return None if value == "none" else "auto"
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate < 0.5:
        raise ValueError(
            f"label_noise must be 'none', 'auto' or a flip rate in [0, 0.5), got {value!r}. 'auto' estimates "
            "it from the training ratings (Dawid-Skene on the annotator and pair_id columns)."
        )
    return rate


def resolve_label_smoothing(
    label_noise: str, label_smoothing: float, source: str, split: str, skip_invalid: bool = False
) -> tuple[float, dict[str, Any] | None]:
    """The label smoothing a trainer uses, and a record of where it came from (None for "none").

    "none" keeps `label_smoothing`; a number is used as it is; "auto" reads the ratings of `source`
    (split `split`), estimates their flip rate with `estimate_label_noise` and logs it.
    """
    noise = parse_label_noise(label_noise)
    if noise is None:
        return label_smoothing, None
    if label_smoothing:
        raise ValueError(
            f"label_noise {label_noise!r} sets the label smoothing, but label_smoothing {label_smoothing} is set "
            "too; give only one of them."
        )
    if noise != "auto":
        return noise, {"label_noise": label_noise, "label_smoothing": noise}
    pairs = parse_pairs(load_rows(source, split), skip_invalid=skip_invalid).examples
    try:
        estimate = estimate_label_noise(pairs)
    except ValueError as error:
        raise ValueError(
            f"label_noise 'auto' on {source}: {error} 'auto' needs the raw ratings (several per pair, each with "
            "its annotator); aggregated files (aggregate_ratings output) carry no annotator column. Train on "
            "the raw ratings, or set --label_noise to a number (e.g. 0.1)."
        ) from error
    if not 0.0 <= estimate.flip_rate < 0.5:
        raise ValueError(
            f"label_noise 'auto': the estimated flip rate of {source} is {estimate.flip_rate:.3f}, not in [0, 0.5): "
            "the ratings agree with each other no better than chance. Check the data, or set label_noise to a number."
        )
    logger.info(
        "label_noise auto: estimated flip rate %.4f over %d ratings of %d items (%d rated twice or more; "
        "Dawid-Skene, %d iterations%s); using it as label_smoothing.",
        estimate.flip_rate,
        estimate.num_ratings,
        estimate.num_items,
        estimate.num_multiply_rated,
        estimate.iterations,
        "" if estimate.converged else ", not converged",
    )
    return estimate.flip_rate, {
        "label_noise": "auto",
        "label_smoothing": estimate.flip_rate,
        **estimate.summary(),
    }


def _dawid_skene(ratings: Ratings) -> DawidSkeneResult:
    """Dawid-Skene on `ratings`, after checking that it can identify the flip rates."""
    if not ratings.has_annotators:
        missing = next(
            row for row, name in zip(ratings.rows.tolist(), ratings.annotators, strict=True) if name is None
        )
        raise ValueError(
            f"Dawid-Skene needs an 'annotator' id on every rating; row {missing} has none. Add the column, "
            "or aggregate with 'majority'."
        )
    if np.bincount(ratings.item_index).max() < 2:
        raise ValueError(
            f"Dawid-Skene needs items rated more than once (the same pair_id, or the same prompt and "
            f"responses, on several rows), but each of the {len(ratings.items)} items has one rating."
        )
    annotators = [name for name in ratings.annotators if name is not None]
    result = dawid_skene(ratings.item_index.tolist(), annotators, ratings.votes.tolist())
    if not result.converged:
        logger.warning("Dawid-Skene stopped after %d iterations without converging.", result.iterations)
    return result


def _as_pairs(rows: Sequence[PairExample] | Sequence[Mapping[str, Any]]) -> list[PairExample]:
    if not rows:
        raise ValueError("No ratings to aggregate: the rows are empty.")
    if all(isinstance(row, PairExample) for row in rows):
        return list(rows)  # type: ignore[arg-type]
    table = RowTable("<ratings>", [dict(row) for row in rows], list(range(1, len(rows) + 1)))  # type: ignore[arg-type]
    return parse_pairs(table).examples
