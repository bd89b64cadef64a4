"""Fields that say where the training data is and how it is cut to length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    dataset: str = ""
    """Training data: a .json/.jsonl/.jsonl.gz/.parquet/.csv file, or a local datasets folder."""
    eval_dataset: str | None = None
    """Held-out data in the same format, evaluated every --eval_steps and at the end."""
    dataset_split: str = "train"
    """Split to read when --dataset is a datasets folder or name."""
    max_length: int = 512
    """Longest tokenized prompt + response; longer examples follow --truncation."""
    truncation: Literal["left", "error"] = "left"
    """'left' drops prompt tokens from the left and keeps the response (counted and reported); 'error' stops."""
    skip_invalid: bool = False
    """Skip rows that fail validation (counted and reported) instead of stopping at the first."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}.")
