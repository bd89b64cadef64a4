"""Reward modelling: a scalar head trained on preference pairs with the Bradley-Terry loss.

Paper: InstructGPT (arXiv 2203.02155), section 3.5 and eq. 1: r(x, y) is a language model
with a scalar head; loss = -log sigmoid(r(x, y_w) - r(x, y_l)), averaged over pairs.
Options (see preftune/losses/reward.py): per-pair margin (Llama 2), label smoothing,
reward centering, per-pair weights, and soft labels: with a `chosen_probability` column p
(e.g. written by preftune/feedback/aggregate.py) a pair's loss is
p * softplus(-d) + (1 - p) * softplus(d), d = r_w - r_l (per-pair label smoothing 1 - p,
combined with --label_smoothing as independent flips). --label_noise auto estimates the
ratings' flip rate by Dawid-Skene (preftune/feedback/aggregate.py) and uses it as
--label_smoothing; the estimate is logged and written to summary.json.
Ensembles: --num_heads K trains K scalar heads on one backbone, each on its own bootstrap
resample of the pairs (counts drawn once per run from --seed), as a cheap stand-in for K
separately trained models (Lakshminarayanan et al., arXiv 1612.01474, trained with
bootstrap as in Osband et al., arXiv 1602.04621); their spread is the uncertainty signal.
K separately seeded models are also supported: train with different --seed and pass
the paths together to the judge (`rm:PATH1,PATH2`).
Departures from the paper: InstructGPT puts all K-choose-2 comparisons of one prompt in
one batch; we sample pairs independently. The score is read at the last token of each
sequence from its length (never from the pad token), and each pair goes through the
model as one prefix-shared block [prompt][chosen][rejected] by default (DESIGN.md
section 4), which computes the prompt once and pads nothing.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from peft import PeftModel

from preftune.config import config_to_flat_dict
from preftune.data import EncodedPair
from preftune.data.io import describe_source
from preftune.data.pairs import chosen_probabilities, collate_pairs, load_pairs
from preftune.engine import Engine
from preftune.feedback.aggregate import resolve_label_smoothing
from preftune.judges.reward_model import STATS_FILE, reward_statistics
from preftune.losses import bradley_terry_loss
from preftune.losses.reward import compose_label_smoothing
from preftune.models.loading import (
    add_lora,
    disable_dropout,
    load_scalar_model,
    packed_attention,
    save_final,
    token_id,
)
from preftune.models.scalar import PooledScorer
from preftune.trainers.inputs import Given, Trainer, accelerator_for, tokenizer_for
from preftune.trainers.reward_config import RewardConfig

__all__ = ["RewardConfig", "RewardTrainer"]

logger = logging.getLogger(__name__)


class RewardTrainer(Trainer):
    """Bradley-Terry reward model. `RewardTrainer(config).train()` runs the whole job from the config's paths;
    from Python, objects may stand in for them (preftune/trainers/inputs.py): `RewardTrainer(args=config,
    model=classifier, processing_class=tokenizer, train_dataset=dataset)`, where the model object is a
    sequence classifier with --num_heads labels, e.g.
    `AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`."""

    def _build(self, given: Given) -> None:
        config, model = self.config, given.model
        if model is not None:
            _check_classifier(model, config.num_heads)
        self.tokenizer = tokenizer_for(config.model, model, given.processing_class)
        # Data is read, validated and tokenized before the model loads, so bad rows fail fast.
        self.data_report: dict[str, dict[str, int]] = {}
        self.train_pairs = self._encode(config.data.dataset, config.data.dataset_split, "train")
        self.eval_pairs = (
            self._encode(config.data.eval_dataset, config.data.eval_split, "eval")
            if config.data.eval_dataset
            else []
        )
        self._eval_scores: tuple[int, torch.Tensor, torch.Tensor] = (-1, torch.empty(0), torch.empty(0))
        """(step, chosen (N, K), rejected (N, K)) of the latest held-out pass."""
        if sum(pair.loss_weight for pair in self.train_pairs) == 0:
            raise ValueError(
                f"Every pair of {describe_source(config.data.dataset)} has weight 0: nothing to train on. Fix the 'weight' column."
            )
        self.label_smoothing, self.label_noise_report = resolve_label_smoothing(
            config.label_noise,
            config.label_smoothing,
            config.data.dataset,
            config.data.dataset_split,
            config.data.skip_invalid,
        )
        if self.tokenizer.pad_token_id == self.tokenizer.eos_token_id:
            logger.warning(
                "The pad token is the EOS token. preftune reads scores at the last token by length, but plain "
                "transformers' AutoModelForSequenceClassification pools at the last token that is not pad, i.e. "
                "before the final EOS: score the saved model with preftune.judges.RewardModelJudge, or give the "
                "tokenizer a distinct pad token before training."
            )
        self.accelerator = accelerator_for(config.train, given.accelerator)
        if model is None:
            model = load_scalar_model(
                config.model.model,
                dtype=config.model.dtype,
                trust_remote_code=config.model.trust_remote_code,
                flag="--model",
                num_labels=config.num_heads,
                pad_token_id=token_id(self.tokenizer, "pad"),
            )
        disable_dropout(model)
        # plain transformers pools at the last non-pad token: the saved config must know our pad token
        model.config.pad_token_id = token_id(self.tokenizer, "pad")
        if config.model.use_peft and not isinstance(model, PeftModel):
            model = add_lora(model, config.model, "SEQ_CLS")
        self.prefix_sharing, self.mask_dtype = packed_attention(model, config.prefix_sharing)
        self.bootstrap = self._bootstrap_counts(len(self.train_pairs))
        self.engine = Engine(
            config.train,
            PooledScorer(model),
            len(self.train_pairs),
            config_to_flat_dict(config),
            self.accelerator,
            shardable=True,
        )
        self.model = self.engine.model

    def _encode(self, source: str, split: str, name: str) -> list[EncodedPair]:
        pairs, report = load_pairs(self.tokenizer, source, split, self.config.data, name)
        self.data_report[name] = {
            "rows": report.num_rows,
            "pairs": report.num_examples,
            "skipped": len(report.skipped),
            "truncated_pairs": report.num_truncated_examples,
            "truncated_tokens": report.num_truncated_tokens,
        }
        if any(pair.margin is not None for pair in pairs):
            logger.info("%s pairs: using the per-pair 'margin' column in the loss.", name)
        if chosen_probabilities(pairs) is not None:
            logger.info("%s pairs: using the 'chosen_probability' column as soft labels in the loss.", name)
        return pairs

    def _bootstrap_counts(self, num_pairs: int) -> torch.Tensor:
        """(N, K) times each pair is drawn into each head's resample (all 1 without bootstrap)."""
        K = self.config.num_heads
        if K == 1 or not self.config.bootstrap_heads:
            return torch.ones(num_pairs, K)
        generator = torch.Generator().manual_seed(self.config.train.seed)
        draws = torch.randint(num_pairs, (K, num_pairs), generator=generator)  # (K, N) resampled indices
        return torch.stack([torch.bincount(d, minlength=num_pairs) for d in draws], dim=1).float()

    def _collate(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        pad_id = token_id(self.tokenizer, "pad")
        return collate_pairs(pairs, pad_id, self.prefix_sharing, self.mask_dtype, self.accelerator.device)

    def _rewards(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected scores, each (B, K), from one forward pass over the batch."""
        index = torch.cat([batch["chosen_index"], batch["rejected_index"]])  # (2B,)
        scores = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], index)  # (2B, K)
        B = batch["chosen_index"].shape[0]
        return scores[:B], scores[B:]

    def _loss(
        self, pairs: Sequence[EncodedPair], chosen: torch.Tensor, rejected: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Bradley-Terry losses and metrics, (B, K), with the pairs' margin and soft labels if they have them."""
        margin = None
        if any(pair.margin is not None for pair in pairs):
            margin = torch.tensor([pair.margin or 0.0 for pair in pairs], device=chosen.device)
        smoothing: float | torch.Tensor = self.label_smoothing
        soft_labels = chosen_probabilities(pairs)  # (B,) or None
        if soft_labels is not None:
            smoothing = compose_label_smoothing(self.label_smoothing, soft_labels.to(chosen.device))
        return bradley_terry_loss(chosen, rejected, margin, smoothing, self.config.center_rewards_coefficient)

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self.model.train()
        K = self.config.num_heads
        for micro_indices in engine.steps():
            micro_pairs = [[self.train_pairs[i] for i in idx] for idx in micro_indices]
            # Head k's loss is a weighted mean over the global batch, each pair weighing its
            # `weight` x its bootstrap count for head k; the heads' losses are averaged. A head
            # whose pairs all weigh 0 in this step (a bootstrap miss) gets no gradient from it.
            weights = [
                self._weights(pairs, idx) for idx, pairs in zip(micro_indices, micro_pairs, strict=True)
            ]
            head_weight = engine.global_sum(torch.stack([w.sum(dim=0) for w in weights]).sum(dim=0))  # (K,)
            denominator = (head_weight.clamp(min=1e-12) * K).float()  # (K,)
            sums: defaultdict[str, torch.Tensor | float] = defaultdict(float)  # device tensors: no sync
            for i, pairs in enumerate(micro_pairs):
                with engine.sync_context(i, len(micro_pairs)):
                    batch = self._collate(pairs)
                    chosen, rejected = self._rewards(self.model, batch)  # (B, K) each
                    losses, metrics = self._loss(pairs, chosen, rejected)  # (B, K)
                    weighted = (losses * weights[i].to(losses.device)).sum(dim=0) / denominator  # (K,)
                    engine.backward(weighted.sum())
                sums["loss"] += weighted.detach().sum()  # this micro-batch's share of the loss
                sums["num_tokens"] += batch["num_tokens"]
                sums["num_pairs"] += len(pairs)
                for name, value in {**metrics, **_ensemble_metrics(chosen)}.items():
                    sums[name] += value.float().mean(dim=-1).sum()  # summed over pairs
            totals = engine.global_sums(sums)  # one collective, one sync
            loss = totals.pop("loss")
            num_tokens, num_pairs = totals.pop("num_tokens"), totals.pop("num_pairs")
            step_metrics = {name: value / num_pairs for name, value in totals.items()}
            evaluate = self.evaluate if self.eval_pairs else None
            engine.optimizer_step(loss, num_tokens, step_metrics, evaluate)
        return self._finish()

    def _weights(self, pairs: Sequence[EncodedPair], indices: Sequence[int]) -> torch.Tensor:
        """(B, K) weight of each pair for each head: its `weight` column x its bootstrap count."""
        weight = torch.tensor([pair.loss_weight for pair in pairs])[:, None]  # (B, 1)
        return weight * self.bootstrap[list(indices)]  # (B, K)

    @torch.no_grad()
    def score_pairs(self, pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected scores (N, K) of all `pairs`, in order (each process scores a share).

        The unwrapped model is used: its forward has no DDP collectives (nor FSDP's, with the weights
        gathered), so processes may score different numbers of batches.
        """
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        size = self.config.train.per_device_train_batch_size
        mine = list(range(rank, len(pairs), world))
        scored: list[tuple[int, list[float], list[float]]] = []
        with self.engine.gathered():
            for start in self.engine.eval_starts(len(mine), size):
                indices = mine[start : start + size]
                chosen, rejected = self._rewards(model, self._collate([pairs[i] for i in indices]))
                scored += zip(indices, chosen.tolist(), rejected.tolist(), strict=True)
        model.train(was_training)
        everything = sorted(gather_object(scored) if world > 1 else scored)
        return torch.tensor([c for _, c, _ in everything]), torch.tensor([r for _, _, r in everything])

    def evaluate(self) -> dict[str, float]:
        """Held-out loss (unweighted, no smoothing), accuracy and reward margin."""
        chosen, rejected = self.score_pairs(self.eval_pairs)  # (N, K)
        self._eval_scores = (self.engine.step, chosen, rejected)  # the final ones also give reward_stats.json
        losses, metrics = bradley_terry_loss(chosen, rejected)
        result = {
            "eval/loss": losses.mean().item(),
            "eval/rewards/accuracies": metrics["rewards/accuracies"].mean().item(),
            "eval/rewards/margins": metrics["rewards/margins"].mean().item(),
        }
        if self.config.num_heads > 1:
            mean_margin = (chosen - rejected).mean(dim=-1)  # the ensemble's verdict
            result["eval/rewards/ensemble_accuracies"] = (
                ((mean_margin > 0).float() + 0.5 * (mean_margin == 0).float()).mean().item()
            )
            result["eval/rewards/ensemble_std"] = torch.cat([chosen, rejected]).std(dim=-1).mean().item()
        return result

    def _finish(self) -> dict[str, Any]:
        final = Path(self.config.train.output_dir) / "final"
        scored_at, chosen, rejected = self._eval_scores
        if not self.eval_pairs or scored_at != self.engine.step:  # no held-out pass by the final model
            chosen, rejected = self.score_pairs(self.eval_pairs or self.train_pairs)
        stats = reward_statistics(torch.cat([chosen, rejected]), self.config.data.max_length)
        stats["source"] = "eval_dataset" if self.eval_pairs else "dataset"
        classifier = self.accelerator.unwrap_model(self.model).model
        weights = self.engine.full_state_dict(classifier)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_final(classifier, self.tokenizer, final, weights)
            (final / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        extra: dict[str, Any] = {
            "data": self.data_report,
            "num_heads": self.config.num_heads,
            "reward_stats": stats,
        }
        if self.label_noise_report is not None:
            extra["label_noise"] = self.label_noise_report
        summary = self.engine.finish(extra)
        logger.info("Reward model done in %.0f s: final model in %s", summary["wall_seconds"], final)
        return summary


def _ensemble_metrics(chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spread of the heads on the chosen responses, (B, 1), for an ensemble."""
    if chosen.shape[-1] == 1:
        return {}
    return {"rewards/ensemble_std": chosen.detach().std(dim=-1, keepdim=True)}


def _check_classifier(model: Any, num_heads: int) -> None:
    """A model object given to RewardTrainer is a sequence classifier with `num_heads` labels."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = type(base).__name__
    if not name.endswith("ForSequenceClassification"):
        raise TypeError(
            f"RewardTrainer's model object is a {name}; a reward model is a sequence classifier: pass "
            f"AutoModelForSequenceClassification.from_pretrained(path, num_labels={num_heads}), or the path."
        )
    if base.config.num_labels != num_heads:
        raise ValueError(
            f"RewardTrainer's model has {base.config.num_labels} score head(s) but num_heads is {num_heads}: "
            "make them match."
        )
