"""The flags of `preftune ppo` (PPOConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/ppo.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from preftune.trainers.rl_config import RLConfig


@dataclass
class PPOConfig(RLConfig):
    value_model: str | None = None
    """Initial value model: default the reward model of --judge (rm:PATH), else --model (a new head). A reward
    model with K heads (rm --num_heads K) gives one value head, the mean of its K (the judge's mean score)."""
    share_backbone: bool = False
    """One copy of the base weights: the policy is a LoRA adapter, the value model a second adapter with
    a value head, the reference the base with adapters disabled (needs --use_peft)."""
    num_mini_batches: int = 1
    """Optimizer updates per PPO epoch; the rollout batch per process is per_device_train_batch_size x
    gradient_accumulation_steps x num_mini_batches sequences."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    clip_range: float = 0.2
    """PPO's epsilon: the policy ratio is clipped to [1 - clip_range, 1 + clip_range]."""
    clip_range_value: float = 0.2
    """Values are clipped to old value +- this in the value loss; 0 turns value clipping off."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 0.95
    """GAE's lambda (bias-variance trade-off of the advantage)."""
    kl_coef: float = 0.05
    """Weight of the KL to the reference (initial value when --target_kl is set)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """k1: -kl_coef * (logp - ref_logp) per token in the reward; k2 or k3: a KL term in the loss instead."""
    target_kl: float | None = None
    """Adaptive KL controller (Ziegler et al. 2019): the sequence-level KL it steers kl_coef towards; None
    keeps kl_coef fixed."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller, in samples."""
    whiten_advantages: bool = True
    """Standardise advantages over the global batch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in (("num_mini_batches", self.num_mini_batches), ("ppo_epochs", self.ppo_epochs)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if not 0 < self.clip_range < 1 or self.clip_range_value < 0 or self.vf_coef < 0:
            raise ValueError(
                f"clip_range must be in (0, 1), clip_range_value and vf_coef >= 0; got {self.clip_range}, "
                f"{self.clip_range_value}, {self.vf_coef}."
            )
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}.")
        if self.kl_coef < 0 or (self.target_kl is not None and self.target_kl <= 0) or self.kl_horizon < 1:
            raise ValueError(
                f"kl_coef must be >= 0, target_kl > 0 (or unset), kl_horizon >= 1; got "
                f"{self.kl_coef}, {self.target_kl}, {self.kl_horizon}."
            )
        if self.share_backbone and not self.model.use_peft:
            raise ValueError(
                "--share_backbone puts policy and value adapters on one base model: add --use_peft true."
            )
        if self.share_backbone and (self.value_model or self.ref_model):
            raise ValueError(
                "--share_backbone uses the base model as reference and a new value adapter on it; "
                "drop --value_model and --ref_model."
            )

    @property
    def rollout_size(self) -> int:
        """Sequences sampled per process per step."""
        return (
            self.train.per_device_train_batch_size
            * self.train.gradient_accumulation_steps
            * self.num_mini_batches
        )
