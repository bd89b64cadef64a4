"""The groups every RL trainer's config has (RLConfig), as a plain dataclass that imports no torch.

PPOConfig, RLOOConfig/GRPOConfig and OnlineDPOConfig extend it with their algorithm's own flags; a
subclass that needs other defaults for a group declares that group again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from preftune.data.config import DataConfig
from preftune.engine.config import RunInputs, TrainConfig
from preftune.engine.hacking import HackingConfig
from preftune.models.config import ModelConfig
from preftune.rollout.config import SamplingConfig, ScoringConfig, check_rl_sampling


@dataclass
class RLConfig(RunInputs):
    """The policy, its prompts, training, sampling, the judge and how its scores are used, the reward-hacking
    monitor and the reference: what PPO, RLOO/GRPO and online DPO share."""

    judges: ClassVar[str] = "gold, rm:PATH (a reward model) or rm:PATH1,PATH2"
    """The judge specs the trainer takes, for the error when --judge is missing."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=512))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=1e-5, max_steps=200, per_device_train_batch_size=16)
    )
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32))
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    hacking: HackingConfig = field(default_factory=HackingConfig)
    ref_model: str | None = None
    """Reference policy (frozen). Default: --model, or with --use_peft the policy with its adapter disabled."""

    def __post_init__(self) -> None:
        if not self.scoring.judge:
            raise ValueError(f"--judge is required: {self.judges}.")
        check_rl_sampling(self.sampling, self.model)
