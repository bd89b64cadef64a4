"""What every RL trainer (PPO, RLOO, GRPO) sets up the same way: prompts, judge, held-out
evaluation, the judge's statistics on the starting policy, sampling seeds, global whitening."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from preftune.data import DataConfig
from preftune.data.prompts import PromptSet, load_prompts
from preftune.judges import GoldJudge, Judge, load_judge
from preftune.models.loading import token_id
from preftune.models.logps import ResponseLogps
from preftune.ops.whiten import whiten
from preftune.rollout.backends import GenerationBackend, VLLMBackend, load_backend
from preftune.rollout.config import SamplingConfig, ScoringConfig
from preftune.rollout.experience import judge_scores
from preftune.rollout.generate import RolloutBatch
from preftune.rollout.heldout import HeldOutEvaluator
from preftune.rollout.vllm_backend import engine_options
from preftune.tasks import detect_task

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 7_777
"""Held-out samples use seed + this at every evaluation (not the training stream)."""


@dataclass
class RLSetup:
    prompts: PromptSet
    judge: Judge
    evaluator: HeldOutEvaluator | None
    sampling: SamplingConfig
    scoring: ScoringConfig
    tokenizer: PreTrainedTokenizerBase
    accelerator: Accelerator
    chunk_size: int
    seed: int
    backend: GenerationBackend | None = None
    """Set by start_backend once the policy is loaded."""

    @classmethod
    def load(
        cls,
        data: DataConfig,
        sampling: SamplingConfig,
        scoring: ScoringConfig,
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        chunk_size: int,
        seed: int,
        judge: Judge | None = None,
        heldout_judge: Judge | None = None,
    ) -> RLSetup:
        """Read and encode the prompts (before any model loads), then load the judge named by
        --judge, unless a `judge` object (anything with `score(prompts, responses)`) is given."""
        max_prompt = data.max_length - sampling.max_new_tokens
        prompts = load_prompts(tokenizer, data.dataset, data.dataset_split, max_prompt, data, "train")
        eval_prompts = (
            load_prompts(tokenizer, data.eval_dataset, data.eval_split, max_prompt, data, "eval")
            if data.eval_dataset
            else None
        )
        device = str(accelerator.device)
        if judge is None:
            judge = load_judge(
                scoring.judge, device=device, batch_size=scoring.judge_batch_size, **scoring.judge_options
            )
        evaluator = None
        if eval_prompts is not None:
            task = detect_task(data.eval_dataset or "", scoring.task)
            if task:
                heldout_judge = GoldJudge(task)
            elif heldout_judge is None and scoring.heldout_judge:
                heldout_judge = load_judge(
                    scoring.heldout_judge, device=device, batch_size=scoring.judge_batch_size
                )
            evaluator = HeldOutEvaluator(
                eval_prompts,
                judge,
                heldout_judge,
                tokenizer,
                sampling,
                seed + EVAL_SEED_OFFSET,
                chunk_size,
                token_id(tokenizer, "pad"),
            )
        return cls(prompts, judge, evaluator, sampling, scoring, tokenizer, accelerator, chunk_size, seed)

    def start_backend(self, policy: ResponseLogps, max_length: int) -> None:
        """The generation backend (--generation_backend) on the policy: it samples the training rollouts, the
        starting policy's samples that set the judge's statistics, and the held-out evaluation's samples."""
        options = {}
        if self.sampling.generation_backend == "vllm":
            accelerator = self.accelerator
            options = engine_options(
                self.sampling,
                max_length,
                str(accelerator.mixed_precision),
                next(policy.parameters()).dtype,
                accelerator.process_index,
                accelerator.num_processes,
            )
        self.backend = load_backend(self.sampling.generation_backend, policy.model, self.tokenizer, **options)

    def sampler(self, policy: ResponseLogps) -> GenerationBackend:
        """The backend, holding the policy's current weights (vLLM samples from its own copy, refreshed here)."""
        assert self.backend is not None, "start_backend runs in the trainer's constructor"
        if isinstance(self.backend, VLLMBackend):
            self.backend.sync_weights(policy.model)
        return self.backend

    @torch.no_grad()
    def rollout(
        self, policy: ResponseLogps, prompt_ids: list[list[int]], step: int, num_samples: int = 1
    ) -> RolloutBatch:
        """This process's samples of a training step, `num_samples` per prompt, keyed by their position in
        the global batch, under the same autocast as the policy's forward (so the sampling-time log-probs
        are computed in the training precision)."""
        backend = self.sampler(policy)
        with self.accelerator.autocast():
            return backend.generate(
                prompt_ids,
                self.sampling,
                self.sample_seed(step),
                num_samples,
                prompt_keys=self.global_keys(len(prompt_ids)),
            )

    def sample_seed(self, step: int) -> int:
        """The sampling seed of a step (with the prompt keys of `global_keys`, samples do not depend
        on how the global batch is split over processes)."""
        return self.seed * 1_000_003 + step

    def global_keys(self, count: int) -> list[int]:
        """Positions in the global batch of this process's `count` prompts (each process holds the
        same number, in rank order): the keys that seed each prompt's samples."""
        start = self.accelerator.process_index * count
        return list(range(start, start + count))

    @torch.no_grad()
    def score_statistics(
        self, policy: ResponseLogps, global_sum: Callable[[Tensor], Tensor]
    ) -> dict[str, float]:
        """The judge's mean and std on the starting policy's samples (`reward_norm_samples` prompts),
        or mean 0 and std 1 with --reward_normalization none."""
        if self.scoring.reward_normalization == "none":
            return {"reward_mean": 0.0, "reward_std": 1.0}
        order = torch.randperm(len(self.prompts), generator=torch.Generator().manual_seed(self.seed))
        chosen = order[: self.scoring.reward_norm_samples].tolist()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = chosen[rank::world]
        raw = torch.zeros(0)
        if mine:
            with self.accelerator.autocast():
                rollout = self.sampler(policy).generate(
                    [self.prompts.ids[i] for i in mine],
                    self.sampling,
                    self.seed * 31,
                    prompt_keys=list(range(rank, len(chosen), world)),
                )
            raw, _ = judge_scores(
                self.judge, self.tokenizer, [self.prompts.prompts[i] for i in mine], rollout
            )
        total, square, count = global_sum(
            torch.stack([raw.sum(), (raw**2).sum(), torch.tensor(float(len(raw)))]).double()
        ).tolist()
        mean = total / count
        std = max(square / count - mean**2, 0.0) ** 0.5
        if std < 1e-6:
            raise ValueError(
                f"The judge gives every sample of the starting policy the same score ({mean:.4g}), so scores "
                "cannot be standardised and there is no signal to learn from. Check --judge, or pass "
                "--reward_normalization none."
            )
        logger.info("Judge on %d samples of the starting policy: mean %.4f, std %.4f.", int(count), mean, std)
        return {"reward_mean": mean, "reward_std": std}

    def global_whiten(self, values: Tensor, mask: Tensor, max_width: int) -> Tensor:
        """`whiten` over the batches of all processes (each holds the same number of rows), so the
        result does not depend on how the global batch is split."""
        N, T = values.shape
        if self.accelerator.num_processes == 1:
            return whiten(values, mask)
        padded = torch.zeros(N, max_width)
        padded[:, :T] = values
        padded_mask = torch.zeros(N, max_width, dtype=torch.bool)
        padded_mask[:, :T] = mask
        device = self.accelerator.device
        everything = self.accelerator.gather(padded.to(device))  # (P * N, max_width)
        every_mask = self.accelerator.gather(padded_mask.to(device))
        assert isinstance(everything, Tensor) and isinstance(every_mask, Tensor), "gather of a tensor"
        rank = self.accelerator.process_index
        return whiten(everything.cpu(), every_mask.cpu())[rank * N : (rank + 1) * N, :T]

    @torch.no_grad()
    def evaluate(
        self,
        policy: ResponseLogps,
        reference: Callable[[], contextlib.AbstractContextManager[ResponseLogps]],
        global_sums: Callable[[dict[str, Tensor | float]], dict[str, float]],
    ) -> dict[str, float]:
        """`eval/...` means over the held-out prompts (each process samples its share): judge score,
        gold reward (synthetic task), KL to the reference and length."""
        assert self.evaluator is not None, "the trainers evaluate only with --eval_dataset"
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        with self.accelerator.autocast():  # the training precision, as the policy's forward
            local = self.evaluator.sums(policy, reference, rank, world, self.sampler(policy))
        sums = global_sums(local)
        count = max(sums.pop("count"), 1.0)
        if self.evaluator.heldout is None and self.evaluator.heldout_key != "ensemble_std":
            sums.pop(self.evaluator.heldout_key)
        return {f"eval/{name}": value / count for name, value in sums.items()}
