"""`preftune eval`: a reward model on preference pairs, or policies on prompts against a reference."""

from __future__ import annotations

from typing import Any

from preftune.data import DataConfig
from preftune.eval.config import EvalConfig
from preftune.eval.policy import run_policy_eval
from preftune.eval.reward_model import run_reward_eval


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation the flags ask for; returns what eval.json holds."""
    if config.reward.reward_model:
        return run_reward_eval(config.reward)
    options = config.reward
    data = DataConfig(
        dataset=config.policies.prompts,
        max_length=options.max_length or 512,
        truncation=options.truncation,
        skip_invalid=options.skip_invalid,
        dialogue_format=options.dialogue_format,
    )
    return run_policy_eval(
        config.policies,
        options.output_dir,
        data,
        options.task,
        options.device,
        options.batch_size,
        probe_sycophancy=options.probe_sycophancy,
    )
