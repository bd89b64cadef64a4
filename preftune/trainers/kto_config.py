"""The flags of `preftune kto` (KTOConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/kto.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from preftune.data.config import DataConfig
from preftune.engine.config import RunInputs, TrainConfig
from preftune.models.config import ModelConfig


@dataclass
class KTOConfig(RunInputs):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-6))
    ref_model: str | None = None
    """Reference policy checkpoint (frozen). Default: --model itself, or with --use_peft the policy with
    its adapter disabled (no second copy of the weights)."""
    beta: float = 0.1
    """KL strength: larger keeps the policy closer to the reference (0.01 to 0.5 is typical)."""
    desirable_weight: float | None = None
    """lambda_D, the weight of desirable examples. None (with undesirable_weight None): from the training
    set's class counts, so that lambda_D n_D / (lambda_U n_U) is in [1, 4/3] (paper sec. 4.2; logged)."""
    undesirable_weight: float | None = None
    """lambda_U, the weight of undesirable examples; set both weights or neither."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}. Typical range: 0.01 to 0.5.")
        weights = (self.desirable_weight, self.undesirable_weight)
        if (weights[0] is None) != (weights[1] is None):
            raise ValueError(
                f"Set both desirable_weight and undesirable_weight, or neither (then they follow the data's "
                f"class counts); got desirable_weight={weights[0]}, undesirable_weight={weights[1]}."
            )
        if weights[0] is not None and weights[1] is not None:
            if not (weights[0] >= 0 and weights[1] >= 0):
                raise ValueError(
                    f"desirable_weight and undesirable_weight must be >= 0, got {weights[0]} and {weights[1]}."
                )
            if weights[0] == weights[1] == 0:
                raise ValueError(
                    "desirable_weight and undesirable_weight are both 0: nothing would be trained."
                )
        if self.train.per_device_train_batch_size * self.train.gradient_accumulation_steps < 2:
            raise ValueError(
                "KTO's reference point pairs each prompt with another example's response, so each process needs "
                "at least 2 examples per step: raise --per_device_train_batch_size or "
                "--gradient_accumulation_steps."
            )
