"""Generation backends behind one interface: transformers (any device) or vLLM (CUDA, optional).

A trainer holds a `GenerationBackend` and calls `generate(prompts, sampling, seed, num_samples)`;
the result is a `RolloutBatch` either way. The vLLM engine keeps its own copy of the weights:
call `VLLMBackend.sync_weights(policy)` after each optimizer step (the transformers backend
samples from the live model and needs nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from preftune.rollout.config import SamplingConfig
from preftune.rollout.generate import RolloutBatch, TransformersBackend
from preftune.rollout.vllm_backend import VLLMBackend

__all__ = ["BACKENDS", "GenerationBackend", "TransformersBackend", "VLLMBackend", "load_backend"]

BACKENDS = ("transformers", "vllm")


@runtime_checkable
class GenerationBackend(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        config: SamplingConfig,
        seed: int,
        num_samples: int = 1,
        prompt_keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """`num_samples` responses per prompt, a prompt's samples consecutive; reproducible for a seed.
        With `prompt_keys`, a prompt's samples depend only on (seed, its key), not on the batch."""
        ...


def load_backend(
    name: Literal["transformers", "vllm"],
    model: PreTrainedModel | PeftModel | str,
    tokenizer: PreTrainedTokenizerBase,
    **options: Any,
) -> GenerationBackend:
    """The backend `name` for `model`.

    transformers: `model` is the loaded policy; no options. vllm: `model` is a checkpoint path, or
    the loaded policy (the engine starts from its base checkpoint, `name_or_path`, then gets the
    policy's current weights, LoRA merged); options go to `VLLMBackend` (dtype,
    gpu_memory_utilization, seed, max_model_len).
    """
    if name == "transformers":
        if isinstance(model, str):
            raise TypeError(
                "The transformers backend samples from a loaded model, got the path "
                f"{model!r}; load it first (preftune.models.loading.load_policy)."
            )
        if options:
            raise TypeError(f"The transformers backend takes no options, got {sorted(options)}.")
        return TransformersBackend(model, tokenizer)
    if name == "vllm":
        if isinstance(model, str):
            return VLLMBackend(model, tokenizer, **options)
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        assert isinstance(base, PreTrainedModel)
        path = str(base.name_or_path)
        if not path:
            raise ValueError(
                "The vLLM backend starts from a checkpoint on disk, but this model has no name_or_path; "
                "save it with save_pretrained and pass the folder."
            )
        backend = VLLMBackend(path, tokenizer, **options)
        backend.sync_weights(model)
        return backend
    raise ValueError(f"Unknown generation backend {name!r}; choose one of {list(BACKENDS)}.")
