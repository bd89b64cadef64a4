"""Critic-free RL: RLOO and GRPO (k samples per prompt, the other samples as the baseline).

Papers: RLOO (Ahmadian et al. 2024, arXiv 2402.14740, eq. 10: REINFORCE with the leave-one-out
mean of the other k-1 rewards as baseline, the KL penalty in the sequence reward); GRPO (Shao
et al. 2024, arXiv 2402.03300, eq. 3 and section 4.1.2: rewards standardised within each
group, a k3 KL term in the loss); Dr. GRPO (Liu et al. 2025, arXiv 2503.20783: no division
by the group's std, --scale_rewards false).

Each step: sample k responses for each prompt of the batch; with no gradient the policy's and
the reference's log-probs and the judge's scores (standardised on the starting policy's
samples, clipped, missing-EOS penalty as in PPO); the sequence reward is the score minus
kl_coef * sum(logp - ref_logp) with --kl_estimator k1, or the score alone with k3 (then
kl_coef * k3 per token is added to the loss); advantages from the group (leave-one-out or
standardised) are given to every token of the response; then ppo_epochs passes of the clipped
surrogate over shuffled mini-batches (with one epoch the ratio is 1: plain REINFORCE with a
baseline, as in the RLOO paper).
Departures: the loss is normalised by the global number of response tokens of each
mini-batch (as DAPO and TRL's default), not per sequence; GRPO's std uses Bessel's
correction as in TRL.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from preftune.engine.hacking import RewardHackingDetected
from preftune.engine.minibatch import minibatch_updates
from preftune.losses.kl import KL_ESTIMATORS
from preftune.losses.policy_gradient import grpo_advantages, ppo_policy_loss, rloo_advantages
from preftune.models.actor_critic import ActorCritic
from preftune.ops.reduce import masked_sum
from preftune.rollout.experience import (
    model_inputs,
    per_token,
    rollout_examples,
)
from preftune.trainers.inputs import Given
from preftune.trainers.rl_base import RLTrainer
from preftune.trainers.rloo_grpo_config import GRPOConfig, RLOOConfig

__all__ = ["GRPOConfig", "GRPOTrainer", "RLOOConfig", "RLOOTrainer"]

logger = logging.getLogger(__name__)


class RLOOTrainer(RLTrainer):
    """`RLOOTrainer(config).train()` runs RLOO or GRPO (by config.advantage_estimator); from Python,
    `RLOOTrainer(args=config, model=model, processing_class=tokenizer, train_dataset=prompts, judge=judge)`."""

    def _build(self, given: Given) -> None:
        """`judge` and `heldout_judge` replace the judges named by --judge and --heldout_judge (any object with
        `score(prompts, responses) -> (N,)`); the other objects replace --model, --ref_model, the tokenizer
        saved with the model, --dataset (prompts), --eval_dataset and the accelerator built from the config."""
        model, ref_model, judge, heldout_judge = self._take_inputs(given)
        cfg = self.config
        self._load_setup(judge, heldout_judge)
        policy = self._policy(model)
        self.reference = self._frozen_reference(model, ref_model)
        self.prompts_per_process = cfg.rollout_size // cfg.num_generations
        self._start_engine(ActorCritic(policy), self.prompts_per_process * self.accelerator.num_processes)
        self._judge_statistics()

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self._start_monitor()
        try:
            for micro_indices in engine.steps():
                experience, metrics = self.experience([i for micro in micro_indices for i in micro])
                loss, update_metrics, num_tokens = self.update(experience)
                evaluate = self.evaluate if self.setup.evaluator else None
                engine.end_step(loss, num_tokens, {**metrics, **update_metrics}, evaluate)
        except RewardHackingDetected as stop:  # --stop_on_hacking: keep the policy as it is now
            logger.error("Stopping at step %d: %s", engine.step, stop)
        estimator = self.config.advantage_estimator
        return self._finish(estimator.upper(), {"advantage_estimator": estimator})

    @torch.no_grad()
    def make_experience(self, prompt_indices: list[int]) -> tuple[dict[str, Any], dict[str, float]]:
        """k samples per prompt, their log-probs, scores and group advantages."""
        cfg, setup = self.config, self.setup
        k, device, chunk = cfg.num_generations, self.accelerator.device, cfg.train.per_device_train_batch_size
        rollout = setup.rollout(
            self.policy, [setup.prompts.ids[i] for i in prompt_indices], self.engine.step, k
        )
        examples, mask = rollout_examples(rollout), rollout.mask  # N = P * k sequences, (N, T)
        if cfg.rollout_logps == "sampling":
            logps = {"logps": rollout.logps}
        else:
            with self.accelerator.autocast():  # the precision of the update's forward
                logps = per_token(
                    lambda b: {"logps": self.policy(*model_inputs(b))},
                    examples,
                    mask,
                    chunk,
                    self.pad_id,
                    device,
                )
        ref_logps = self._reference_logps(examples, mask)
        prompts = [setup.prompts.prompts[i] for i in prompt_indices for _ in range(k)]
        raw, scores = self._judged(setup.judge, prompts, rollout)
        kl = masked_sum(logps["logps"] - ref_logps, mask, dim=1)  # (N,) sequence log-ratio, k1
        rewards = scores - cfg.kl_coef * kl if cfg.kl_estimator == "k1" else scores
        groups = rewards.view(-1, k)  # (P, k): the k samples of a prompt are consecutive
        if cfg.advantage_estimator == "rloo":
            advantages = rloo_advantages(groups).reshape(-1)
        else:
            advantages = grpo_advantages(groups, scale_rewards=cfg.scale_rewards).reshape(-1)
        experience = {
            "examples": examples,
            "mask": mask,
            "logps": logps["logps"],
            "ref_logps": ref_logps,
            "advantages": advantages[:, None].expand_as(mask) * mask,
        }
        sums = self.engine.global_sums(
            {
                "num_sequences": float(len(raw)),
                "num_tokens": mask.sum().float(),
                "reward/raw": raw.sum(),
                "reward/normalized": scores.sum(),
                "reward/total": rewards.sum(),
                "kl/mean": kl.sum(),
                "response/length": mask.sum().float(),
                "response/ended": rollout.ended.float().sum(),
                "logp_gap_sum": masked_sum((rollout.logps - logps["logps"]).abs(), mask),
                "reward/group_std": groups.std(dim=1).sum() * k,
            }
        )
        n, tokens = sums.pop("num_sequences"), sums.pop("num_tokens")
        gap = sums.pop("logp_gap_sum")
        metrics = {name: value / n for name, value in sums.items()}
        if cfg.rollout_logps == "recompute":
            metrics["rollout/logp_gap"] = gap / tokens
        metrics["kl/per_token"] = sums["kl/mean"] / tokens
        metrics["rollout/num_tokens"] = tokens
        return experience, metrics

    def update(self, experience: dict[str, Any]) -> tuple[float, dict[str, float], float]:
        """ppo_epochs x num_mini_batches optimizer updates; mean loss, token-averaged metrics, tokens."""
        cfg = self.config
        # with sampling-time log-probs, the first mini-batch (still the sampling policy) measures their gap
        measure = cfg.rollout_logps == "sampling"

        def micro_loss(rows: Tensor, num_tokens: float, first: bool) -> tuple[Tensor, dict[str, Tensor]]:
            return self._micro_loss(experience, rows, num_tokens, measure and first)

        loss, metrics, tokens = minibatch_updates(
            self.engine, experience["mask"], cfg.ppo_epochs, cfg.num_mini_batches, micro_loss
        )
        if measure:  # both are divided by all tokens; their ratio is the gap per measured token
            metrics["rollout/logp_gap"] = metrics.pop("gap_sum") / max(metrics.pop("gap_tokens"), 1e-12)
        return loss, metrics, tokens

    def _micro_loss(
        self, experience: dict[str, Any], rows: Tensor, num_tokens: float, measure_gap: bool = False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Clipped surrogate (+ k3 KL) of the sequences `rows`, / the mini-batch's global token count."""
        cfg, device = self.config, self.accelerator.device
        out, flat = self._forward_rows(experience, rows)
        ones = torch.ones_like(out.logps, dtype=torch.bool)
        token_loss, metrics = ppo_policy_loss(
            out.logps, flat("logps"), flat("advantages"), ones, cfg.clip_range
        )
        metrics = {**metrics, "policy/loss": token_loss.detach(), "policy/entropy": out.entropy}
        if cfg.kl_estimator == "k3":
            kl = KL_ESTIMATORS["k3"](out.logps - flat("ref_logps"))
            token_loss = token_loss + cfg.kl_coef * kl
            metrics["kl/loss_term"] = kl.detach()
        sums = {name: value.float().sum() for name, value in metrics.items()}
        sums["tokens"] = torch.tensor(float(out.logps.numel()), device=device)
        if measure_gap:  # the policy has not been updated yet: training-time vs sampling-time log-probs
            sums["gap_sum"] = (out.logps.detach() - flat("logps")).abs().sum()
            sums["gap_tokens"] = sums["tokens"]
        return token_loss.sum() / num_tokens, sums


GRPOTrainer = RLOOTrainer
"""GRPO is RLOOTrainer with a GRPOConfig (group-standardised advantages, k3 KL in the loss)."""
