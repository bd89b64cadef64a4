"""Fields shared by every training command (names as in transformers' TrainingArguments).

Imports neither torch nor accelerate at the top, so `preftune <command> --help` does not load them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RUN_CONTROL = ("resume", "overwrite_output_dir")
"""Flags that say how a run starts, not what it computes. They are left out of the config.yaml a run
saves, so that `--config RUN/config.yaml --output_dir NEW` replays RUN as a new run (a replayed
`resume: true` would look for checkpoints in NEW; `overwrite_output_dir: true` would delete NEW's run)."""


@dataclass
class TrainConfig:
    output_dir: str = ""
    """Folder for config.yaml, metrics.jsonl, checkpoints/, final/ and summary.json."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (after warmup)."""
    per_device_train_batch_size: int = 8
    """Examples (or packed rows) per micro-batch on each process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Global batch = this x per-device batch x processes."""
    max_steps: int = -1
    """Optimizer steps to run; -1 derives them from num_train_epochs."""
    num_train_epochs: float = 1.0
    """Passes over the training data, used when max_steps is -1."""
    warmup_ratio: float = 0.0
    """Fraction of the steps with a linear learning-rate warmup from 0."""
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup (to 0 for cosine and linear)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    optim: Literal["adamw_torch", "adamw_torch_fused"] | None = None
    """AdamW implementation (TRL's names): adamw_torch_fused is torch's fused kernel, which updates each weight in
    place (TRL's default); adamw_torch is torch.optim.AdamW's default path, which allocates a temporary the size of
    a weight matrix (a loop over the tensors on CPU, one the size of all of them with CUDA's foreach kernels).
    Default (null): fused on CUDA, adamw_torch on CPU (the numbers in RESULTS.md were measured with it)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 turns clipping off."""
    logging_steps: int = 10
    """Write a metrics.jsonl line every this many optimizer steps (and at the last step)."""
    save_steps: int = 0
    """Write a resumable checkpoint every this many steps (and at the last); 0 writes none (final/ always)."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (the newest); 0 keeps all."""
    eval_steps: int = 0
    """Evaluate on --eval_dataset every this many steps; 0 evaluates only at the end."""
    resume: bool = False
    """Continue from the newest checkpoint in output_dir/checkpoints (the run must be the same)."""
    overwrite_output_dir: bool = False
    """Start a new run in an output_dir that holds an earlier run (its checkpoints, final/, metrics are deleted)."""
    seed: int = 0
    """Seed for initialisation, data order and sampling."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (transformers'
    non-reentrant checkpointing, on every model the run trains): less activation memory for one more forward
    pass of each layer."""
    bf16: bool | None = None
    """bfloat16 mixed precision (autocast). Default (null): on where a CUDA GPU supports bfloat16, off
    elsewhere (float32 on CPU); true or false decides."""
    fp16: bool = False
    """float16 mixed precision with loss scaling (CUDA only)."""
    report_to: list[str] = field(default_factory=lambda: ["none"])
    """Trackers through accelerate: tensorboard, wandb, ... or none. metrics.jsonl is always written."""
    disable_tqdm: bool = False
    """Hide the progress bar."""

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": self.learning_rate > 0,
            "per_device_train_batch_size": self.per_device_train_batch_size >= 1,
            "gradient_accumulation_steps": self.gradient_accumulation_steps >= 1,
            "num_train_epochs": self.num_train_epochs > 0,
            "logging_steps": self.logging_steps >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or >= 1, got {self.max_steps}.")
        for name, value in (
            ("save_steps", self.save_steps),
            ("save_total_limit", self.save_total_limit),
            ("eval_steps", self.eval_steps),
            ("max_grad_norm", self.max_grad_norm),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {value}.")
        if self.bf16 and self.fp16:
            raise ValueError("Choose one of --bf16 and --fp16, not both.")
        if set(self.report_to) - {"none"}:
            from accelerate.utils import LoggerType  # here, not at the top: --help needs no accelerate

            trackers = {tracker.value for tracker in LoggerType} | {"none"}
            unknown = set(self.report_to) - trackers
            if unknown:
                raise ValueError(f"Unknown --report_to {sorted(unknown)}; choose from {sorted(trackers)}.")
        if self.fp16:
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    "--fp16 needs a CUDA device (loss scaling); on CPU use --bf16 true or neither."
                )


def require_run_inputs(model: Any, dataset: Any, train: TrainConfig) -> None:
    """The flags every training command needs, checked before any file is read. `model` and `dataset` are
    paths, or the objects a trainer was given in their place (preftune/trainers/inputs.py)."""
    for flag, value in (("--model", model), ("--dataset", dataset)):
        if value is None or (isinstance(value, str) and not value):
            raise ValueError(f"{flag} is required: pass {flag} PATH.")
    if not train.output_dir:
        raise ValueError("--output_dir is required: the folder for checkpoints, metrics and final/.")


class RunInputs:
    """Base of the training configs (fields `model`, `data`, `train`): the command line checks --model,
    --dataset and --output_dir as it parses them (preftune.config.parse_config calls `check_run_inputs`);
    from Python a trainer checks them once the objects it was given (a model, a dataset) stand in for
    the paths, so a config may leave those empty."""

    def check_run_inputs(self) -> None:
        config: Any = self
        require_run_inputs(config.model.model, config.data.dataset, config.train)
