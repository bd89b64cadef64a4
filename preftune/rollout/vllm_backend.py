"""Optional vLLM generation backend for CUDA GPUs.

NOT EXERCISED BY CI: the test machines have no GPU and no vllm. Unit tests cover the import
guard, `merged_weights` and `engine_options`, and an RL test checks that rollouts, the judge's starting
statistics and the held-out evaluation all sample through the run's one backend; everything that talks
to vLLM was written against its documented API and must be checked on a GPU before it is relied on.

Importing this module never imports vllm: the import happens when `VLLMBackend` is built.

vLLM API used, as documented for vLLM 0.10.2 up to the 0.3x releases (V1 engine; preftune asks >= 0.19.1):
- prompts as token ids: `LLM.generate([TokensPrompt(prompt_token_ids=ids), ...], params)`
  (`vllm.inputs.TokensPrompt`; the older `generate(prompt_token_ids=...)` keyword was deprecated, then removed);
- `SamplingParams(n, temperature, top_p, top_k (-1 = off), max_tokens, logprobs=0, seed,
  stop_token_ids, detokenize)`; `logprobs=0` returns the sampled token's log-prob only. With
  `n > 1` and a seed, child j of a request is seeded seed + j (v1/engine/parallel_sampling.py);
- `LLM(..., logprobs_mode="processed_logprobs")` (vLLM >= 0.10.2): log-probs after temperature
  (and after top-k/top-p, which is why `generate` refuses them below). The default,
  "raw_logprobs", ignores the temperature (TRL issue #4159);
- loading weights into a running engine: vLLM V0 exposed the model at
  `llm.llm_engine.model_executor.driver_worker.model_runner.model` (V1 in-process, as TRL's colocate
  mode uses it: `...driver_worker.worker.model_runner.model`), private paths that moved between releases. V1
  has the public `LLM.collective_rpc(method)` and `LLM.apply_model(fn)`, which runs fn(model) in
  every worker; we call `apply_model(lambda m: m.load_weights(weights))`. With the engine core in a
  separate process (V1's default) fn and the weights would be pickled (and refused unless
  VLLM_ALLOW_INSECURE_SERIALIZATION=1), so the engine runs in-process
  (VLLM_ENABLE_V1_MULTIPROCESSING=0) and the weights are handed over as GPU tensors. The prefix
  cache holds KV computed with the old weights and is reset after every sync;
- several training processes: every process builds its own engine with `tensor_parallel_size=1` and
  `distributed_executor_backend="external_launcher"` (vLLM's executor for engines inside processes that
  torchrun or accelerate launched; it reads RANK, LOCAL_RANK and WORLD_SIZE from the launcher), on the
  CUDA device accelerate set for the process. Without it every rank's engine would start on GPU 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from packaging.version import Version
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from preftune.models.loading import token_id
from preftune.rollout.config import SamplingConfig
from preftune.rollout.generate import RolloutBatch, check_rollout_request, request_seed

logger = logging.getLogger(__name__)

# The first vLLM that accepts transformers 5 (pyproject.toml's vllm extra); it has processed_logprobs too.
MIN_VLLM_VERSION = "0.19.1"
NEEDS = (
    f"The vLLM generation backend needs the vllm package (pip install 'vllm>={MIN_VLLM_VERSION}') and a "
    "CUDA GPU. Without them use the transformers backend, which runs on any device."
)


MIXED_PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
"""vLLM's dtype under accelerate's mixed precision; without it ("no") the policy's own dtype."""


def engine_options(
    sampling: SamplingConfig,
    max_length: int,
    mixed_precision: str,
    policy_dtype: torch.dtype,
    process_index: int,
    num_processes: int,
) -> dict[str, Any]:
    """The `VLLMBackend` options of one training process: the training precision (so the sampling-time
    log-probs are comparable with the update's), --vllm_gpu_memory_utilization,
    `max_model_len` (--vllm_max_model_len, default --max_length: the longest prompt plus response a rollout
    holds, not the model's whole context, whose KV cache would crowd out the batch), and one engine per
    process: with several processes each builds its own engine on its own GPU under vLLM's
    "external_launcher" executor (the processes accelerate launched are the engines' workers; each rank's
    engine is seeded with its rank)."""
    if mixed_precision not in (*MIXED_PRECISION_DTYPES, "no"):
        raise ValueError(f"Unknown mixed precision {mixed_precision!r}; expected bf16, fp16 or no.")
    dtype = MIXED_PRECISION_DTYPES.get(mixed_precision, str(policy_dtype).removeprefix("torch."))
    options: dict[str, Any] = {
        "dtype": dtype,
        "gpu_memory_utilization": sampling.vllm_gpu_memory_utilization,
        "max_model_len": sampling.vllm_max_model_len or max_length,
        "seed": process_index,
    }
    if num_processes > 1:
        options["distributed_executor_backend"] = "external_launcher"
    return options


