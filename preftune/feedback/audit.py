"""`preftune audit DATA --output_dir OUT`: audit a pairwise preference dataset, with or without ratings metadata.

Writes into `output_dir`:
- `audit.json`: flat keys ("dataset/...", "length_bias/...", "position_bias/...", "agreement/...",
  "fatigue/...", "annotators/<id>/...", "groups/<name>/...", "group_divergence/...") and `flags`,
  a list of {"finding", "evidence", "severity": "warning" | "info"};
- `report.html`: the same as tables, with plots embedded (flip rates, fatigue curves, length
  bias by group).

Hygiene (`hygiene.py`) and length bias run on any pairwise data; position bias needs
`shown_first`; agreement, flip rates, fatigue and per-annotator length bias need `annotator`
(and items rated by several annotators: `pair_id`, or the same prompt and responses);
group statistics need `annotator_group`. When only some rows name an annotator (or a group),
those statistics use those rows, and an "info" flag says how many. What each measure means:
`rater_audit.py`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from preftune.data import report_skips
from preftune.feedback.audit_report import write_audit_report
from preftune.feedback.config import AuditConfig
from preftune.feedback.hygiene import hygiene_stats, load_audit_pairs, prompt_overlap
from preftune.feedback.rater_audit import (
    annotator_audit,
    audit_limits,
    length_bias,
    make_flag,
    position_bias,
)
from preftune.feedback.ratings import ratings_from_rows

logger = logging.getLogger(__name__)


def _hygiene_flags(stats: dict[str, Any], source: str) -> list[dict[str, str]]:
    """Warnings for each hygiene problem found (rows listed are the first few)."""
    checks = [
        ("ties", "tie_rows", "Ties: chosen identical to rejected", "they teach nothing; drop them"),
        (
            "empty_responses",
            "empty_rows",
            "Empty responses",
            "a dialogue ending with an empty assistant turn counts too; drop or re-collect them",
        ),
        (
            "exact_duplicates",
            "exact_duplicate_rows",
            "Exact duplicate rows",
            "the same annotator, prompt, chosen and rejected again; they count twice in training",
        ),
        (
            "contradictory_duplicates",
            "contradictory_rows",
            "Contradictory duplicates",
            "the same pair appears in both directions from one annotator (or in an anonymous dataset)",
        ),
        (
            "near_ties",
            "near_tie_rows",
            "Near ties",
            "chosen and rejected differ only in case, punctuation or spacing",
        ),
        (
            "truncated_responses",
            "truncated_rows",
            "Truncated responses",
            f"responses at the length cap of {stats.get('length_cap_words')} words that end mid-sentence",
        ),
    ]
    flags = []
    for key, rows_key, finding, explanation in checks:
        if stats[key]:
            flags.append(
                make_flag(
                    f"{finding}: {stats[key]}", f"{explanation}. First rows of {source}: {stats[rows_key]}."
                )
            )
    if stats["near_duplicates"]:
        flags.append(
            make_flag(
                f"Near duplicates: {stats['near_duplicates']}",
                f"rows of {source} equal to another row after lowercasing and removing punctuation and extra spaces.",
            )
        )
    if stats["num_skipped_invalid"]:
        flags.append(
            make_flag(
                f"Skipped {stats['num_skipped_invalid']} invalid rows",
                "--skip_invalid left them out of every statistic; see the log for the rows and reasons.",
            )
        )
    share = stats["unterminated_share"]
    if not math.isnan(share) and share > 0:
        flags.append(
            make_flag(
                f"{share:.1%} of responses end without terminal punctuation",
                f"{stats['unterminated_responses']} responses; no length cap detected"
                if stats["length_cap_words"] is None
                else f"{stats['unterminated_responses']} responses; {stats['truncated_responses']} of them at the "
                f"cap of {stats['length_cap_words']} words (counted as truncated)",
                "info",
            )
        )
    return flags


def _overlap_flags(overlap: dict[str, Any]) -> list[dict[str, str]]:
    flags = []
    if overlap["eval_prompt_overlap_rows"]:
        flags.append(
            make_flag(
                f"Train/eval prompt overlap: {overlap['eval_prompt_overlap_share']:.1%} of held-out rows",
                f"{overlap['eval_prompt_overlap_rows']} rows of {overlap['eval_source']} ({overlap['eval_prompt_overlap_distinct']} "
                f"distinct prompts) have a prompt that is also in the training data (after normalising); "
                f"{overlap['eval_pair_overlap_rows']} have the whole pair there too. First rows: "
                f"{overlap['eval_prompt_overlap_examples']}. Held-out scores on them measure memory, not generalisation.",
            )
        )
    return flags


def _json_ready(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def run_audit(config: AuditConfig) -> dict[str, Any]:
    """Audit `config.dataset`; writes audit.json and report.html into `config.output_dir` and returns
    what audit.json holds."""
    start = time.perf_counter()
    thresholds = config.thresholds
    data = load_audit_pairs(config.dataset, config.dataset_split, config.skip_invalid)
    if data.skipped:
        report_skips(data.source, data.skipped, data.num_rows)
    audit: dict[str, Any] = {"dataset/source": data.source}
    stats = hygiene_stats(data, thresholds.min_cap_count)
    flags = _hygiene_flags(stats, data.source)
    if config.eval_dataset:
        held_out = load_audit_pairs(config.eval_dataset, config.eval_dataset_split, config.skip_invalid)
        overlap = prompt_overlap(data, held_out)
        stats.update(overlap)
        flags += _overlap_flags(overlap)
    ratings = ratings_from_rows(data.pairs)
    annotated = np.array([name is not None for name in ratings.annotators], dtype=bool)  # (R,)
    audit.update({f"dataset/{key}": value for key, value in stats.items()})
    audit.update(
        {
            "dataset/num_items": len(ratings.items),
            "dataset/has_annotators": ratings.has_annotators,
            "dataset/num_annotated_rows": int(annotated.sum()),
            "dataset/has_groups": ratings.has_groups,
            "dataset/has_order": len(ratings) > 0 and bool((~np.isnan(ratings.order)).all()),
            "dataset/has_shown_first": bool((ratings.chose_first >= 0).any()),
        }
    )
    plots: dict[str, Any] = {}
    parts = [length_bias(ratings, thresholds), position_bias(ratings, thresholds)]
    if annotated.any():
        if not annotated.all():
            flags.append(
                make_flag(
                    f"annotator on {int(annotated.sum())} of {len(ratings)} rows",
                    "agreement, flip rates, fatigue and the group statistics use only the rows that name an "
                    "annotator; the other rows count in hygiene, length and position bias only.",
                    "info",
                )
            )
        annotated_ratings = ratings if annotated.all() else ratings.subset(annotated)
        parts.append(annotator_audit(annotated_ratings, thresholds, config.num_bootstrap, config.seed))
    for part in parts:
        audit.update(part.metrics)
        flags += part.flags
        plots.update(part.plots)
    audit = {key: _json_ready(value) for key, value in audit.items()}
    audit["dataset/wall_seconds"] = round(time.perf_counter() - start, 3)
    audit["flags"] = flags
    audit["limits"] = audit_limits(audit)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(audit, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_audit_report(audit, plots, out)
    num_warnings = sum(flag["severity"] == "warning" for flag in flags)
    logger.info(
        "Audited %s: %d rows, %d warnings, %d notes; wrote %s and %s.",
        data.source,
        data.num_rows,
        num_warnings,
        len(flags) - num_warnings,
        out / "audit.json",
        out / "report.html",
    )
    return audit
