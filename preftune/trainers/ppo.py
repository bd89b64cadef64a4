"""RLHF with PPO: policy, frozen reference, judge (reward model) and value model.

Papers: PPO (Schulman et al. 2017, arXiv 1707.06347, eq. 7 clipped surrogate), GAE (Schulman
et al. 2015, arXiv 1506.02438, eq. 16), RLHF for language models (Ziegler et al. 2019, arXiv
1909.08593: per-token KL penalty in the reward, adaptive KL controller, reward normalisation;
Ouyang et al. 2022, arXiv 2203.02155), and the implementation details collected by Huang et
al. 2024 ("The N+ implementation details of RLHF with PPO", arXiv 2403.17031).

Each step (one PPO iteration):
1. sample one response per prompt of the batch from the policy (`rollout/`), cut at EOS;
2. with no gradient: the policy's log-probs (at the sampling temperature), the reference's,
   the value of each state, and the judge's score of each response;
3. the score is standardised (judge mean/std on the starting policy's samples), clipped, and
   penalised when the response has no EOS; it is placed on the last response token, and each
   token gets -kl_coef * (logp - ref_logp) (k1); with --kl_estimator k2/k3 the KL is a loss
   term instead;
4. GAE gives advantages (whitened over the global batch) and returns;
5. ppo_epochs passes over shuffled mini-batches: clipped policy loss + vf_coef * clipped value
   loss (+ kl_coef * KL term), one optimizer update per mini-batch, gradient clipping;
6. the adaptive controller (when --target_kl is set) updates kl_coef from the measured KL.
Departures: one optimizer and one learning rate for policy and value model (one module); the
value of a state is read at the position that predicts the next token (so V(s_t) sits beside
logp(a_t)); the loss is normalised by the global number of tokens in each mini-batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor

from preftune.engine.hacking import RewardHackingDetected
from preftune.engine.minibatch import minibatch_updates
from preftune.judges import RewardModelJudge
from preftune.losses.kl import KL_ESTIMATORS
from preftune.losses.policy_gradient import (
    adaptive_kl_coef,
    gae,
    kl_penalized_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from preftune.models.actor_critic import VALUE_ADAPTER, ActorCritic, SharedBackboneActorCritic
from preftune.models.loading import check_model_path, load_scalar_model, load_tokenizer, save_final
from preftune.models.logps import ResponseLogps
from preftune.models.scalar import PooledScorer
from preftune.ops.reduce import masked_sum
from preftune.rollout.experience import (
    model_inputs,
    per_token,
    rollout_examples,
)
from preftune.rollout.generate import RolloutBatch
from preftune.trainers.inputs import Given
from preftune.trainers.ppo_config import PPOConfig
from preftune.trainers.rl_base import RLTrainer

__all__ = ["PPOConfig", "PPOTrainer"]

logger = logging.getLogger(__name__)


class PPOTrainer(RLTrainer):
    """`PPOTrainer(config).train()` runs the whole job; from Python, `PPOTrainer(args=config, model=model,
    processing_class=tokenizer, train_dataset=prompts, judge=judge)`."""

    def _build(self, given: Given) -> None:
        """`judge` and `heldout_judge` replace the judges named by --judge and --heldout_judge (any object with
        `score(prompts, responses) -> (N,)`); the other objects replace --model, --ref_model, the tokenizer
        saved with the model, --dataset (prompts), --eval_dataset and the accelerator built from the config.
        The value model is always loaded from a path (--value_model, the reward model's or --model)."""
        model, ref_model, judge, heldout_judge = self._take_inputs(given)
        cfg = self.config
        if cfg.value_model:
            check_model_path(cfg.value_model, "--value_model")
        self._load_setup(judge, heldout_judge)
        policy = self._policy(model)
        if cfg.share_backbone:
            actor_critic: torch.nn.Module = SharedBackboneActorCritic(policy, self._lora_config(policy))
            self.reference = None
        else:
            if cfg.model.use_peft:
                logger.warning(
                    "--use_peft without --share_backbone: the value model is a full, trainable copy of its "
                    "checkpoint (with its own optimizer state). --share_backbone true keeps one copy of the base."
                )
            actor_critic = ActorCritic(policy, self._load_value_model())
            self.reference = self._frozen_reference(model, ref_model)
        self._start_engine(actor_critic, cfg.rollout_size * self.accelerator.num_processes)
        self._judge_statistics()
        self.engine.trainer_state.setdefault("kl_coef", cfg.kl_coef)

    def _lora_config(self, policy: ResponseLogps) -> Any:
        assert isinstance(policy.model, PeftModel), "checked in PPOConfig: --share_backbone needs --use_peft"
        return policy.model.peft_config["default"]

    def _load_value_model(self) -> PooledScorer:
        cfg = self.config
        judge = self.setup.judge
        from_judge = judge.paths[0] if isinstance(judge, RewardModelJudge) and len(judge.paths) == 1 else None
        path = cfg.value_model or from_judge or cfg.model.model
        if not path:
            raise ValueError(
                "PPO needs a value model to start from: pass --value_model PATH (a causal LM or reward model "
                "folder with the policy's tokenizer); with a model object there is no --model path to use."
            )
        value = load_scalar_model(
            path,
            cfg.model.dtype,
            None,
            cfg.model.trust_remote_code,
            "--value_model",
            1,
            self.pad_id,
            average_heads=True,  # an ensemble reward model (rm --num_heads K): one head, the mean of the K
        )
        value_vocab = load_tokenizer(path, cfg.model.trust_remote_code, "--value_model").get_vocab()
        if value_vocab != self.tokenizer.get_vocab():
            raise ValueError(
                f"The value model would start from {path}, whose tokenizer differs from the policy's, so it cannot "
                f"read the policy's tokens. Pass --value_model {cfg.model.model} (the policy gets a new value head)."
            )
        logger.info("Value model: initialised from %s.", path)
        return PooledScorer(value)

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self._start_monitor()
        try:
            for micro_indices in engine.steps():
                prompts = [i for micro in micro_indices for i in micro]
                experience, metrics = self.experience(prompts)
                loss, update_metrics, num_tokens = self.ppo_update(experience)
                metrics.update(update_metrics)
                if self.config.target_kl is not None:
                    state = engine.trainer_state
                    state["kl_coef"] = adaptive_kl_coef(
                        state["kl_coef"],
                        metrics["kl/mean"],
                        self.config.target_kl,
                        self.config.kl_horizon,
                        len(prompts) * self.accelerator.num_processes,
                    )
                engine.end_step(loss, num_tokens, metrics, self.evaluate if self.setup.evaluator else None)
        except RewardHackingDetected as stop:  # --stop_on_hacking: keep the policy as it is now
            logger.error("Stopping at step %d: %s", engine.step, stop)
        return self._finish("PPO", {})

    @torch.no_grad()
    def make_experience(self, prompt_indices: list[int]) -> tuple[dict[str, Any], dict[str, float]]:
        """Sample, score and compute advantages for this process's prompts (steps 1-4 of the docstring)."""
        cfg, engine, device = self.config, self.engine, self.accelerator.device
        setup, state = self.setup, engine.trainer_state
        rollout = setup.rollout(self.policy, [setup.prompts.ids[i] for i in prompt_indices], engine.step)
        examples, mask = rollout_examples(rollout), rollout.mask  # N sequences, (N, T)
        actor_critic = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():  # the precision of the update's forward
            old = per_token(
                lambda b: actor_critic(*model_inputs(b))._asdict(),
                examples,
                mask,
                cfg.train.per_device_train_batch_size,
                self.pad_id,
                device,
            )
        ref_logps = self._reference_logps(examples, mask)
        raw, scores = self._judged(setup.judge, [setup.prompts.prompts[i] for i in prompt_indices], rollout)
        logratio = torch.where(mask, old["logps"] - ref_logps, 0.0)  # (N, T)
        kl_in_reward = state["kl_coef"] if cfg.kl_estimator == "k1" else 0.0
        rewards = kl_penalized_rewards(scores, logratio, mask, kl_in_reward)
        advantages, returns = gae(rewards, old["values"], mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = setup.global_whiten(advantages, mask, cfg.sampling.max_new_tokens)
        experience = {
            "examples": examples,
            "mask": mask,
            "logps": old["logps"],
            "values": old["values"],
            "ref_logps": ref_logps,
            "advantages": advantages,
            "returns": returns,
        }
        return experience, self._rollout_metrics(rollout, old, logratio, raw, scores, returns)

    def _rollout_metrics(
        self,
        rollout: RolloutBatch,
        old: dict[str, Tensor],
        logratio: Tensor,
        raw: Tensor,
        scores: Tensor,
        returns: Tensor,
    ) -> dict[str, float]:
        """Rollout-time metrics averaged over the global batch (one collective)."""
        mask, state = rollout.mask, self.engine.trainer_state
        residual = returns - old["values"]
        sums = self.engine.global_sums(
            {
                "num_sequences": float(len(raw)),
                "num_tokens": mask.sum().float(),
                "reward/raw": raw.sum(),
                "reward/normalized": scores.sum(),
                "kl/mean": logratio.sum(),
                "response/length": mask.sum().float(),
                "response/ended": rollout.ended.float().sum(),
                "rollout/logp_gap": masked_sum((rollout.logps - old["logps"]).abs(), mask),
                "returns_sum": masked_sum(returns, mask),
                "returns_sq": masked_sum(returns**2, mask),
                "residual_sum": masked_sum(residual, mask),
                "residual_sq": masked_sum(residual**2, mask),
            }
        )
        n, tokens = sums.pop("num_sequences"), sums.pop("num_tokens")
        var_returns = sums.pop("returns_sq") / tokens - (sums.pop("returns_sum") / tokens) ** 2
        var_residual = sums.pop("residual_sq") / tokens - (sums.pop("residual_sum") / tokens) ** 2
        metrics = {name: value / n for name, value in sums.items()}
        metrics["rollout/logp_gap"] = sums["rollout/logp_gap"] / tokens
        metrics["kl/per_token"] = sums["kl/mean"] / tokens
        metrics["kl/coef"] = state["kl_coef"]
        metrics["value/explained_variance"] = 1 - var_residual / max(var_returns, 1e-12)
        metrics["rollout/num_tokens"] = tokens
        return metrics

    def ppo_update(self, experience: dict[str, Any]) -> tuple[float, dict[str, float], float]:
        """ppo_epochs x num_mini_batches optimizer updates on one rollout batch (step 5).

        Returns the mean loss, token-averaged update metrics and the tokens trained on.
        """
        cfg = self.config

        def micro_loss(rows: Tensor, num_tokens: float, first: bool) -> tuple[Tensor, dict[str, Tensor]]:
            return self._micro_loss(experience, rows, num_tokens)

        return minibatch_updates(
            self.engine, experience["mask"], cfg.ppo_epochs, cfg.num_mini_batches, micro_loss
        )

    def _micro_loss(
        self, experience: dict[str, Any], rows: Tensor, num_tokens: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the sequences `rows` (divided by the mini-batch's global token count) and metric sums."""
        cfg, device = self.config, self.accelerator.device
        out, flat = self._forward_rows(experience, rows)
        ones = torch.ones_like(out.logps, dtype=torch.bool)
        pg, pg_metrics = ppo_policy_loss(out.logps, flat("logps"), flat("advantages"), ones, cfg.clip_range)
        vf, vf_metrics = ppo_value_loss(
            out.values, flat("values"), flat("returns"), ones, cfg.clip_range_value
        )
        token_loss = pg + cfg.vf_coef * vf
        metrics = {**pg_metrics, **vf_metrics, "policy/loss": pg.detach(), "value/loss": vf.detach()}
        if cfg.kl_estimator != "k1":
            kl = KL_ESTIMATORS[cfg.kl_estimator](out.logps - flat("ref_logps"))
            token_loss = token_loss + self.engine.trainer_state["kl_coef"] * kl
            metrics["kl/loss_term"] = kl.detach()
        metrics["policy/entropy"] = out.entropy
        sums = {name: value.float().sum() for name, value in metrics.items()}
        sums["tokens"] = torch.tensor(float(out.logps.numel()), device=device)
        return token_loss.sum() / num_tokens, sums

    def _save_policy(self, final: Path, weights: dict[str, Tensor] | None) -> None:
        if self.config.share_backbone:  # only the policy adapter is merged into final/ (LoRA: not sharded)
            self.policy.model.delete_adapter(VALUE_ADAPTER)
        save_final(self.policy.model, self.tokenizer, final, weights)
