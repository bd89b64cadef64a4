"""The flags of `preftune sft` (SFTConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/sft.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preftune.data.config import DataConfig
from preftune.engine.config import RunInputs, TrainConfig
from preftune.models.config import ModelConfig


@dataclass
class SFTConfig(RunInputs):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5))
    completion_only_loss: bool = True
    """Train on response tokens only (prompt masked). False trains on the prompt too."""
    packing: bool = False
    """Pack several examples into each row of --max_length tokens (block-diagonal attention, no padding)."""
    dataset_text_field: str | None = None
    """Train on this string column as plain text (e.g. 'chosen' of HH-RLHF) instead of detecting the format."""

    def __post_init__(self) -> None:
        # Checked here, before any file is read, so a forgotten flag fails at once.
        if self.packing and (self.model.attn_implementation or "").startswith("flash"):
            raise ValueError(
                f"--packing needs custom 4D attention masks, which --attn_implementation "
                f"{self.model.attn_implementation} does not take. Use sdpa (the default) or eager, or turn packing off."
            )
