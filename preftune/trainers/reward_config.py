"""The flags of `preftune rm` (RewardConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/reward.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preftune.data.config import DataConfig
from preftune.engine.config import RunInputs, TrainConfig
from preftune.feedback.aggregate import parse_label_noise
from preftune.models.config import ModelConfig


@dataclass
class RewardConfig(RunInputs):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-5))
    num_heads: int = 1
    """Scalar heads on one backbone (an ensemble); > 1 gives the judge a standard deviation."""
    bootstrap_heads: bool = True
    """With num_heads > 1, train each head on its own bootstrap resample of the pairs."""
    center_rewards_coefficient: float = 0.0
    """Weight of (r_chosen + r_rejected)^2, which keeps rewards centred on 0 (0.01 is typical)."""
    label_smoothing: float = 0.0
    """Assumed probability that a label is flipped, in [0, 0.5); > 0 for noisy ratings."""
    label_noise: str = "none"
    """Where label_smoothing comes from: 'none' (use --label_smoothing), 'auto' (the Dawid-Skene flip rate of the
    training ratings; needs annotator ids and items rated more than once) or a flip rate such as '0.1'."""
    prefix_sharing: bool = True
    """Run each pair as one [prompt][chosen][rejected] block (prompt computed once, rows packed,
    no padding). False uses padded batches; flash attention always does."""

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}.")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}: it is the probability "
                "that a label is wrong (0.1 is a typical value for noisy ratings)."
            )
        if parse_label_noise(self.label_noise) is not None and self.label_smoothing:
            raise ValueError(
                f"label_noise {self.label_noise!r} sets the label smoothing, but label_smoothing "
                f"{self.label_smoothing} is set too; give only one of them."
            )
        if self.center_rewards_coefficient < 0:
            raise ValueError(
                f"center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}."
            )
