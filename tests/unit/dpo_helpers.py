"""A DPOTrainer that holds only its config: `pair_losses` (the trainer's own composition of log-ratios,
f-divergence, length normalisation and loss parameters) runs on hand-built log-probs, with no model."""

from __future__ import annotations

from typing import Any

from preftune.data import DataConfig
from preftune.engine import TrainConfig
from preftune.models.loading import ModelConfig
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig


def loss_only_trainer(**fields: Any) -> DPOTrainer:
    """`DPOTrainer.pair_losses` reads only `config` and the resolved `label_smoothing`; nothing is loaded."""
    config = DPOConfig(
        model=ModelConfig(model="m"),
        data=DataConfig(dataset="d.jsonl"),
        train=TrainConfig(output_dir="o"),
        **fields,
    )
    trainer = object.__new__(DPOTrainer)
    trainer.config = config
    trainer.label_smoothing = config.label_smoothing
    return trainer