class VLLMBackend:
    """Sampling with a vLLM engine on one CUDA GPU, next to the policy being trained.

    NOT EXERCISED BY CI (no GPU, no vllm there). The engine loads `model_path` and keeps its own
    copy of the weights: call `sync_weights(policy)` after every optimizer step. Under a multi-process
    launch each process builds its own engine on its current CUDA device (`engine_options`).
    """

    def __init__(
        self,
        model_path: str,
        tokenizer: PreTrainedTokenizerBase,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        max_model_len: int | None = None,
        distributed_executor_backend: str | None = None,
    ) -> None:
        try:
            import vllm  # pyright: ignore[reportMissingImports]
        except ImportError as error:
            raise ImportError(NEEDS) from error
        if Version(vllm.__version__) < Version(MIN_VLLM_VERSION):
            raise ImportError(f"Found vllm {vllm.__version__}. {NEEDS}")
        if not torch.cuda.is_available():
            raise ValueError(f"No CUDA GPU is visible. {NEEDS}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}.")
        # In-process engine core, so sync_weights can hand the model tensors without pickling them.
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            logger.warning(
                "Setting VLLM_ENABLE_V1_MULTIPROCESSING=0: sync_weights needs the engine in-process."
            )
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.eos_token_id = token_id(tokenizer, "eos")
        self.stop_token_ids = [self.eos_token_id, *checkpoint_end_tokens(model_path, self.eos_token_id)]
        self.llm: Any = vllm.LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            max_model_len=max_model_len,
            tensor_parallel_size=1,
            **(
                {"distributed_executor_backend": distributed_executor_backend}
                if distributed_executor_backend
                else {}
            ),
            skip_tokenizer_init=True,  # token ids in and out; EOS comes from `tokenizer` via stop_token_ids
            logprobs_mode="processed_logprobs",
        )

    def sync_weights(self, model: PreTrainedModel | PeftModel) -> None:
        """Load the policy's current weights (LoRA merged) into the engine and drop its prefix cache."""
        weights = merged_weights(model)
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: list[list[int]],
        config: SamplingConfig,
        seed: int,
        num_samples: int = 1,
        prompt_keys: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """`num_samples` responses per prompt (a prompt's samples consecutive), as TransformersBackend;
        each prompt's request is seeded from (seed, its key), so `prompt_keys` make samples
        independent of the batch."""
        check_rollout_request(prompts, seed, num_samples)
        keys = list(range(len(prompts))) if prompt_keys is None else list(prompt_keys)
        if config.temperature > 0 and (config.top_p < 1 or config.top_k > 0):
            raise ValueError(
                f"top_p={config.top_p} / top_k={config.top_k}: vLLM's processed log-probs are renormalised "
                "over the kept tokens, not the full-vocabulary log-probs a RolloutBatch holds. Use top_p=1 and "
                "top_k=0 with the vLLM backend, or the transformers backend."
            )
        from vllm import SamplingParams  # pyright: ignore[reportMissingImports]
        from vllm.inputs import TokensPrompt  # pyright: ignore[reportMissingImports]

        greedy = config.temperature == 0
        params = [
            SamplingParams(
                n=num_samples,
                temperature=config.temperature,
                top_p=1.0 if greedy else config.top_p,
                top_k=-1 if greedy or config.top_k == 0 else config.top_k,
                max_tokens=config.max_new_tokens,
                logprobs=0,
                seed=request_seed(seed, keys[index]),
                stop_token_ids=self.stop_token_ids,
                detokenize=False,
            )
            for index in range(len(prompts))
        ]
        requests = [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)  # in request order
        prompt_ids, response_ids, token_logps, ended = [], [], [], []
        for prompt, output in zip(prompts, outputs, strict=True):
            for completion in sorted(output.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                if completion.logprobs is None:
                    raise RuntimeError("vLLM returned no log-probs although logprobs=0 was requested.")
                logps = [step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True)]
                stops = [i for i, token in enumerate(ids) if token in self.stop_token_ids]
                length = stops[0] + 1 if stops else len(ids)
                prompt_ids.append(prompt)
                response_ids.append(ids[:length])
                token_logps.append(logps[:length])
                ended.append(bool(stops))
        return RolloutBatch.from_lists(prompt_ids, response_ids, token_logps, ended)


def checkpoint_end_tokens(model_path: str, eos_token_id: int) -> list[int]:
    """End tokens of the checkpoint's generation_config.json other than `eos_token_id` (none without one)."""
    try:
        configured = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        return []
    extra = configured if isinstance(configured, list) else [] if configured is None else [configured]
    return [i for i in extra if i != eos_token_id]


@torch.no_grad()
def merged_weights(model: PreTrainedModel | PeftModel) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of every weight under the checkpoint's names, LoRA deltas added; the model
    is not changed. Merged tensors are built one at a time, as the consumer reads them."""
    if not isinstance(model, PeftModel):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    lora_layers: dict[str, LoraLayer] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            if any(module.use_dora.get(adapter, False) for adapter in module.active_adapters):
                raise ValueError(
                    f"{name} uses DoRA, whose merge is not a plain delta; sync_weights supports LoRA."
                )
            lora_layers[f"{name}.base_layer.weight"] = module
    for name, tensor in base.state_dict().items():
        if ".modules_to_save." in name or ".original_module." in name:
            raise ValueError(f"{name}: adapters with modules_to_save are not supported by sync_weights.")
        if ".lora_" in name:
            continue  # the adapter factors themselves; their product is added below
        layer = lora_layers.get(name)
        yield name.replace(".base_layer.", "."), tensor if layer is None else _with_lora_delta(tensor, layer)


def _with_lora_delta(weight: Tensor, layer: LoraLayer) -> Tensor:
    """The weight of `layer` with its active adapters merged (what peft's merge writes in place)."""
    if layer.merged:  # peft already added the deltas to the base weight
        return weight
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
            # get_delta_weight is defined by each concrete LoRA layer (Linear, Embedding, Conv), not the base class.
            weight = weight + layer.get_delta_weight(adapter)  # pyright: ignore[reportAttributeAccessIssue]
    return weight
