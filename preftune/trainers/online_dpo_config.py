"""The flags of `preftune online-dpo` (OnlineDPOConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/online_dpo.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from preftune.engine.config import TrainConfig
from preftune.rollout.config import SamplingConfig, ScoringConfig
from preftune.trainers.rl_config import RLConfig

OnlineLossType = Literal[
    "sigmoid",
    "cdpo",
    "robust",
    "ipo",
    "ipo_norm",
    "hinge",
    "sigmoid_norm",
    "exo_pair",
    "nca_pair",
    "apo_zero",
    "apo_down",
    "sppo_hard",
]
"""The objectives of preftune/losses/registry.py that take only the two log-ratios (and label_smoothing)."""


@dataclass
class OnlineDPOConfig(RLConfig):
    judges: ClassVar[str] = "gold, rm:PATH (a reward model), or a pairwise judge spec"

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=5e-7, max_steps=200, per_device_train_batch_size=8)
    )
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=64))
    scoring: ScoringConfig = field(default_factory=lambda: ScoringConfig(reward_normalization="none"))
    beta: float = 0.1
    """KL strength of the DPO objective: larger keeps the policy closer to the reference (0.01 to 0.5)."""
    loss_type: OnlineLossType = "sigmoid"
    """Pairwise objective on the sampled pairs (see preftune/losses/pairwise.py): sigmoid (DPO), ipo, hinge,
    cdpo or robust (with --label_smoothing), ..."""
    label_smoothing: float = 0.0
    """Assumed rate of wrong judge verdicts for sigmoid/cdpo/robust/exo_pair: in [0, 0.5) (exo_pair: (0, 1))."""
    num_generations: int = 2
    """Samples per prompt (k >= 2); each prompt gives one pair, its best against its worst sample."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}. Typical range: 0.01 to 0.5.")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (a pair needs two samples), got {self.num_generations}."
            )
        from preftune.losses.registry import LOSSES  # here, not at the top: the losses need torch

        if self.loss_type not in get_args(OnlineLossType):
            raise ValueError(
                f"Unknown loss_type {self.loss_type!r}. Choose from: {', '.join(get_args(OnlineLossType))}."
            )
        uses_smoothing = "label_smoothing" in LOSSES[self.loss_type].params
        if self.label_smoothing and not uses_smoothing:
            raise ValueError(
                f"--label_smoothing {self.label_smoothing} is not used by {self.loss_type}; drop it."
            )
        open_at_zero = self.loss_type in ("cdpo", "exo_pair")  # these need some smoothing
        high = 1.0 if self.loss_type == "exo_pair" else 0.5
        low_ok = self.label_smoothing > 0 if open_at_zero else self.label_smoothing >= 0
        if uses_smoothing and not (low_ok and self.label_smoothing < high):
            raise ValueError(
                f"{self.loss_type} needs --label_smoothing in {'(0' if open_at_zero else '[0'}, {high:g}), got "
                f"{self.label_smoothing}: the assumed rate of wrong verdicts, e.g. 0.1."
            )
