"""preftune: preference tuning of language models (SFT, reward models, PPO, DPO and evaluation).

The trainers and their configs import lazily, so `import preftune` (and `preftune --help`) loads no torch:

    from preftune import DPOConfig, DPOTrainer, make_config

    config = make_config(DPOConfig, output_dir="runs/dpo", beta=0.1, max_steps=100)
    DPOTrainer(args=config, model=model, processing_class=tokenizer, train_dataset=dataset).train()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SFTTrainer": "preftune.trainers.sft",
    "SFTConfig": "preftune.trainers.sft_config",
    "RewardTrainer": "preftune.trainers.reward",
    "RewardConfig": "preftune.trainers.reward_config",
    "DPOTrainer": "preftune.trainers.dpo",
    "DPOConfig": "preftune.trainers.dpo_config",
    "KTOTrainer": "preftune.trainers.kto",
    "KTOConfig": "preftune.trainers.kto_config",
    "PPOTrainer": "preftune.trainers.ppo",
    "PPOConfig": "preftune.trainers.ppo_config",
    "RLOOTrainer": "preftune.trainers.rloo_grpo",
    "GRPOTrainer": "preftune.trainers.rloo_grpo",
    "RLOOConfig": "preftune.trainers.rloo_grpo_config",
    "GRPOConfig": "preftune.trainers.rloo_grpo_config",
    "OnlineDPOTrainer": "preftune.trainers.online_dpo",
    "OnlineDPOConfig": "preftune.trainers.online_dpo_config",
    "ModelConfig": "preftune.models.config",
    "DataConfig": "preftune.data.config",
    "TrainConfig": "preftune.engine.config",
    "make_config": "preftune.config",
    "load_judge": "preftune.judges",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'preftune' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
