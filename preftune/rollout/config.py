"""Sampling, scoring and best-of-n flags (SamplingConfig, ScoringConfig, BoNConfig).

Plain dataclasses that import no torch, so `preftune <command> --help` stays fast; the rollout modules
use them.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from preftune.data.config import DataConfig
from preftune.models.config import ModelConfig
from preftune.tasks.registry import get_task

logger = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    """Most tokens generated per response; generation also stops at EOS."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding (log-probs are then those at temperature 1)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 keeps the whole distribution)."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 turns this off."""
    generation_batch_size: int = 64
    """Sequences (prompts x samples per prompt) per generate() call; lower it if generation runs out of memory."""
    generation_backend: Literal["transformers", "vllm"] = "transformers"
    """RL rollouts: transformers' generate on the live policy, or vLLM (CUDA, `pip install vllm`; its copy of
    the weights is refreshed from the policy before each rollout)."""
    vllm_gpu_memory_utilization: float = 0.5
    """--generation_backend vllm: the share of each GPU's memory the engine takes (its copy of the weights and
    its KV cache); the rest is the training process's."""
    vllm_max_model_len: int | None = None
    """--generation_backend vllm: the longest prompt + response the engine serves (its KV cache is sized for
    it); default --max_length."""

    def __post_init__(self) -> None:
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}."
            )
        if self.vllm_max_model_len is not None and self.vllm_max_model_len < 2:
            raise ValueError(f"vllm_max_model_len must be >= 2 (or unset), got {self.vllm_max_model_len}.")
        vllm_options = [
            f"--{name}"
            for name, default in (("vllm_gpu_memory_utilization", 0.5), ("vllm_max_model_len", None))
            if getattr(self, name) != default
        ]
        if vllm_options and self.generation_backend != "vllm":
            raise ValueError(
                f"{', '.join(vllm_options)} set the vLLM engine, but --generation_backend is "
                f"{self.generation_backend!r}: add --generation_backend vllm, or drop them."
            )
        if self.max_new_tokens < 1 or self.generation_batch_size < 1:
            raise ValueError(
                f"max_new_tokens and generation_batch_size must be >= 1, got {self.max_new_tokens} "
                f"and {self.generation_batch_size}."
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")


@dataclass(kw_only=True)
class JudgeSpec:
    """A judge and its options: the flags of every command that takes a judge (`preftune eval --policy`
    directly; the others through JudgeConfig). Keyword-only, so that the commands that extend it keep their
    own fields' positional order."""

    judge: str = ""
    """Judge spec (docs/judges.md): gold or gold:TASK (the synthetic task's gold reward), rm:PATH (a reward
    model; a bare PATH too) or rm:PATH1,PATH2 (an ensemble's mean score). Where samples are ranked by
    comparison (loop, online-dpo, cai) also panel, llm:PATH and http:URL; in loop also human (a file per
    round for people to rate, docs/loop.md)."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    """Options of the judge as JSON, e.g. '{"template": "judge.txt", "min_answer_mass": 0.1}' (llm, http),
    '{"model": "NAME", "concurrency": 8}' (http), '{"seed": 1}' (panel), '{"dtype": "bfloat16"}' (rm).
    docs/judges.md lists each kind's; one the judge does not take is an error. llm and http judges keep
    their verdicts in OUTPUT_DIR/judge-cache (loop, online-dpo, cai) unless cache_dir is given."""

    def __post_init__(self) -> None:
        if self.judge_options and not self.judge:
            raise ValueError(
                f"--judge_options {self.judge_options} without --judge: give the judge they are for."
            )


@dataclass(kw_only=True)
class JudgeConfig(JudgeSpec):
    """A judge with its options (JudgeSpec), its batch size and the synthetic task reported beside it: the
    flags of bon, loop, cai, and through ScoringConfig ppo, rloo, grpo and online-dpo."""

    judge_batch_size: int = 32
    """Sequences per judge forward pass (reward models and llm judges)."""
    task: str = "auto"
    """Synthetic task whose gold reward is reported beside the judge's: auto (task.json beside the prompts),
    none, or a task name."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.judge_batch_size < 1:
            raise ValueError(f"judge_batch_size must be >= 1, got {self.judge_batch_size}.")


@dataclass(kw_only=True)
class ScoringConfig(JudgeConfig):
    """How sampled responses are judged (JudgeConfig) and turned into the score at the end of each response."""

    judge_batch_size: int = 64
    """Sequences per judge forward pass (reward models and llm judges); RL scores a whole rollout at once."""
    reward_normalization: Literal["initial_policy", "none"] = "initial_policy"
    """initial_policy: scores are standardised with the judge's mean and std on the starting policy's
    samples (Ziegler et al. 2019), measured once before training; none: raw scores."""
    reward_norm_samples: int = 256
    """Prompts sampled from the starting policy to measure the judge's mean and std."""
    reward_clip: float = 10.0
    """Clip standardised scores to [-reward_clip, reward_clip]; 0 turns clipping off."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response cut at --max_new_tokens without EOS (the 'EOS trick');
    0 turns it off."""
    heldout_judge: str = ""
    """A second judge (e.g. rm:OTHER_RM) scored on the held-out prompts, which the reward-hacking monitor
    compares the optimised judge with; the synthetic task's gold reward takes this role when it applies."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reward_norm_samples < 2:
            raise ValueError(f"reward_norm_samples must be >= 2, got {self.reward_norm_samples}.")
        if self.reward_clip < 0 or self.missing_eos_penalty < 0:
            raise ValueError(
                f"reward_clip and missing_eos_penalty must be >= 0, got {self.reward_clip} and "
                f"{self.missing_eos_penalty}."
            )


JUDGE_SPECS = "gold, gold:TASK, rm:PATH (or a bare PATH), or rm:PATH1,PATH2 for an ensemble"


@dataclass
class BoNConfig(JudgeConfig):
    """`preftune bon --model PATH --dataset PROMPTS --judge SPEC --output_dir OUT`: the judge (JudgeConfig)
    ranks each prompt's samples."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    n: int = 16
    """Samples per prompt (N); the curve in bon.json covers best-of-n for n = 1, 2, 4, ... up to N."""
    max_new_tokens: int = 32
    """Most tokens generated per response; generation also stops at EOS."""
    temperature: float = 1.0
    """Softmax temperature of sampling (must be > 0 when n > 1: greedy decoding repeats one response)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 keeps the whole distribution)."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 turns this off."""
    generation_batch_size: int = 64
    """Sequences per generate() call (each prompt appears n times)."""
    output_dir: str = ""
    """Folder for samples.jsonl, best.jsonl, pairs.jsonl and bon.json."""
    seed: int = 0
    """Seed of sampling: the same seed, prompts and generation_batch_size give the same samples."""
    max_prompts: int = 0
    """Use only the first max_prompts prompts of --dataset; 0 uses all."""
    device: str | None = None
    """Device to sample and score on (default: cuda if available, else cpu)."""
    disable_tqdm: bool = False
    """Hide the progress bars."""

    def __post_init__(self) -> None:
        super().__post_init__()
        usage = "preftune bon --model PATH --dataset PROMPTS --judge SPEC --output_dir OUT"
        for flag, value in (
            ("--model", self.model.model),
            ("--dataset", self.data.dataset),
            ("--judge", self.judge),
            ("--output_dir", self.output_dir),
        ):
            if not value:
                raise ValueError(f"{flag} is required: {usage} (judge specs: {JUDGE_SPECS}).")
        if self.data.eval_dataset is not None:
            raise ValueError(
                f"--eval_dataset {self.data.eval_dataset!r} is not used by preftune bon: it samples from the "
                "prompts of --dataset only. Drop --eval_dataset, or pass that file as --dataset."
            )
        if self.model.use_peft:
            raise ValueError(
                "--use_peft true would add an untrained LoRA adapter; preftune bon samples from --model as "
                "saved (an adapter folder works as --model). Drop --use_peft."
            )
        for name, value, least in (
            ("n", self.n, 1),
            ("max_prompts", self.max_prompts, 0),
            ("seed", self.seed, 0),
        ):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}.")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"temperature 0 is greedy decoding: all n={self.n} samples of a prompt would be the same "
                "response. Use a temperature > 0 (1.0 samples from the policy itself), or --n 1."
            )
        if self.data.max_length - self.max_new_tokens < 2:
            raise ValueError(
                f"max_length ({self.data.max_length}) leaves no room for a prompt after max_new_tokens "
                f"({self.max_new_tokens}); the prompt is cut to max_length - max_new_tokens tokens (at least "
                "2). Raise --max_length or lower --max_new_tokens."
            )
        if self.task not in ("auto", "none"):
            get_task(self.task)  # raises with the available names
        self.sampling_config()  # checks the sampling fields

    def sampling_config(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            generation_batch_size=self.generation_batch_size,
        )


