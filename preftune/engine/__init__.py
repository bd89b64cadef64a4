"""The shared training loop on accelerate."""

from preftune.engine.config import TrainConfig
from preftune.engine.loop import Engine, TrainingDiverged, build_accelerator
from preftune.engine.metrics import MetricsLog, read_metrics

__all__ = ["Engine", "MetricsLog", "TrainConfig", "TrainingDiverged", "build_accelerator", "read_metrics"]
