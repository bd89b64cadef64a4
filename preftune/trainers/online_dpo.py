"""Online DPO: DPO on pairs sampled from the current policy and ranked by a judge at every step.

Paper: Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (OAIF),
arXiv 2402.04792, Algorithm 1: for each prompt of the batch, sample two responses from the
current policy, let an AI judge pick the preferred one, and take one gradient step of a direct
alignment loss (DPO, eq. 7 of arXiv 2305.18290; IPO; SLiC's hinge) on these fresh pairs.

Each step: sample k = num_generations responses per prompt of the batch (keyed sampling, as the
RL trainers); with no gradient, the reference's log-probs of every sample and the judge's ranking
of each prompt's k samples (`rank_groups`: a pointwise judge's scores, or a pairwise judge's mean
preference over the group's other samples); one pair per prompt, its best against its worst sample;
prompts whose best and worst tie (equal scores, or the same text: a stochastic or pairwise judge can
score duplicate samples differently) are skipped and counted (`pairs/skipped_ties`); then one optimizer
step of the --loss_type objective on the pairs (micro-batches of per_device_train_batch_size prompts
with --gradient_accumulation_steps), with log-probs at the sampling temperature, as in the RL trainers.
Departures: the paper samples two responses; with k > 2 we pair the best with the worst (the
widest gap the judge sees), and ties are skipped, not ordered arbitrarily. A response cut at --max_new_tokens
without EOS has --missing_eos_penalty subtracted from its ranking score: from the judge's score for a
pointwise judge (standardised first with --reward_normalization initial_policy), from its mean win
probability (in [0, 1]) for a pairwise judge. There a penalty of 1 or more is raised to at least
1 + 1e-6 (`pairwise_ranking_scores`), so that with the default of 1 a cut sample ranks strictly
below every sample that ended (with exactly 1, a cut sample that won every comparison would tie an
ended one that lost every comparison). The loss is the sum over the pairs of the global batch
divided by their global number (not a mean per micro-batch), so it does not depend on how the batch
is split. Chosen and rejected responses run as padded sequences, not prefix-shared blocks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from accelerate.utils import gather_object
from torch import Tensor

from preftune.data import EncodedExample, Prompt
from preftune.engine.hacking import RewardHackingDetected
from preftune.judges import (
    GroupRanking,
    Judge,
    PairwiseJudge,
    WinRateJudge,
    load_judge,
    prompt_key,
    rank_groups,
)
from preftune.losses.registry import LOSSES, combined_losses
from preftune.models.logps import ResponseLogps, sequence_sums
from preftune.ops.reduce import masked_sum
from preftune.rollout.experience import (
    collate_on,
    decode_responses,
    model_inputs,
    response_completions,
    rollout_examples,
)
from preftune.rollout.generate import RolloutBatch
from preftune.trainers.inputs import Given
from preftune.trainers.online_dpo_config import OnlineDPOConfig, OnlineLossType
from preftune.trainers.rl_base import RLTrainer

__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]

logger = logging.getLogger(__name__)


ONLINE_LOSSES = {name: LOSSES[name] for name in get_args(OnlineLossType)}

PAIRWISE_EOS_MARGIN = 1e-6
"""A missing-EOS penalty of 1 or more on pairwise scores (in [0, 1]) is at least 1 + this: strictly below."""


@dataclass
class StepPairs:
    """This process's pairs of one step, indices into its N = P * k sampled sequences."""

    examples: list[EncodedExample]
    """(N,) [prompt][response] sequences, the k samples of a prompt consecutive."""
    ref_logps: Tensor
    """(N,) the reference's summed log-probs of each sample (CPU)."""
    chosen: list[int]
    rejected: list[int]
    micro: list[int]
    """The micro-batch (of prompts) each pair belongs to."""


def load_ranking_judge(spec: str, device: str, batch_size: int, **options: Any) -> Judge | PairwiseJudge:
    """The judge named by `spec`, pointwise or pairwise, with the judge `options` (--judge_options)."""
    return load_judge(spec, pairwise=True, **{"device": device, "batch_size": batch_size, **options})