def check_rl_sampling(sampling: SamplingConfig, model: ModelConfig) -> None:
    """RL learns from the policy's own samples: temperature > 0, no dropout in a LoRA adapter (the
    log-probs of sampling and of the update must come from the same function), and a warning when
    top-k/top-p make the sampling distribution differ from the one the log-probs are computed under."""
    if sampling.generation_backend == "vllm" and (
        importlib.util.find_spec("vllm") is None or not _cuda_available()
    ):
        raise ValueError(
            "--generation_backend vllm needs a CUDA GPU and the vllm package (pip install -e '.[vllm]'); "
            "use --generation_backend transformers here."
        )
    if model.use_peft and model.lora_dropout > 0:
        raise ValueError(
            f"--lora_dropout {model.lora_dropout}: RL compares log-probs of the same tokens at sampling and at "
            "the update, so dropout must be off in every model. Use --lora_dropout 0."
        )
    if sampling.temperature <= 0:
        raise ValueError(
            f"--temperature must be > 0 for RL (the policy learns from its own samples), got "
            f"{sampling.temperature}. Use 1.0 to sample the policy as it is."
        )
    if sampling.top_p < 1 or sampling.top_k > 0:
        logger.warning(
            "top_p=%s / top_k=%s: responses are sampled from a truncated distribution, but log-probs and the KL "
            "use the full one (at the temperature), so updates are slightly off-policy.",
            sampling.top_p,
            sampling.top_k,
        )


def _cuda_available() -> bool:
    import torch  # here, not at the top: the config classes import no torch

    return torch.cuda.is_available()
