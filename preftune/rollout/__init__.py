"""Generation: sampling backends (transformers, optional vLLM), rollout batches, best-of-n.

`SamplingConfig` (preftune/rollout/config.py) imports no torch; the other names load their modules
(torch, transformers) on first use, so that config classes, and `preftune <command> --help`, import quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from preftune.rollout.config import SamplingConfig

if TYPE_CHECKING:
    from preftune.rollout.backends import BACKENDS, GenerationBackend, load_backend
    from preftune.rollout.generate import RolloutBatch, TransformersBackend, left_pad, sample_responses
    from preftune.rollout.vllm_backend import VLLMBackend

_LAZY = {
    "BACKENDS": "preftune.rollout.backends",
    "GenerationBackend": "preftune.rollout.backends",
    "load_backend": "preftune.rollout.backends",
    "RolloutBatch": "preftune.rollout.generate",
    "TransformersBackend": "preftune.rollout.generate",
    "left_pad": "preftune.rollout.generate",
    "sample_responses": "preftune.rollout.generate",
    "VLLMBackend": "preftune.rollout.vllm_backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "GenerationBackend",
    "RolloutBatch",
    "SamplingConfig",
    "TransformersBackend",
    "VLLMBackend",
    "left_pad",
    "load_backend",
    "sample_responses",
]