def pairwise_ranking_scores(scores: Tensor, ended: Tensor, missing_eos_penalty: float) -> Tensor:
    """(P, k) float32 ranking scores from a pairwise judge's (P, k) mean win probabilities (in [0, 1], NaN
    where not judged): minus the penalty where `ended` (P, k) is False. A penalty >= 1 is raised to at least
    1 + PAIRWISE_EOS_MARGIN, so a cut sample ranks strictly below every judged sample that ended."""
    penalty = missing_eos_penalty
    if penalty >= 1.0:
        penalty = max(penalty, 1.0 + PAIRWISE_EOS_MARGIN)
    return (scores.double() - penalty * (~ended).double()).float()


class OnlineDPOTrainer(RLTrainer):
    """`OnlineDPOTrainer(config).train()` runs online DPO against the judge of --judge; from Python,
    `OnlineDPOTrainer(args=config, model=model, processing_class=tokenizer, train_dataset=prompts, judge=judge)`."""

    def _build(self, given: Given) -> None:
        """`judge` replaces --judge: a pointwise judge (`score(prompts, responses) -> (N,)`) or a pairwise one
        (`compare(prompts, first, second) -> PairVerdicts`); `heldout_judge` replaces --heldout_judge; the
        other objects replace --model, --ref_model, the tokenizer saved with the model, --dataset (prompts),
        --eval_dataset and the accelerator built from the config."""
        model, ref_model, judge, heldout_judge = self._take_inputs(given)
        cfg = self.config
        if judge is None:
            options = {
                "cache_dir": str(Path(cfg.train.output_dir) / "judge-cache"),
                **cfg.scoring.judge_options,
            }
            judge = load_ranking_judge(
                cfg.scoring.judge, str(self.accelerator.device), cfg.scoring.judge_batch_size, **options
            )
        self.judge = judge
        self.win_rate = None if isinstance(judge, Judge) else WinRateJudge(judge)
        """The held-out evaluation needs scores: a pairwise judge's win rate against the starting policy."""
        if self.win_rate is not None and cfg.scoring.reward_normalization != "none":
            raise ValueError(
                "A pairwise judge gives preferences, not scores to standardise: pass "
                "--reward_normalization none."
            )
        self._load_setup(judge if isinstance(judge, Judge) else self.win_rate, heldout_judge)
        policy = self._policy(model)
        self.reference = self._frozen_reference(model, ref_model)
        self._start_engine(policy)
        state = self.engine.trainer_state  # restored on resume
        if self.win_rate is not None and self.setup.evaluator is not None:
            if "eval_anchors" not in state:
                state["eval_anchors"] = self._starting_samples()
            keys = map(prompt_key, self.setup.evaluator.prompts.prompts)
            self.win_rate.anchors = dict(zip(keys, state["eval_anchors"], strict=True))
        if self.win_rate is None:  # a pairwise judge gives no scores to standardise
            self._judge_statistics()

    @property
    def policy(self) -> ResponseLogps:
        return self.accelerator.unwrap_model(self.model)  # the engine trains the policy itself

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self._start_monitor()
        try:
            for micro_indices in engine.steps():
                with engine.gathered():  # processes sample responses of different lengths
                    pairs, metrics = self.make_pairs(micro_indices)
                evaluate = self.evaluate if self.setup.evaluator else None
                if metrics["pairs/count"] == 0:  # every prompt tied on every process: nothing to learn from
                    logger.warning("step %d: every prompt's samples tied; no update.", engine.step + 1)
                    engine.end_step(0.0, 0.0, metrics, evaluate)
                    continue
                loss, update_metrics, num_tokens = self.update(
                    pairs, len(micro_indices), metrics["pairs/count"]
                )
                engine.optimizer_step(loss, num_tokens, {**metrics, **update_metrics}, evaluate)
        except RewardHackingDetected as stop:  # --stop_on_hacking: keep the policy as it is now
            logger.error("Stopping at step %d: %s", engine.step, stop)
        return self._finish("Online DPO", {"loss_type": self.config.loss_type})

    @torch.no_grad()
    def make_pairs(self, micro_indices: list[list[int]]) -> tuple[StepPairs, dict[str, float]]:
        """k samples per prompt, the reference's log-probs, the judge's ranking and best-vs-worst pairs."""
        cfg, setup, k = self.config, self.setup, self.config.num_generations
        indices = [i for micro in micro_indices for i in micro]  # P prompts
        rollout = setup.rollout(self.policy, [setup.prompts.ids[i] for i in indices], self.engine.step, k)
        examples, mask = rollout_examples(rollout), rollout.mask  # N = P * k sequences, (N, T)
        ref_logps = masked_sum(self._reference_logps(examples, mask), mask, dim=1)  # (N,)
        prompts = [setup.prompts.prompts[i] for i in indices]
        texts = decode_responses(self.tokenizer, rollout)  # (N,)
        scores, judge_sums = self._group_scores(prompts, rollout, texts)  # (P, k)
        best, worst, has_pair = GroupRanking(scores).best_worst()  # (P,) each
        # the same text twice is a tie, whatever the scores (a stochastic judge rates duplicates apart)
        kept = [
            p
            for p in has_pair.nonzero()[:, 0].tolist()
            if texts[p * k + int(best[p])] != texts[p * k + int(worst[p])]
        ]
        per_micro = cfg.train.per_device_train_batch_size
        pairs = StepPairs(
            examples,
            ref_logps,
            [p * k + int(best[p]) for p in kept],
            [p * k + int(worst[p]) for p in kept],
            [p // per_micro for p in kept],
        )
        flat = scores.reshape(-1)
        sums = self.engine.global_sums(
            {
                "num_sequences": float(len(examples)),
                "num_tokens": mask.sum().float(),
                "pairs/count": float(len(kept)),
                "pairs/skipped_ties": float(len(indices) - len(kept)),
                "judge_chosen_sum": flat[pairs.chosen].sum(),
                "judge_rejected_sum": flat[pairs.rejected].sum(),
                "kl/mean": masked_sum(rollout.logps, mask) - ref_logps.sum(),
                "response/length": mask.sum().float(),
                "response/ended": rollout.ended.float().sum(),
                **judge_sums,
            }
        )
        n, tokens, count = sums.pop("num_sequences"), sums.pop("num_tokens"), sums["pairs/count"]
        metrics = {"pairs/count": count, "pairs/skipped_ties": sums.pop("pairs/skipped_ties")}
        metrics["judge/chosen"] = sums.pop("judge_chosen_sum") / max(count, 1.0)
        metrics["judge/rejected"] = sums.pop("judge_rejected_sum") / max(count, 1.0)
        if "pairs/could_not_judge" in sums:
            metrics["pairs/could_not_judge"] = sums.pop("pairs/could_not_judge")
        metrics |= {name: value / n for name, value in sums.items() if name != "pairs/count"}
        metrics["kl/per_token"], metrics["rollout/num_tokens"] = sums["kl/mean"] / tokens, tokens
        return pairs, metrics

    def _group_scores(
        self, prompts: list[Prompt], rollout: RolloutBatch, texts: list[str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(P, k) ranking scores minus the missing-EOS penalty, and sums to log: a pointwise judge's raw
        scores (`reward/raw`), or the number of comparisons a pairwise judge could not judge."""
        cfg, k = self.config, self.config.num_generations
        if isinstance(self.judge, Judge):
            raw, shaped = self._judged(self.judge, [p for p in prompts for _ in range(k)], rollout)
            return shaped.view(-1, k), {"reward/raw": raw.sum()}
        responses = response_completions([p for p in prompts for _ in range(k)], texts)
        ranking = rank_groups(self.judge, prompts, responses, k)
        assert ranking.verdicts is not None, "a pairwise judge's ranking keeps its verdicts"
        unjudged = float(ranking.verdicts.summary()["could_not_judge"])
        scores = pairwise_ranking_scores(
            ranking.scores, rollout.ended.view(-1, k), cfg.scoring.missing_eos_penalty
        )
        return scores, {"pairs/could_not_judge": torch.tensor(unjudged)}

    def update(
        self, pairs: StepPairs, num_micro: int, num_pairs: float
    ) -> tuple[float, dict[str, float], float]:
        """One optimizer step's gradient: each micro-batch's pair losses summed and divided by the global number
        of pairs `num_pairs`. Returns the loss, metrics averaged over pairs, and the tokens of the pairs."""
        engine = self.engine
        sums: defaultdict[str, Tensor | float] = defaultdict(float)
        loss = torch.zeros((), device=self.accelerator.device)
        for m in range(num_micro):
            rows = [q for q, micro in enumerate(pairs.micro) if micro == m]
            last = m == num_micro - 1
            if not rows and not last and not engine.sharded:  # FSDP: every process runs every forward
                continue
            if rows:
                chosen, rejected, weight = (
                    [pairs.chosen[q] for q in rows],
                    [pairs.rejected[q] for q in rows],
                    1.0,
                )
            else:  # no pairs here, but the last micro-batch joins the gradient all-reduce (and under FSDP each
                # forward gathers weights with the other processes): a pair with weight 0
                chosen, rejected, weight = [0], [1], 0.0
            with engine.sync_context(m, num_micro):
                losses, metrics, num_tokens = self.pair_losses(pairs, chosen, rejected)
                micro_loss = weight * losses.sum() / num_pairs
                engine.backward(micro_loss)
            loss += micro_loss.detach()
            sums["num_tokens"] += weight * num_tokens
            for name, value in metrics.items():
                sums[name] += weight * value.float().sum()
        totals = engine.global_sums({"loss": loss, **sums})
        num_tokens = totals.pop("num_tokens")
        return totals.pop("loss"), {name: value / num_pairs for name, value in totals.items()}, num_tokens

    def pair_losses(
        self, pairs: StepPairs, chosen: list[int], rejected: list[int]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(B,) losses of the pairs (chosen[i], rejected[i]), their (B,) metrics, and the batch's tokens."""
        cfg, B = self.config, len(chosen)
        batch = collate_on(
            [pairs.examples[i] for i in chosen + rejected], self.pad_id, self.accelerator.device
        )
        token_logps = self.model(*model_inputs(batch))  # (M,) at the sampling temperature
        logps = sequence_sums(token_logps, batch["response_seq"], 2 * B)  # (2B,): chosen, then rejected
        lengths = torch.bincount(batch["response_seq"], minlength=2 * B).to(logps.dtype)
        ref_logps = pairs.ref_logps[chosen + rejected].to(logps.device)
        params = {"label_smoothing": cfg.label_smoothing}
        losses, metrics = combined_losses([cfg.loss_type], [1.0], logps, ref_logps, lengths, cfg.beta, params)
        return losses, metrics, batch["num_tokens"]

    @torch.no_grad()
    def _starting_samples(self) -> list[str]:
        """The starting policy's held-out responses, drawn as the evaluation draws them (same seed and
        keys, so the step-0 evaluation samples exactly these): the anchors of `WinRateJudge`."""
        evaluator = self.setup.evaluator
        assert evaluator is not None
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, len(evaluator.prompts), world))
        texts: list[str] = []
        with self.engine.gathered():  # every process joins the gathering, with prompts or not
            if mine:
                with self.accelerator.autocast():
                    rollout = self.setup.sampler(self.policy).generate(
                        [evaluator.prompts.ids[i] for i in mine],
                        evaluator.sampling,
                        evaluator.seed,
                        prompt_keys=mine,
                    )
                texts = decode_responses(self.tokenizer, rollout)
        indexed = list(zip(mine, texts, strict=True))
        everything = sorted(gather_object(indexed) if world > 1 else indexed)
        return [text for _, text in everything]
