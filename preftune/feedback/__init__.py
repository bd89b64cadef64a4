"""Feedback quality: audits of preference ratings, annotator models and aggregation.

    from preftune.feedback import AuditConfig, run_audit, aggregate_ratings, dawid_skene
    run_audit(AuditConfig(dataset="pairs.jsonl", output_dir="runs/audit"))  # audit.json, report.html
    rows, counts = aggregate_ratings(pairs, "dawid_skene")  # one soft-labelled pair per item

See docs/feedback.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from preftune.feedback.aggregate import (
    AGGREGATE_METHODS,
    LabelNoiseEstimate,
    aggregate_ratings,
    estimate_label_noise,
    parse_label_noise,
    resolve_label_smoothing,
    write_aggregated,
)
from preftune.feedback.agreement import krippendorff_alpha_binary
from preftune.feedback.config import AuditConfig
from preftune.feedback.dawid_skene import DawidSkeneResult, dawid_skene
from preftune.feedback.rater_audit import AuditThresholds
from preftune.feedback.ratings import Ratings, ratings_from_rows

if TYPE_CHECKING:
    from preftune.feedback.audit import run_audit


def __getattr__(name: str) -> Any:
    """`run_audit` loads preftune/feedback/audit.py (its report draws with matplotlib) on first use."""
    if name == "run_audit":
        return importlib.import_module("preftune.feedback.audit").run_audit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATE_METHODS",
    "AuditConfig",
    "AuditThresholds",
    "DawidSkeneResult",
    "LabelNoiseEstimate",
    "Ratings",
    "aggregate_ratings",
    "dawid_skene",
    "estimate_label_noise",
    "krippendorff_alpha_binary",
    "parse_label_noise",
    "ratings_from_rows",
    "resolve_label_smoothing",
    "run_audit",
    "write_aggregated",
]
