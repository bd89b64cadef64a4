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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from preftune.config import config_to_flat_dict
from preftune.data import (
    DataConfig,
    EncodedExample,
    collate_packed,
    encode_dataset,
    load_rows,
    pack_examples,
    pad_batch,
    parse_sft,
)
from preftune.engine import Engine, TrainConfig, build_accelerator
from preftune.losses import sft_loss
from preftune.models.loading import ModelConfig, check_model_path, load_policy, load_tokenizer, save_final
from preftune.ops.logprobs import shifted_token_logps
from preftune.ops.reduce import masked_sum, reduce_loss

logger = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5))
    completion_only_loss: bool = True
    """Train on response tokens only (prompt masked). False trains on the prompt too."""
    packing: bool = False
    """Pack several examples into each row of --max_length tokens (block-diagonal attention, no padding)."""
    dataset_text_field: str | None = None
    """Train on this string column as plain text (e.g. 'chosen' of HH-RLHF) instead of detecting the format."""


class SFTTrainer:
    """Maximum likelihood on demonstrations. `SFTTrainer(config).train()` runs the whole job."""

    def __init__(
        self,
        config: SFTConfig,
        model: torch.nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.config = config
        check_model_path(config.model.model)
        self.tokenizer = tokenizer or load_tokenizer(config.model.model, config.model.trust_remote_code)
        # Data is read, validated and tokenized before the model loads, so bad rows fail fast.
        self.train_items = self._encode(config.data.dataset, "train")
        self.eval_items = self._encode(config.data.eval_dataset, "eval") if config.data.eval_dataset else []
        self.accelerator = build_accelerator(config.train)
        policy = model or load_policy(config.model)
        self.engine = Engine(
            config.train, policy, len(self.train_items), config_to_flat_dict(config), self.accelerator
        )
        self.model = self.engine.model

    def _encode(self, source: str, split: str) -> list[EncodedExample] | list[list[EncodedExample]]:
        cfg = self.config
        table = load_rows(source, cfg.data.dataset_split)
        parsed = parse_sft(table, text_field=cfg.dataset_text_field, skip_invalid=cfg.data.skip_invalid)
        encoded, report = encode_dataset(
            self.tokenizer,
            parsed,
            max_length=cfg.data.max_length,
            truncation=cfg.data.truncation,
            completion_only=cfg.completion_only_loss,
            skip_invalid=cfg.data.skip_invalid,
        )
        log = logger.warning if report.skipped else logger.info
        log("%s data: %s", split, report.summary())
        if cfg.packing:
            return pack_examples(encoded, cfg.data.max_length)
        return encoded

    def _collate(self, items: list) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        batch = collate_packed(items, pad_id) if self.config.packing else pad_batch(items, pad_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T-1) per-token NLL and the (B, T-1) target mask of one micro-batch."""
        logits = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch.get("position_ids"),
        ).logits
        token_logps = shifted_token_logps(logits, batch["input_ids"])  # (B, T-1)
        mask = batch["loss_mask"][:, 1:]
        losses, _ = sft_loss(token_logps, mask)
        return losses, mask

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self.model.train()
        for micro_indices in engine.steps():
            batches = [self._collate([self.train_items[i] for i in idx]) for idx in micro_indices]
            num_targets = engine.global_sum(sum(b["loss_mask"][:, 1:].sum() for b in batches))
            num_tokens = engine.global_sum(sum(b["num_tokens"] for b in batches))
            loss_sum = 0.0
            for i, batch in enumerate(batches):
                with engine.sync_context(i, len(batches)):
                    losses, mask = self._token_losses(batch)
                    engine.backward(reduce_loss(losses, mask, num_items=num_targets))
                loss_sum += masked_sum(losses.detach(), mask).item()
            loss = (engine.global_sum(loss_sum) / num_targets).item()
            engine.optimizer_step(loss, num_tokens.item(), {"train/num_targets": num_targets.item()})
            if self.eval_items and engine.should_evaluate():
                engine.log_eval(self.evaluate())
        return self._finish()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean per-token NLL on the held-out set (each process scores its share)."""
        self.model.eval()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = self.eval_items[rank::world]
        size = self.config.train.per_device_train_batch_size
        nll, count = 0.0, 0.0
        for start in range(0, len(mine), size):
            losses, mask = self._token_losses(self._collate(mine[start : start + size]))
            nll += masked_sum(losses, mask).item()
            count += mask.sum().item()
        self.model.train()
        mean_nll = (self.engine.global_sum(nll) / self.engine.global_sum(count)).item()
        return {"eval/loss": mean_nll, "eval/perplexity": float(torch.tensor(mean_nll).exp())}

    def _finish(self) -> dict[str, Any]:
        final = Path(self.config.train.output_dir) / "final"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_final(self.accelerator.unwrap_model(self.model), self.tokenizer, final)
        summary = {"train_items": len(self.train_items), "packing": self.config.packing}
        return self.engine.finish(summary)
