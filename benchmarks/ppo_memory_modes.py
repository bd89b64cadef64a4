"""PPO's memory layouts: parameter memory of policy, value model and reference in each.

Builds PPOTrainer (one step is not needed: the models are in memory once it is constructed) for
- full: all weights trained; policy, a value model and a frozen reference: three copies;
- lora: a LoRA policy (the reference is the policy with its adapter off) and a full value model;
- shared: `--share_backbone`: policy adapter, value adapter + head, reference = adapters off,
  all on one copy of the base weights;
and counts the bytes of distinct parameter tensors (the judge is the gold reward: no model).

    python benchmarks/ppo_memory_modes.py --model /tmp/rl_synthetic/sft/final \\
        --prompts /tmp/rl_synthetic/data/prompts.jsonl
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from preftune.data import DataConfig
from preftune.engine import TrainConfig
from preftune.models.loading import ModelConfig
from preftune.rollout.config import ScoringConfig
from preftune.trainers.ppo import PPOTrainer
from preftune.trainers.ppo_config import PPOConfig


def parameter_mib(modules: list[torch.nn.Module | None]) -> float:
    """MiB of the distinct parameter tensors of `modules` (shared storage counted once)."""
    seen, total = set(), 0
    for module in modules:
        for param in [] if module is None else module.parameters():
            if param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                total += param.numel() * param.element_size()
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    args = parser.parse_args()
    layouts = {"full": ({}, False), "lora": ({"use_peft": True, "lora_r": 8}, False),
               "shared": ({"use_peft": True, "lora_r": 8}, True)}  # fmt: skip
    for name, (model_options, shared) in layouts.items():
        config = PPOConfig(
            model=ModelConfig(model=args.model, **model_options),
            data=DataConfig(dataset=args.prompts, max_length=64),
            train=TrainConfig(
                output_dir=str(Path(tempfile.mkdtemp()) / name), max_steps=1, disable_tqdm=True
            ),
            scoring=ScoringConfig(judge="gold", reward_normalization="none"),
            share_backbone=shared,
        )
        trainer = PPOTrainer(config)
        mib = parameter_mib([trainer.accelerator.unwrap_model(trainer.model), trainer.reference])
        print(f"{name:<8} policy + value + reference parameters: {mib:.3f} MiB")  # noqa: T201


if __name__ == "__main__":
    main()
