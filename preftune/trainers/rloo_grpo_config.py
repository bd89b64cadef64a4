"""The flags of `preftune rloo` and `preftune grpo` (RLOOConfig, GRPOConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/rloo_grpo.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from preftune.trainers.rl_config import RLConfig


@dataclass
class RLOOConfig(RLConfig):
    advantage_estimator: Literal["rloo", "grpo"] = "rloo"
    """rloo: reward minus the mean of the other samples' rewards; grpo: standardised within the group."""
    num_generations: int = 4
    """Samples per prompt (k >= 2); the rollout batch must be a multiple of it."""
    scale_rewards: bool = True
    """GRPO: divide by the group's std; false is Dr. GRPO (mean-centred only)."""
    num_mini_batches: int = 1
    """Optimizer updates per epoch; the rollout batch per process is per_device_train_batch_size x
    gradient_accumulation_steps x num_mini_batches sequences."""
    ppo_epochs: int = 1
    """Passes over each rollout batch (1: on-policy REINFORCE; more reuse samples with clipping)."""
    clip_range: float = 0.2
    """The policy ratio is clipped to [1 - clip_range, 1 + clip_range] (active from the second update)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1: kl_coef * sum(logp - ref_logp) is subtracted from the sequence reward (RLOO); k3: kl_coef * k3 per
    token is added to the loss (GRPO)."""
    rollout_logps: Literal["recompute", "sampling"] = "recompute"
    """The policy's log-probs of its samples before the update: recompute them with a forward pass, or take
    the ones recorded while sampling (one forward fewer per step; equal to 1e-6 in float32 with the
    transformers backend, the gap is logged as rollout/logp_gap; under bf16 autocast or another backend
    they differ a little and the clipped ratio absorbs it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (the others are the baseline), got {self.num_generations}."
            )
        if self.rollout_size % self.num_generations:
            raise ValueError(
                f"The rollout batch per process ({self.rollout_size} sequences = per_device_train_batch_size x "
                f"gradient_accumulation_steps x num_mini_batches) must be a multiple of num_generations "
                f"({self.num_generations})."
            )
        if (
            self.num_mini_batches < 1
            or self.ppo_epochs < 1
            or not 0 < self.clip_range < 1
            or self.kl_coef < 0
        ):
            raise ValueError(
                f"num_mini_batches and ppo_epochs must be >= 1, clip_range in (0, 1), kl_coef >= 0; got "
                f"{self.num_mini_batches}, {self.ppo_epochs}, {self.clip_range}, {self.kl_coef}."
            )
        if not self.scale_rewards and self.advantage_estimator != "grpo":
            raise ValueError("--scale_rewards false (Dr. GRPO) applies to --advantage_estimator grpo only.")

    @property
    def rollout_size(self) -> int:
        """Sequences sampled per process per step."""
        return (
            self.train.per_device_train_batch_size
            * self.train.gradient_accumulation_steps
            * self.num_mini_batches
        )


@dataclass
class GRPOConfig(RLOOConfig):
    """RLOOConfig with GRPO's defaults: group-standardised advantages and a k3 KL term in the loss."""

    advantage_estimator: Literal["rloo", "grpo"] = "grpo"
    """rloo: reward minus the mean of the other samples' rewards; grpo: standardised within the group."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """k1: kl_coef * sum(logp - ref_logp) is subtracted from the sequence reward (RLOO); k3: kl_coef * k3 per
    token is added to the loss (GRPO)."""
