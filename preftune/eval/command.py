"""`preftune eval`: a reward model on preference pairs, or policies on prompts against a reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from preftune.data import DataConfig
from preftune.eval.policy import PolicyEvalConfig, run_policy_eval
from preftune.eval.reward_model import RewardEvalConfig, run_reward_eval


@dataclass
class EvalConfig:
    """`preftune eval --reward_model PATH --dataset PAIRS --output_dir OUT`, or
    `preftune eval --policy NAME=PATH ... --reference PATH --prompts FILE --judge SPEC --output_dir OUT`."""

    reward: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    policies: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)

    def __post_init__(self) -> None:
        if bool(self.reward.reward_model) == bool(self.policies.policy):
            raise ValueError(
                "Evaluate either a reward model (--reward_model PATH --dataset PAIRS) or policies (--policy NAME=PATH "
                "--reference PATH --prompts FILE --judge SPEC), one per run."
            )
        if not self.reward.output_dir:
            raise ValueError("--output_dir is required: the folder for eval.json.")
        if self.policies.policy:
            self.policies.check()


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation the flags ask for; returns what eval.json holds."""
    if config.reward.reward_model:
        return run_reward_eval(config.reward)
    options = config.reward
    data = DataConfig(
        dataset=config.policies.prompts, max_length=options.max_length or 512, truncation=options.truncation,
        skip_invalid=options.skip_invalid, dialogue_format=options.dialogue_format,
    )  # fmt: skip
    return run_policy_eval(
        config.policies, options.output_dir, data, options.task, options.device, options.batch_size
    )
