"""What the RL trainers (PPO, RLOO/GRPO, online DPO) share around their algorithm, written once:

- taking their inputs: objects from Python (a model, a reference, a tokenizer, datasets, judges, an
  accelerator) or the config's paths from the command line (trainers/inputs.py);
- the policy (at the sampling temperature) and the frozen reference;
- the engine and the reward-hacking monitor, restored on resume;
- the held-out evaluation, shown to the monitor at step 0 and at every evaluation;
- the final save and summary.

Each algorithm (sampling, scoring, advantages or pairs, its loss, its `train` loop) stays in its own
file, readable top to bottom; this class holds none of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from preftune.config import config_to_flat_dict
from preftune.engine import Engine
from preftune.engine.hacking import HackingMonitor, watch_evaluation, watch_start
from preftune.judges import check_judge_spec
from preftune.models.loading import save_final, token_id
from preftune.models.logps import ResponseLogps, reference_view
from preftune.rollout.experience import collate_on, judge_scores, model_inputs, per_token, shape_scores
from preftune.rollout.rl_setup import RLSetup
from preftune.trainers.inputs import (
    Given,
    ModelInput,
    Trainer,
    accelerator_for,
    policy_for,
    reference_for,
    take_reference,
    tokenizer_for,
)

logger = logging.getLogger(__name__)


class RLTrainer(Trainer):
    """The RL trainers' shared scaffolding (see the module docstring); a subclass runs its algorithm."""

    takes = (*Trainer.takes, "ref_model", "judge", "heldout_judge")

    config: Any
    tokenizer: PreTrainedTokenizerBase
    pad_id: int
    accelerator: Accelerator
    setup: RLSetup
    reference: ResponseLogps | None
    engine: Engine
    model: torch.nn.Module
    monitor: HackingMonitor

    def _take_inputs(self, given: Given) -> tuple[ModelInput, ModelInput, Any, Any]:
        """Check every checkpoint and judge spec before anything loads (--judge with the config's
        --judge_options, where it has them; a judge object given replaces its spec), then build the tokenizer
        and accelerator. Returns the model, reference, judge and held-out judge given (None: from the config)."""
        config, model, judge, heldout_judge = self.config, given.model, given.judge, given.heldout_judge
        ref_model = take_reference(config, given.ref_model)
        checks = (
            (config.scoring.judge, judge, config.scoring.judge_options),
            (config.scoring.heldout_judge, heldout_judge, None),
        )
        for spec, judge_object, options in checks:
            if spec and judge_object is None:
                check_judge_spec(spec, options)
        self.tokenizer = tokenizer_for(config.model, model, given.processing_class)
        self.pad_id = token_id(self.tokenizer, "pad")
        self.accelerator = accelerator_for(config.train, given.accelerator)
        return model, ref_model, judge, heldout_judge

    def _load_setup(self, judge: Any, heldout_judge: Any) -> None:
        """The prompts (read and encoded before any model loads), the judge (`judge`, or the one --judge
        names) and the held-out evaluation."""
        cfg = self.config
        self.setup = RLSetup.load(
            cfg.data,
            cfg.sampling,
            cfg.scoring,
            self.tokenizer,
            self.accelerator,
            cfg.train.per_device_train_batch_size,
            cfg.train.seed,
            judge,
            heldout_judge,
        )

    def _policy(self, model: ModelInput) -> ResponseLogps:
        """The trainable policy (the object given or --model, with LoRA when --use_peft) at the sampling
        temperature."""
        return ResponseLogps(policy_for(self.config.model, model), self.config.sampling.temperature)

    def _frozen_reference(self, model: ModelInput, ref_model: ModelInput) -> ResponseLogps | None:
        """The frozen reference at the sampling temperature (None: the LoRA policy with its adapter off)."""
        cfg = self.config
        return reference_for(
            cfg.model, cfg.ref_model, model, ref_model, self.accelerator.device, cfg.sampling.temperature
        )

    def _start_engine(self, model: torch.nn.Module, items_per_step: int | None = None) -> None:
        """The engine over the training prompts (restoring a checkpoint on resume), the generation backend
        and the reward-hacking monitor with its restored state."""
        cfg = self.config
        self.engine = Engine(
            cfg.train,
            model,
            len(self.setup.prompts),
            config_to_flat_dict(cfg),
            self.accelerator,
            items_per_step=items_per_step,
            shardable=True,  # rollouts, statistics and evaluation sample in Engine.gathered()
        )
        self.model = self.engine.model
        if self.engine.sharded and cfg.sampling.generation_backend == "vllm":
            raise ValueError(
                "--generation_backend vllm under FSDP is not supported yet (the engine's weight updates read "
                "whole weights): sample with --generation_backend transformers under FSDP, or use vLLM with DDP."
            )
        self.setup.start_backend(self.policy, cfg.data.max_length)
        self.monitor = HackingMonitor(cfg.hacking)
        if "hacking" in self.engine.trainer_state:  # restored on resume
            self.monitor.load_state_dict(self.engine.trainer_state["hacking"])

    def _forward_rows(
        self, experience: dict[str, Any], rows: torch.Tensor
    ) -> tuple[Any, Callable[[str], torch.Tensor]]:
        """The model on the sequences `rows` of a rollout's `experience` (outputs per response token, (M,)),
        and `flat(name)`, which reads `experience[name]` (N, T) at the same tokens in the same order."""
        device = self.accelerator.device
        batch = collate_on([experience["examples"][i] for i in rows.tolist()], self.pad_id, device)
        out = self.model(*model_inputs(batch))
        mask = experience["mask"][rows]

        def flat(name: str) -> torch.Tensor:
            return experience[name][rows][mask].to(device)

        return out, flat

    def _judge_statistics(self) -> None:
        """The judge's mean and std on the starting policy's samples (reward standardisation), once per run."""
        state = self.engine.trainer_state  # restored on resume
        if "reward_mean" not in state:
            with self.engine.gathered():
                state.update(self.setup.score_statistics(self.policy, self.engine.global_sum))

    @property
    def policy(self) -> ResponseLogps:
        return self.accelerator.unwrap_model(self.model).policy

    def _reference(self) -> contextlib.AbstractContextManager[ResponseLogps]:
        return reference_view(self.reference, self.policy, self.accelerator.autocast())

    def _reference_logps(self, examples: list[Any], mask: torch.Tensor) -> torch.Tensor:
        """(N, T) the frozen reference's log-prob of each response token of a rollout (0 elsewhere),
        per_device_train_batch_size sequences per forward."""
        with self._reference() as reference:
            return per_token(
                lambda b: {"logps": reference(*model_inputs(b))},
                examples,
                mask,
                self.config.train.per_device_train_batch_size,
                self.pad_id,
                self.accelerator.device,
            )["logps"]

    def _judged(self, judge: Any, prompts: list[Any], rollout: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) the judge's raw score of each response of `rollout`, and (N,) the score trained on: standardised
        with the starting policy's statistics, clipped, minus the missing-EOS penalty (`shape_scores`)."""
        state, scoring = self.engine.trainer_state, self.config.scoring
        raw, _ = judge_scores(judge, self.tokenizer, prompts, rollout)
        shaped = shape_scores(
            raw,
            rollout.ended,
            state["reward_mean"],
            state["reward_std"],
            scoring.reward_clip,
            scoring.missing_eos_penalty,
        )
        return raw, shaped

    def experience(self, prompt_indices: list[int]) -> tuple[dict[str, Any], dict[str, float]]:
        """The subclass's `make_experience` with the weights gathered: processes sample responses of
        different lengths, so their forward passes differ in number."""
        with self.engine.gathered():
            return self.make_experience(prompt_indices)

    def make_experience(self, prompt_indices: list[int]) -> tuple[dict[str, Any], dict[str, float]]:
        raise NotImplementedError

    def _held_out(self) -> dict[str, float]:
        with self.engine.gathered():
            return self.setup.evaluate(self.policy, self._reference, self.engine.global_sums)

    def evaluate(self) -> dict[str, float]:
        """Judge score, gold reward (synthetic task), KL and length on the held-out prompts, and the
        reward-hacking monitor's verdict on them."""
        return watch_evaluation(self.monitor, self.engine.trainer_state, self.engine.step, self._held_out())

    def _start_monitor(self) -> None:
        """A new run first shows the monitor the starting policy (step 0); a resumed one has its state."""
        watch_start(self.monitor, self.engine.trainer_state, self._held_out if self.setup.evaluator else None)

    def _save_policy(self, final: Path, weights: dict[str, torch.Tensor] | None) -> None:
        """`weights`: the policy's, gathered when it is sharded (else None)."""
        save_final(self.policy.model, self.tokenizer, final, weights)

    def _finish(self, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Save the policy to output_dir/final (main process) and write the run's summary with `fields`."""
        final = Path(self.config.train.output_dir) / "final"
        weights = self.engine.full_state_dict(self.policy.model)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._save_policy(final, weights)
        summary = self.engine.finish(
            {
                "train_prompts": len(self.setup.prompts),
                "judge": self.config.scoring.judge,
                **fields,
                "hacking": self.monitor.summary(),
            }
        )
        logger.info("%s done in %.0f s: final policy in %s", name, summary["wall_seconds"], final)
        return summary
