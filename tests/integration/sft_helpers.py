"""Builders shared by the SFT integration tests."""

from preftune.data.config import DataConfig
from preftune.engine import TrainConfig
from preftune.models.loading import ModelConfig
from preftune.trainers.sft_config import SFTConfig


def sft_config(model: str, dataset: str, output_dir: str, **train_overrides) -> SFTConfig:
    train = {
        "output_dir": output_dir,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 8,
        "max_steps": 6,
        "logging_steps": 1,
        "disable_tqdm": True,
        **train_overrides,
    }
    return SFTConfig(
        model=ModelConfig(model=model),
        data=DataConfig(dataset=dataset, max_length=96),
        train=TrainConfig(**train),
    )
