"""The shared training loop on accelerate.

`TrainConfig` imports no torch; the loop's names load preftune/engine/loop.py (torch, accelerate) on
first use, so that config classes, and `preftune <command> --help`, import quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from preftune.engine.config import TrainConfig
from preftune.engine.metrics import MetricsLog, read_metrics

if TYPE_CHECKING:
    from preftune.engine.loop import Engine, TrainingDiverged, build_accelerator, close_processes

_LAZY = {
    "Engine": "preftune.engine.loop",
    "TrainingDiverged": "preftune.engine.loop",
    "build_accelerator": "preftune.engine.loop",
    "close_processes": "preftune.engine.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Engine",
    "MetricsLog",
    "TrainConfig",
    "TrainingDiverged",
    "build_accelerator",
    "close_processes",
    "read_metrics",
]
