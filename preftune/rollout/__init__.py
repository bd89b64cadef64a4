"""Generation: sampling backends (transformers, optional vLLM), rollout batches, best-of-n."""

from preftune.rollout.backends import BACKENDS, GenerationBackend, load_backend
from preftune.rollout.generate import (
    RolloutBatch,
    SamplingConfig,
    TransformersBackend,
    left_pad,
    sample_responses,
)
from preftune.rollout.vllm_backend import VLLMBackend

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
