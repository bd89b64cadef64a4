"""KTO: preference tuning from unpaired desirable / undesirable responses.

Paper: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv 2402.01306). With the implied reward r(x, y) = log pi(y|x) - log pi_ref(y|x) (the
`logratio`, summed over response tokens) and the reference point z_ref = KL(pi || pi_ref),
eq. 8 minimises

    L_KTO = E_{x,y ~ D} [lambda_y - v(x, y)],
    v(x, y) = lambda_D * sigmoid(beta * (r - z_ref))   if y is desirable,
              lambda_U * sigmoid(beta * (z_ref - r))   if y is undesirable,

with z_ref estimated from the batch (section 4.1): each prompt x_i is scored with the response
of another example, z_ref = max(0, mean_i log pi(y_j|x_i) / pi_ref(y_j|x_i)), and no gradient
flows through it. The math is in preftune/losses/unpaired.py (`kto_loss`,
`kto_reference_point`, `kto_recommended_weights`).

What is implemented here:
- data: unpaired rows (`prompt`, `completion`, `label`), or preference pairs, each split into
  two examples, chosen desirable and rejected undesirable (how the paper compares KTO with DPO
  on the same data);
- lambda_D, lambda_U: --desirable_weight / --undesirable_weight, or by default
  `kto_recommended_weights` of the training set's class counts (logged);
- the reference: a frozen copy of --ref_model (default: the --model checkpoint) or, with
  --use_peft, the policy with its LoRA adapter disabled;
- each optimizer step first scores the mismatched pairs of the whole step under no_grad
  (policy and reference), all-reduces their log-ratio sum and count into z_ref, then runs
  each micro-batch: `kto_loss` per example, summed and divided by the global number of
  examples, backward.

Departures:
- z_ref comes from the whole global batch (all micro-batches of all processes, a global sum
  over a global count), not from each micro-batch as in TRL, so it does not depend on how the
  step is split into micro-batches or processes.
- The mismatched pairs are formed within each process's share of the step: example i's prompt
  with the response of the next example (cyclically) whose prompt differs, which is TRL's
  shift by one except that it skips the other half of the same pair (or another rating of the
  same prompt), whose response would not be unrelated to x_i. A mismatched sequence longer
  than --max_length loses prompt tokens from the left (after a BOS), like the data layer.
- Padded batches only (no packing or prefix sharing yet).
- KTO's loss needs no pairs and is defined for one class alone, so a training set with only
  desirable (or only undesirable) examples runs with a warning; the paper's experiments keep
  both classes (down to 10% desirable).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object

from preftune.config import config_to_flat_dict
from preftune.data import (
    EncodedExample,
    EncodedUnpaired,
    Parsed,
    RowTable,
    UnpairedExample,
    detect_format,
    encode_dataset,
    load_rows,
    parse_pairs,
    parse_unpaired,
)
from preftune.data.formats import PAIR_FORMATS, UNPAIRED_FORMATS
from preftune.data.pairs import collate_responses
from preftune.engine import Engine
from preftune.losses.unpaired import kto_loss, kto_recommended_weights, kto_reference_point
from preftune.models.loading import save_final, token_id
from preftune.models.logps import ResponseLogps, reference_view, sequence_sums
from preftune.trainers.inputs import (
    Given,
    Trainer,
    accelerator_for,
    policy_for,
    reference_for,
    take_reference,
    tokenizer_for,
)
from preftune.trainers.kto_config import KTOConfig

__all__ = ["KTOConfig", "KTOTrainer"]

logger = logging.getLogger(__name__)

CLASSES = ("desirable", "undesirable")
_CLASS_SUMS = [f"{metric}/{name}" for name in CLASSES for metric in ("count", "rewards", "logps")]


class KTOTrainer(Trainer):
    """`KTOTrainer(config).train()` runs the whole job from the config's paths; from Python, objects may stand in
    for them as in DPOTrainer (preftune/trainers/inputs.py): `KTOTrainer(args=config, model=model,
    ref_model=ref, processing_class=tokenizer, train_dataset=dataset, eval_dataset=held_out)`."""

    takes = (*Trainer.takes, "ref_model")

    def _build(self, given: Given) -> None:
        config, model = self.config, given.model
        ref_model = take_reference(config, given.ref_model)
        self.tokenizer = tokenizer_for(config.model, model, given.processing_class)
        # Data is read, validated and tokenized before any model loads, so bad rows fail fast.
        self.train_examples = self._encode(config.data.dataset, config.data.dataset_split, "train")
        self.eval_examples = (
            self._encode(config.data.eval_dataset, config.data.eval_split, "eval")
            if config.data.eval_dataset
            else []
        )
        self.num_desirable = sum(example.label for example in self.train_examples)
        self.num_undesirable = len(self.train_examples) - self.num_desirable
        self.desirable_weight, self.undesirable_weight = self._class_weights()
        self.accelerator = accelerator_for(config.train, given.accelerator)
        policy = policy_for(config.model, model)
        self.reference = reference_for(
            config.model, config.ref_model, model, ref_model, self.accelerator.device
        )
        self.engine = Engine(
            config.train,
            ResponseLogps(policy),
            len(self.train_examples),
            config_to_flat_dict(config),
            self.accelerator,
            shardable=True,
        )
        self.model = self.engine.model

    def _encode(self, source: Any, split: str, name: str) -> list[EncodedUnpaired]:
        cfg = self.config.data
        parsed = self._parse(load_rows(source, split))
        examples, report = encode_dataset(
            self.tokenizer, parsed, cfg.max_length, cfg.truncation, skip_invalid=cfg.skip_invalid
        )
        report.log(f"{name} examples")
        num_desirable = sum(example.label for example in examples)
        logger.info("%s: %d desirable, %d undesirable.", name, num_desirable, len(examples) - num_desirable)
        return examples

    def _parse(self, table: RowTable) -> Parsed[UnpairedExample]:
        """Unpaired rows as they are; preference pairs as two examples (chosen desirable, rejected not)."""
        formats = (detect_format(row) for row in table.rows)
        kind = next((f for f in formats if f in UNPAIRED_FORMATS or f in PAIR_FORMATS), None)
        if kind not in PAIR_FORMATS:  # also no known format: parse_unpaired names the missing columns
            return parse_unpaired(table, self.config.data.skip_invalid, self.config.data.dialogue_format)
        pairs = parse_pairs(table, self.config.data.skip_invalid, self.config.data.dialogue_format)
        examples = [
            UnpairedExample(pair.prompt, response, label, pair.row)
            for pair in pairs.examples
            for response, label in ((pair.chosen, True), (pair.rejected, False))
        ]
        logger.info(
            "%s holds preference pairs: %d pairs -> %d KTO examples (chosen desirable, rejected undesirable).",
            table.source,
            len(pairs.examples),
            len(examples),
        )
        if any(pair.weight is not None or pair.margin is not None for pair in pairs.examples):
            logger.warning("%s: KTO ignores the pairs' 'weight' and 'margin' columns.", table.source)
        return Parsed(examples, pairs.skipped, pairs.source, pairs.num_rows)

    def _class_weights(self) -> tuple[float, float]:
        """(lambda_D, lambda_U): the configured ones, or the paper's recommendation from the class counts."""
        cfg = self.config
        n_d, n_u = self.num_desirable, self.num_undesirable
        if n_d == 0 or n_u == 0:
            logger.warning(
                "The training set has only %s examples (%d): KTO trains on one class, with z_ref as its only "
                "anchor. The paper always keeps both classes; add %s examples if you have them.",
                CLASSES[n_d == 0],
                max(n_d, n_u),
                CLASSES[n_d != 0],
            )
        if cfg.desirable_weight is None or cfg.undesirable_weight is None:
            weights = kto_recommended_weights(n_d, n_u) if n_d and n_u else (1.0, 1.0)
            logger.info(
                "desirable_weight=%.4g, undesirable_weight=%.4g from %d desirable / %d undesirable examples "
                "(lambda_D n_D / (lambda_U n_U) in [1, 4/3], arXiv 2402.01306 sec. 4.2).",
                *weights,
                n_d,
                n_u,
            )
            return weights
        undesirable_mass = cfg.undesirable_weight * n_u
        ratio = cfg.desirable_weight * n_d / undesirable_mass if undesirable_mass else math.inf
        if n_d and n_u and not 1.0 <= ratio <= 4.0 / 3.0:
            logger.warning(
                "desirable_weight * n_D / (undesirable_weight * n_U) = %.3g, outside the paper's recommended "
                "[1, 4/3] (sec. 4.2); the recommendation for this data is %.4g, %.4g (leave both weights unset).",
                ratio,
                *kto_recommended_weights(n_d, n_u),
            )
        return cfg.desirable_weight, cfg.undesirable_weight

    def _collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        batch = collate_responses(examples, token_id(self.tokenizer, "pad"))
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) summed response log-probs of the batch's sequences."""
        token_logps = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["position_ids"],
            batch["response_logit_index"],
            batch["response_target"],
        )
        return sequence_sums(token_logps, batch["response_seq"], batch["input_ids"].shape[0])

    @torch.no_grad()
    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        policy = self.accelerator.unwrap_model(self.model)
        with reference_view(self.reference, policy, self.accelerator.autocast()) as reference:
            return self._logps(reference, batch)

    @torch.no_grad()
    def mismatched_logratio_sum(
        self, examples: Sequence[EncodedUnpaired], share: Sequence[int]
    ) -> torch.Tensor:
        """() float64: sum over the mismatched pairs (see `mismatched_examples`) of the whole batch `examples`
        at the positions `share` (this process's part) of log pi(y_j|x_i) - log pi_ref(y_j|x_i), without
        gradient. The pairs are built over the whole batch, so any split over processes gives the same ones."""
        policy = self.accelerator.unwrap_model(self.model)
        bos = self.tokenizer.bos_token_id
        mismatched = mismatched_examples(
            [example.example for example in examples],
            self.config.data.max_length,
            bos if isinstance(bos, int) else None,
        )
        mine = [mismatched[i] for i in share]
        size = self.config.train.per_device_train_batch_size
        total = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        with self.engine.gathered():  # processes score shares of different sizes
            for start in range(0, len(mine), size):
                batch = self._collate(mine[start : start + size])
                total += (self._logps(policy, batch) - self._ref_logps(batch)).sum()
        return total

    def reference_point(self, examples: Sequence[EncodedUnpaired], share: Sequence[int]) -> torch.Tensor:
        """z_ref () of the whole batch `examples`, of which this process scores the positions `share` (every
        process calls this with the same `examples` and its own share; the shares cover the batch once)."""
        logratio_sum = self.engine.global_sum(self.mismatched_logratio_sum(examples, share).item())
        return kto_reference_point(logratio_sum, torch.tensor(float(len(examples)), dtype=torch.float64))

    def _losses(
        self, examples: Sequence[EncodedUnpaired], model: torch.nn.Module, reference_point: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """The batch, (B,) KTO losses and (B,) metrics (with the policy's `logps`)."""
        batch = self._collate([example.example for example in examples])
        logps = self._logps(model, batch)
        desirable = torch.tensor([example.label for example in examples], device=logps.device)
        losses, metrics = kto_loss(
            logps - self._ref_logps(batch),
            desirable,
            reference_point,
            self.config.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        return batch, losses, {**metrics, "logps": logps.detach()}

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self.model.train()
        for micro_indices in engine.steps():
            micro = [[self.train_examples[i] for i in idx] for idx in micro_indices]
            # One detached z_ref for the whole global batch, before any backward pass (sec. 4.1): every
            # process sees the global batch in its order (the processes' parts, by rank) and scores its part.
            mine = [i for idx in micro_indices for i in idx]
            everyone = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]
            start = sum(len(part) for part in everyone[: self.accelerator.process_index])
            z_ref = self.reference_point(
                [self.train_examples[i] for part in everyone for i in part], range(start, start + len(mine))
            )
            num_examples = torch.tensor(float(sum(len(part) for part in everyone)))
            sums: dict[str, torch.Tensor | float] = dict.fromkeys(["loss", "num_tokens", *_CLASS_SUMS], 0.0)
            for i, examples in enumerate(micro):
                with engine.sync_context(i, len(micro)):
                    batch, losses, metrics = self._losses(examples, self.model, z_ref)
                    loss = losses.sum() / num_examples.float()
                    engine.backward(loss)
                local = {"loss": loss.detach(), "num_tokens": batch["num_tokens"], **_class_sums(metrics)}
                sums = {name: value + local[name] for name, value in sums.items()}  # device tensors: no sync
            totals = engine.global_sums(sums)  # one collective, one sync
            loss, num_tokens = totals.pop("loss"), totals.pop("num_tokens")
            step_metrics = {"kl/reference_point": z_ref.item(), **_class_means(totals)}
            engine.optimizer_step(
                loss, num_tokens, step_metrics, self.evaluate if self.eval_examples else None
            )
        return self._finish()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out KTO loss (z_ref from the held-out set's own mismatched pairs), rewards per class and
        their gap `rewards/margins` (each process scores a share)."""
        model = self.accelerator.unwrap_model(self.model)
        self.model.eval()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = self.eval_examples[rank::world]
        z_ref = self.reference_point(self.eval_examples, range(rank, len(self.eval_examples), world))
        num_examples = torch.tensor(float(len(self.eval_examples)))
        size = self.config.train.per_device_train_batch_size
        sums: dict[str, torch.Tensor | float] = dict.fromkeys(["loss", *_CLASS_SUMS], 0.0)
        with self.engine.gathered():
            for start in self.engine.eval_starts(len(mine), size):
                _, losses, metrics = self._losses(mine[start : start + size], model, z_ref)
                local = {"loss": losses.sum(), **_class_sums(metrics)}
                sums = {name: value + local[name] for name, value in sums.items()}
        self.model.train()
        totals = self.engine.global_sums(sums)
        metrics = {"loss": totals.pop("loss") / num_examples.item(), "kl/reference_point": z_ref.item()}
        return {f"eval/{name}": value for name, value in {**metrics, **_class_means(totals)}.items()}

    def _finish(self) -> dict[str, Any]:
        final = Path(self.config.train.output_dir) / "final"
        policy = self.accelerator.unwrap_model(self.model).model
        weights = self.engine.full_state_dict(policy)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_final(policy, self.tokenizer, final, weights)
        summary = self.engine.finish(
            {
                "train_examples": len(self.train_examples),
                "num_desirable": self.num_desirable,
                "num_undesirable": self.num_undesirable,
                "desirable_weight": self.desirable_weight,
                "undesirable_weight": self.undesirable_weight,
            }
        )
        logger.info("KTO done in %.0f s: final model in %s", summary["wall_seconds"], final)
        return summary


def mismatched_examples(
    examples: Sequence[EncodedExample], max_length: int, bos_token_id: int | None
) -> list[EncodedExample]:
    """KTO's mismatched pairs (arXiv 2402.01306, sec. 4.1): example i's prompt + the response of the
    next example j > i (cyclically) whose prompt tokens differ from i's (i + 1 if every prompt is the
    same). A sequence longer than max_length loses prompt tokens from the left, after a leading BOS."""
    mismatched = []
    for i, example in enumerate(examples):
        prompt = example.input_ids[: example.num_prompt_tokens]
        others = (examples[(i + k) % len(examples)] for k in range(1, len(examples)))
        other = next(
            (o for o in others if o.input_ids[: o.num_prompt_tokens] != prompt),
            examples[(i + 1) % len(examples)],
        )
        response = other.input_ids[other.num_prompt_tokens :]
        drop = max(0, len(prompt) + len(response) - max_length)
        assert drop < len(prompt), "an encoded response leaves room for at least one prompt token"
        if drop:
            keep_bos = bos_token_id is not None and prompt[0] == bos_token_id
            prompt = [prompt[0], *prompt[1 + drop :]] if keep_bos else prompt[drop:]
        mismatched.append(
            EncodedExample(
                input_ids=prompt + response,
                loss_mask=[False] * len(prompt) + [True] * len(response),
                num_prompt_tokens=len(prompt),
                num_truncated=example.num_truncated + drop,
                row=example.row,
            )
        )
    return mismatched


def _class_sums(metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Local count, reward sum and logps sum of each class, named as in `_CLASS_SUMS`."""
    desirable = metrics["mask/desirable"]
    values = []
    for mask in (desirable, ~desirable):
        values += [mask.sum().float(), metrics["reward/implicit"][mask].sum(), metrics["logps"][mask].sum()]
    return dict(zip(_CLASS_SUMS, values, strict=True))


def _class_means(totals: dict[str, float]) -> dict[str, float]:
    """count/<class>, the mean rewards/<class> and logps/<class> of each class present, and
    rewards/margins (desirable minus undesirable) when both are."""
    means: dict[str, float] = {}
    for name in CLASSES:
        count = totals[f"count/{name}"]
        means[f"count/{name}"] = count
        if count > 0:
            means[f"rewards/{name}"] = totals[f"rewards/{name}"] / count
            means[f"logps/{name}"] = totals[f"logps/{name}"] / count
    if "rewards/desirable" in means and "rewards/undesirable" in means:
        means["rewards/margins"] = means["rewards/desirable"] - means["rewards/undesirable"]
    return means
