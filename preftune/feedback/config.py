"""The flags of `preftune audit` (AuditConfig).

A plain dataclass that imports neither torch nor matplotlib, so `preftune audit --help` stays fast;
preftune/feedback/audit.py uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preftune.feedback.rater_audit import AuditThresholds


@dataclass
class AuditConfig:
    """`preftune audit --dataset PAIRS --output_dir OUT [--eval_dataset HELD_OUT]`."""

    dataset: str = ""
    """Pairwise data to audit: a JSON/JSONL(.gz)/Parquet/CSV file, a saved dataset folder or a hub name."""
    dataset_split: str = "train"
    """Split of --dataset (files have one split, 'train'; slices such as 'train[:80%]' work)."""
    eval_dataset: str = ""
    """Held-out pairwise data; when given, the audit counts its prompts that also occur in --dataset."""
    eval_dataset_split: str = "train"
    """Split of --eval_dataset."""
    output_dir: str = ""
    """Folder for audit.json and report.html (created if missing)."""
    skip_invalid: bool = False
    """Skip and count rows that are not valid pairs (ties and empty responses are always counted, never fatal)."""
    seed: int = 0
    """Seed of the bootstrap and permutation resamples."""
    num_bootstrap: int = 1000
    """Resamples for the fatigue slopes' standard errors and relabellings for the group-divergence test
    (0: robust formula for the slopes, no divergence test)."""
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)
    """When findings become warnings."""

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError(
                "--dataset is required: the pairwise data to audit (e.g. --dataset data/pairs.jsonl)."
            )
        if not self.output_dir:
            raise ValueError("--output_dir is required: the folder for audit.json and report.html.")
        if self.num_bootstrap < 0:
            raise ValueError(f"num_bootstrap must be >= 0, got {self.num_bootstrap}. Typical: 1000.")
