"""Supervised fine-tuning: the step before preference tuning; its model is the reference.

Paper: InstructGPT (arXiv 2203.02155), section 3.5: maximum likelihood on demonstrations.
What is implemented: next-token NLL on the response tokens only (completion-only loss,
the default), on all tokens (--completion_only_loss false, or plain `text` rows), or on
packed rows of several examples (--packing) with block-diagonal attention so examples
never see each other.
Departure from the paper: the loss is normalised by the number of response tokens in
the global batch (every micro-batch of every process), not per sequence, so gradient
accumulation and data parallelism give the same result as one big batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from preftune.config import config_to_flat_dict
from preftune.data import (
    EncodedExample,
    collate_packed,
    encode_dataset,
    load_rows,
    pack_examples,
    pad_batch,
    parse_sft,
)
from preftune.engine import Engine
from preftune.losses import sft_loss
from preftune.models.loading import (
    attention_implementation,
    save_final,
)
from preftune.ops.logprobs import masked_token_logps
from preftune.ops.reduce import reduce_loss
from preftune.trainers.inputs import Given, Trainer, accelerator_for, policy_for, tokenizer_for
from preftune.trainers.sft_config import SFTConfig

__all__ = ["SFTConfig", "SFTTrainer"]

logger = logging.getLogger(__name__)


Item = EncodedExample | list[EncodedExample]
"""A training item: one example, or one packed row of several."""


def _examples(items: list[Item]) -> list[EncodedExample]:
    return [e for item in items for e in (item if isinstance(item, list) else [item])]


def _num_loss_tokens(items: list[Item]) -> int:
    """Targets of a micro-batch, counted without collating it (loss_mask[0] is always False,
    since nothing predicts a sequence's first token, so this equals the shifted mask's sum)."""
    return sum(sum(e.loss_mask) for e in _examples(items))


def _num_tokens(items: list[Item]) -> int:
    return sum(len(e.input_ids) for e in _examples(items))


class SFTTrainer(Trainer):
    """Maximum likelihood on demonstrations. `SFTTrainer(config).train()` runs the whole job from the config's
    paths; from Python, objects may stand in for them (preftune/trainers/inputs.py): `SFTTrainer(args=config,
    model=model, processing_class=tokenizer, train_dataset=dataset)`."""

    def _build(self, given: Given) -> None:
        config, model = self.config, given.model
        self.tokenizer = tokenizer_for(config.model, model, given.processing_class)
        # Data is read, validated and tokenized before the model loads, so bad rows fail fast.
        data = config.data
        self.train_items = self._encode(data.dataset, data.dataset_split, "train")
        self.eval_items = (
            self._encode(data.eval_dataset, data.eval_split, "eval") if data.eval_dataset else []
        )
        self.accelerator = accelerator_for(config.train, given.accelerator)
        policy = policy_for(config.model, model)
        # sdpa takes boolean 4D masks (4x smaller than additive float ones); eager needs float.
        self.mask_dtype = torch.bool if attention_implementation(policy) == "sdpa" else torch.float32
        self.engine = Engine(
            config.train,
            policy,
            len(self.train_items),
            config_to_flat_dict(config),
            self.accelerator,
            shardable=True,
        )
        self.model = self.engine.model

    def _encode(self, source: Any, split: str, name: str) -> Sequence[Item]:
        cfg = self.config
        table = load_rows(source, split)
        parsed = parse_sft(
            table, cfg.dataset_text_field, cfg.data.skip_invalid, dialogue_format=cfg.data.dialogue_format
        )
        encoded, report = encode_dataset(
            self.tokenizer,
            parsed,
            max_length=cfg.data.max_length,
            truncation=cfg.data.truncation,
            completion_only=cfg.completion_only_loss,
            skip_invalid=cfg.data.skip_invalid,
        )
        report.log(f"{name} data")
        if not cfg.packing:
            return encoded
        rows = pack_examples(encoded, cfg.data.max_length)
        logger.info(
            "%s data: packed %d examples into %d rows of <= %d tokens",
            name,
            len(encoded),
            len(rows),
            cfg.data.max_length,
        )
        return rows

    def _collate(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if self.config.packing:
            batch = collate_packed(items, pad_id, mask_dtype=self.mask_dtype)  # type: ignore[arg-type]
        else:
            batch = pad_batch(items, pad_id)  # type: ignore[arg-type]
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _token_losses(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(B, T-1) per-token NLL, the (B, T-1) target mask and the loss metrics of one micro-batch."""
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits
        mask = batch["loss_mask"][:, 1:]  # position t predicts token t + 1
        token_logps = masked_token_logps(logits[:, :-1], batch["input_ids"][:, 1:], mask)  # (B, T-1)
        losses, metrics = sft_loss(token_logps, mask)
        return losses, mask, metrics

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self.model.train()
        for micro_indices in engine.steps():
            micro_items = [[self.train_items[i] for i in idx] for idx in micro_indices]
            num_loss_tokens = engine.global_sum(sum(_num_loss_tokens(items) for items in micro_items))
            num_tokens = engine.global_sum(sum(_num_tokens(items) for items in micro_items))
            nll_sum = 0.0
            for i, items in enumerate(micro_items):
                with engine.sync_context(i, len(micro_items)):
                    batch = self._collate(items)  # one micro-batch at a time
                    losses, mask, loss_metrics = self._token_losses(self.model, batch)
                    engine.backward(reduce_loss(losses, mask, num_items=num_loss_tokens))
                nll_sum += loss_metrics["train/nll_sum"].item()
            loss = (engine.global_sum(nll_sum) / num_loss_tokens).item()
            step_metrics = {"train/num_loss_tokens": num_loss_tokens.item()}
            engine.optimizer_step(
                loss, num_tokens.item(), step_metrics, self.evaluate if self.eval_items else None
            )
        return self._finish()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean per-token NLL on the held-out set (each process scores its share).

        The unwrapped model is used: its forward has no DDP collectives (nor FSDP's, with the weights
        gathered), so processes may score different numbers of batches.
        """
        model = self.accelerator.unwrap_model(self.model)
        self.model.eval()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = self.eval_items[rank::world]
        size = self.config.train.per_device_train_batch_size
        nll, count = 0.0, 0.0
        with self.engine.gathered():
            for start in self.engine.eval_starts(len(mine), size):
                _, _, metrics = self._token_losses(model, self._collate(mine[start : start + size]))
                nll += metrics["train/nll_sum"].item()
                count += metrics["train/num_loss_tokens"].item()
        self.model.train()
        mean_nll = (self.engine.global_sum(nll) / self.engine.global_sum(count)).item()
        return {"eval/loss": mean_nll, "eval/perplexity": float(torch.tensor(mean_nll).exp())}

    def _finish(self) -> dict[str, Any]:
        final = Path(self.config.train.output_dir) / "final"
        model = self.accelerator.unwrap_model(self.model)
        weights = self.engine.full_state_dict(model)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_final(model, self.tokenizer, final, weights)
        summary = self.engine.finish({"train_items": len(self.train_items), "packing": self.config.packing})
        logger.info("SFT done in %.0f s: final model in %s", summary["wall_seconds"], final)
        return summary
