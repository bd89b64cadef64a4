"""Fields that say where the training data is and how it is cut to length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from preftune.data.io import parse_split


@dataclass
class DataConfig:
    dataset: str = ""
    """Training data: a .json/.jsonl/.jsonl.gz/.parquet/.csv file, or a local datasets folder."""
    eval_dataset: str | None = None
    """Held-out data in the same format, evaluated every --eval_steps and at the end."""
    dataset_split: str = "train"
    """Split or slice to read, e.g. 'train' or 'train[:1500]' (any file or datasets folder)."""
    eval_dataset_split: str | None = None
    """Split (or slice, e.g. 'train[1500:]') of --eval_dataset; defaults to --dataset_split."""
    max_length: int = 512
    """Longest tokenized prompt + response; longer examples follow --truncation."""
    truncation: Literal["left", "error"] = "left"
    """'left' drops prompt tokens from the left and keeps the response (counted and reported); 'error' stops."""
    skip_invalid: bool = False
    """Skip rows that fail validation (counted and reported) instead of stopping at the first."""
    dialogue_format: Literal["text", "hh"] = "text"
    """'hh' reads text transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...", as in HH-RLHF) as message lists,
    which the tokenizer's chat template then formats; 'text' keeps text as it is."""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}.")
        if self.eval_dataset_split is not None and self.eval_dataset is None:
            raise ValueError(
                f"eval_dataset_split is {self.eval_dataset_split!r} but no --eval_dataset is given. "
                "Pass --eval_dataset too, or drop --eval_dataset_split."
            )
        train_split = parse_split(self.dataset_split, "--dataset_split")
        eval_split = parse_split(self.eval_split, "--eval_dataset_split")
        if self.eval_dataset == self.dataset and eval_split == train_split:
            raise ValueError(
                f"--eval_dataset {self.eval_dataset!r} with split {self.eval_split!r} is the training data "
                f"(--dataset with --dataset_split {self.dataset_split!r}), so the held-out scores would be "
                "training scores. Hold out a slice, e.g. --dataset_split 'train[:90%]' "
                "--eval_dataset_split 'train[90%:]', or pass another --eval_dataset."
            )

    @property
    def eval_split(self) -> str:
        """The split (or slice) read from --eval_dataset: --eval_dataset_split, else --dataset_split."""
        return self.dataset_split if self.eval_dataset_split is None else self.eval_dataset_split
