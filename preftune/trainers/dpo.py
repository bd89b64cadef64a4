"""Direct preference optimisation and its family, on the prefix-shared packed pair batches.

Paper: DPO (Rafailov et al. 2023, arXiv 2305.18290), eq. 7: the policy is trained on
pairs so that beta * log(pi / pi_ref) acts as the reward of a Bradley-Terry model. The
other objectives of the family (IPO, cDPO, rDPO, SimPO, ORPO, ...) are the pure functions
of preftune/losses/pairwise.py, chosen with --loss_type and mixed with --loss_weights.
What is implemented here: the reference is a frozen copy of --ref_model (default: the
--model checkpoint) or, with --use_peft, the policy with its LoRA adapter disabled (one
copy of the weights). Each pair runs as one [prompt][chosen][rejected] block with the
prompt computed once; the LM head runs only at response positions.
Soft labels: with a `chosen_probability` column p (e.g. from preftune/feedback/aggregate.py)
the losses in losses.registry.SOFT_LABEL_LOSSES take per-pair label smoothing 1 - p (combined with
--label_smoothing as independent flips), the expected loss under the soft label; other losses
refuse such data. --label_noise auto sets --label_smoothing to the Dawid-Skene flip rate of the
training ratings (logged and written to summary.json), for the losses in
losses.registry.LABEL_NOISE_LOSSES.
Departures: the loss is a weighted mean over the pairs of the global batch (the `weight`
column, default 1), not a plain mean over the micro-batch. BCO's reward shift delta is the
mean implicit reward of each micro-batch, not the paper's running mean. WPO's weights are
the plain policy probabilities (no sampled-alignment normalisation). The KL to the reference
is logged at evaluation: the exact token-level KL summed along each held-out response.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from preftune.config import config_to_flat_dict
from preftune.data import EncodedPair
from preftune.data.io import describe_source
from preftune.data.pairs import chosen_probabilities, collate_pairs, load_pairs
from preftune.engine import Engine
from preftune.feedback.aggregate import resolve_label_smoothing
from preftune.losses.kl import token_kl
from preftune.losses.pairwise_variants import ld_logps_flat, wpo_weights
from preftune.losses.registry import SFT_TERM, SOFT_LABEL_LOSSES, SORTED_LOSSES, combined_losses
from preftune.losses.reward import compose_label_smoothing
from preftune.models.loading import packed_attention, save_final, token_id
from preftune.models.logps import ResponseLogps, reference_view, sequence_sums
from preftune.models.ref_cache import (
    cache_path,
    checkpoint_fingerprint,
    data_fingerprint,
    read_cached,
    write_cached,
)
from preftune.ops.logprobs import gather_token_logps
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.inputs import (
    Given,
    Trainer,
    accelerator_for,
    policy_for,
    reference_for,
    take_reference,
    tokenizer_for,
)

__all__ = ["DPOConfig", "DPOTrainer"]

logger = logging.getLogger(__name__)


class DPOTrainer(Trainer):
    """`DPOTrainer(config).train()` runs the whole job from the config's paths. From Python, objects may
    stand in for them (preftune/trainers/inputs.py): `DPOTrainer(args=config, model=model,
    ref_model=ref, processing_class=tokenizer, train_dataset=dataset, eval_dataset=held_out)`. Without
    a reference, a model object's reference is a frozen copy of it taken before training (with
    --use_peft: the policy with its adapter disabled)."""

    takes = (*Trainer.takes, "ref_model")

    def _build(self, given: Given) -> None:
        config, model = self.config, given.model
        ref_model = take_reference(config, given.ref_model)
        self.in_memory_models = model is not None or ref_model is not None
        self.tokenizer = tokenizer_for(config.model, model, given.processing_class)
        # Data is read, validated and tokenized before any model loads, so bad rows fail fast.
        self.train_pairs = self._encode(config.data.dataset, config.data.dataset_split, "train")
        self.eval_pairs = (
            self._encode(config.data.eval_dataset, config.data.eval_split, "eval")
            if config.data.eval_dataset
            else []
        )
        if sum(pair.loss_weight for pair in self.train_pairs) == 0:
            raise ValueError(
                f"Every pair of {describe_source(config.data.dataset)} has weight 0: nothing to train on. Fix the 'weight' column."
            )
        self._check_soft_labels()
        self.label_smoothing, self.label_noise_report = resolve_label_smoothing(
            config.label_noise,
            config.label_smoothing,
            config.data.dataset,
            config.data.dataset_split,
            config.data.skip_invalid,
        )
        if "cdpo" in config.loss_type and not self.label_smoothing > 0:
            raise ValueError(
                f"cdpo needs a label-flip rate > 0, but --label_noise {config.label_noise} gave "
                f"{self.label_smoothing}; use sigmoid for clean labels."
            )
        sorted_losses = [name for name in config.loss_type if name in SORTED_LOSSES]
        if sorted_losses and any(pair.loss_weight != 1.0 for pair in self.train_pairs):
            raise ValueError(
                f"{describe_source(config.data.dataset)} has a 'weight' column, but {sorted_losses} are computed per "
                "sorted position, not per pair, so the weights cannot apply; drop one of them."
            )
        self.accelerator = accelerator_for(config.train, given.accelerator)
        policy = policy_for(config.model, model)
        # With --precompute_ref_log_probs and no reference of its own, the reference is the policy before its
        # first step: it scores the pairs itself, and no second copy of the weights is made (or loaded).
        self.policy_is_reference = (
            config.precompute_ref_log_probs
            and ref_model is None
            and not config.ref_model
            and not config.model.use_peft
        )
        self.reference = (
            None
            if config.reference_free or self.policy_is_reference
            else reference_for(config.model, config.ref_model, model, ref_model, self.accelerator.device)
        )
        self.prefix_sharing, self.mask_dtype = packed_attention(policy, config.prefix_sharing)
        self.engine = Engine(
            config.train,
            ResponseLogps(policy),
            len(self.train_pairs),
            config_to_flat_dict(config),
            self.accelerator,
            shardable=True,
        )
        self.model = self.engine.model
        self.ref_cache: dict[str, torch.Tensor] = {}
        if config.precompute_ref_log_probs:
            self.ref_cache = {"train": self._precompute(self.train_pairs, "train")}
            if self.eval_pairs:
                self.ref_cache["eval"] = self._precompute(self.eval_pairs, "eval")
            self.reference, self.policy_is_reference = None, False  # not needed any more: free its memory

    def _precompute(self, pairs: list[EncodedPair], name: str) -> torch.Tensor:
        """(N, 2) reference log-probs (chosen, rejected) of `pairs`, from the disk cache or computed now."""
        cfg = self.config
        if self.in_memory_models:  # no checkpoint on disk names the reference: no disk cache
            return self._score_reference(pairs, name)
        model_key = checkpoint_fingerprint(cfg.ref_model or cfg.model.model)
        sequences = (
            ids
            for p in pairs
            for ids in (p.chosen.input_ids, p.rejected.input_ids, [p.chosen.num_prompt_tokens])
        )
        settings = f"dtype={cfg.model.dtype};mixed={self.accelerator.mixed_precision};ld_alpha={cfg.ld_alpha}"
        path = cache_path(model_key, data_fingerprint(sequences, settings))
        cached = read_cached(path)
        if cached is not None and cached.shape == (len(pairs), 2):
            logger.info("%s: reference log-probs of %d pairs read from %s.", name, len(pairs), path)
            return cached
        result = self._score_reference(pairs, name)
        if self.accelerator.is_main_process:
            write_cached(path, result, {"reference": cfg.ref_model or cfg.model.model, "data": name})
            logger.info("%s: reference log-probs of %d pairs cached in %s.", name, len(pairs), path)
        return result

    @torch.no_grad()
    def _score_reference(self, pairs: list[EncodedPair], name: str) -> torch.Tensor:
        """(N, 2) reference log-probs (chosen, rejected) of `pairs`, each process scoring a share."""
        cfg = self.config
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        size = cfg.train.per_device_train_batch_size
        mine = list(range(rank, len(pairs), world))
        scored: list[tuple[int, float, float]] = []
        with self.engine.gathered():  # when the policy is the reference
            for start in tqdm(
                range(0, len(mine), size),
                desc=f"reference log-probs ({name})",
                disable=not self.accelerator.is_main_process or cfg.train.disable_tqdm,
            ):
                indices = mine[start : start + size]
                ref = self._ref_logps(self._collate([pairs[i] for i in indices]))
                assert ref is not None, "precompute_ref_log_probs needs a reference (checked in DPOConfig)"
                B = len(indices)
                scored += zip(indices, ref[:B].tolist(), ref[B:].tolist(), strict=True)
        everything = sorted(gather_object(scored) if world > 1 else scored)
        return torch.tensor([[c, r] for _, c, r in everything])  # (N, 2)

    def _encode(self, source: Any, split: str, name: str) -> list[EncodedPair]:
        return load_pairs(self.tokenizer, source, split, self.config.data, name)[0]

    def _check_soft_labels(self) -> None:
        """Soft labels only meet losses that can use them (SOFT_LABEL_LOSSES), before any model loads."""
        if chosen_probabilities(self.train_pairs + self.eval_pairs) is None:
            return
        other = [n for n in self.config.loss_type if n not in (*SOFT_LABEL_LOSSES, SFT_TERM)]
        if other:
            raise ValueError(
                f"The data has a 'chosen_probability' column (soft labels), which {other} cannot use; "
                f"use {', '.join(SOFT_LABEL_LOSSES)}, or drop the column (its 'weight' still applies)."
            )
        logger.info("Using the 'chosen_probability' column as soft labels (per-pair label smoothing 1 - p).")

    def _reference(self) -> contextlib.AbstractContextManager[ResponseLogps]:
        policy = self.accelerator.unwrap_model(self.model)
        reference = policy if self.policy_is_reference else self.reference
        return reference_view(reference, policy, self.accelerator.autocast())

    def _collate(self, pairs: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        pad_id = token_id(self.tokenizer, "pad")
        return collate_pairs(pairs, pad_id, self.prefix_sharing, self.mask_dtype, self.accelerator.device)

    def _logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(2B,) summed response log-probs: chosen sequences first, then rejected."""
        return self._sequence_logps(model(*_logit_inputs(batch), batch["response_target"]), batch)

    def _sequence_logps(self, token_logps: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(2B,) sequence log-probs from the (M,) response-token log-probs (LD-DPO's weighting with --ld_alpha)."""
        S = 2 * batch["chosen_index"].shape[0]
        if self.config.ld_alpha is None:
            return sequence_sums(token_logps, batch["response_seq"], S)
        return ld_logps_flat(token_logps, batch["response_seq"], S, self.config.ld_alpha)

    @torch.no_grad()
    def _ref_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if self.config.reference_free:
            return None
        with self._reference() as reference:
            return self._logps(reference, batch)

    def pair_losses(
        self,
        logps: torch.Tensor,
        ref_logps: torch.Tensor | None,
        lengths: torch.Tensor,
        soft_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B,) combined losses and (B,) metrics from (2B,) policy/reference log-probs and lengths, and
        (B,) soft labels P(chosen is truly preferred) or None."""
        cfg = self.config
        smoothing: float | torch.Tensor = self.label_smoothing
        if soft_labels is not None:
            smoothing = compose_label_smoothing(self.label_smoothing, soft_labels.to(logps.device))  # (B,)
        params = {"label_smoothing": smoothing, "gamma": cfg.gamma, "tau": cfg.discopop_tau}
        # TRL's coefficient a is the paper's alpha = 1 - a (see DPOConfig.f_alpha_divergence_coef)
        return combined_losses(
            cfg.loss_type,
            cfg.weights,
            logps,
            ref_logps,
            lengths,
            cfg.beta,
            params,
            cfg.f_divergence_type,
            1 - cfg.f_alpha_divergence_coef,
        )

    def _step_losses(
        self,
        pairs: Sequence[EncodedPair],
        model: torch.nn.Module,
        cached: torch.Tensor | None = None,
        with_kl: bool = False,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """Batch, (B,) losses and (B,) metrics; `cached` (B, 2) are precomputed reference log-probs. With
        `with_kl` (evaluation, `model` unwrapped), metrics["kl"] is the (B,) KL to the reference summed over
        both responses, from the same forward passes of policy and reference as the log-probs."""
        batch = self._collate(pairs)
        kl = None
        if with_kl:
            assert isinstance(model, ResponseLogps) and cached is None and not self.config.reference_free
            target = batch["response_target"]
            logits = model.logits_at(*_logit_inputs(batch))  # (M, V)
            with torch.no_grad(), self._reference() as reference:
                ref_logits = reference.logits_at(*_logit_inputs(batch))
            logps = self._sequence_logps(gather_token_logps(logits[None], target[None])[0], batch)
            ref_logps: torch.Tensor | None = self._sequence_logps(
                gather_token_logps(ref_logits[None], target[None])[0], batch
            )
            token_kls = token_kl(logits.log_softmax(dim=-1), ref_logits.log_softmax(dim=-1))  # (M,)
            kl = sequence_sums(token_kls, batch["response_seq"], logps.shape[0])  # (2B,)
        else:
            logps = self._logps(model, batch)
            if cached is not None:
                ref_logps = torch.cat([cached[:, 0], cached[:, 1]]).to(logps.device)
            else:
                ref_logps = self._ref_logps(batch)
        lengths = torch.bincount(batch["response_seq"], minlength=logps.shape[0]).to(logps.dtype)  # (2B,)
        losses, metrics = self.pair_losses(logps, ref_logps, lengths, chosen_probabilities(pairs))
        if self.config.use_weighting:  # WPO: detached weights, the policy's probability of the pair
            B = len(pairs)
            wpo = wpo_weights(logps[:B].detach() / lengths[:B], logps[B:].detach() / lengths[B:])
            losses, metrics = losses * wpo, {**metrics, "wpo/weight": wpo}
        if kl is not None:
            metrics["kl"] = kl[: len(pairs)] + kl[len(pairs) :]
        return batch, losses, metrics

    def train(self) -> dict[str, Any]:
        engine = self.engine
        self.model.train()
        for micro_indices in engine.steps():
            micro_pairs = [[self.train_pairs[i] for i in idx] for idx in micro_indices]
            total_weight = engine.global_sum(
                sum(p.loss_weight for pairs in micro_pairs for p in pairs)
            ).clamp(min=1e-12)
            sums: defaultdict[str, torch.Tensor | float] = defaultdict(float)  # device tensors: no sync
            for i, (idx, pairs) in enumerate(zip(micro_indices, micro_pairs, strict=True)):
                cached = self.ref_cache["train"][idx] if self.ref_cache else None
                with engine.sync_context(i, len(micro_pairs)):
                    batch, losses, metrics = self._step_losses(pairs, self.model, cached)
                    weights = torch.tensor([p.loss_weight for p in pairs], device=losses.device)
                    loss = (losses * weights).sum() / total_weight.float()
                    engine.backward(loss)
                sums["loss"] += loss.detach()
                sums["num_tokens"] += batch["num_tokens"]
                sums["num_pairs"] += len(pairs)
                for name, value in metrics.items():
                    sums[name] += value.float().sum()
            totals = engine.global_sums(sums)  # one collective, one sync
            loss = totals.pop("loss")
            num_tokens, num_pairs = totals.pop("num_tokens"), totals.pop("num_pairs")
            step_metrics = {name: value / num_pairs for name, value in totals.items()}
            engine.optimizer_step(loss, num_tokens, step_metrics, self.evaluate if self.eval_pairs else None)
            if self.config.sync_ref_model and engine.step % self.config.ref_model_sync_steps == 0:
                self._sync_reference()
        return self._finish()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean held-out loss, reward accuracy and margin (each process scores a share)."""
        model = self.accelerator.unwrap_model(self.model)
        self.model.eval()
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = self.eval_pairs[rank::world]
        cache = self.ref_cache["eval"][rank::world] if self.ref_cache else None
        size = self.config.train.per_device_train_batch_size
        sums: dict[str, torch.Tensor | float] = {
            "loss": 0.0,
            "rewards/accuracies": 0.0,
            "rewards/margins": 0.0,
        }
        with_kl = not self.config.reference_free and cache is None  # KL needs the reference's distribution
        if with_kl:
            sums["kl"] = 0.0
        with self.engine.gathered():
            for start in self.engine.eval_starts(len(mine), size):
                cached = cache[start : start + size] if cache is not None else None
                _, losses, metrics = self._step_losses(mine[start : start + size], model, cached, with_kl)
                sums["loss"] += losses.sum()
                for name in ("rewards/accuracies", "rewards/margins"):
                    sums[name] += metrics[name].sum()
                if with_kl:  # summed over the chosen and rejected responses, so /2 per response
                    sums["kl"] += metrics["kl"].sum() / 2
        self.model.train()
        totals = self.engine.global_sums(sums)
        return {f"eval/{name}": value / len(self.eval_pairs) for name, value in totals.items()}

    @torch.no_grad()
    def _sync_reference(self) -> None:
        """TR-DPO soft update (arXiv 2404.09656, eq. 5): ref <- alpha * policy + (1 - alpha) * ref."""
        assert self.reference is not None, "TR-DPO needs a separate reference (checked in DPOConfig)"
        alpha = self.config.ref_model_mixup_alpha
        with self.engine.gathered():
            policy = dict(self.accelerator.unwrap_model(self.model).causal_lm.named_parameters())
            # named_parameters lists a tied tensor (embeddings = LM head) once, so it is mixed once
            for name, value in self.reference.causal_lm.named_parameters():
                value.mul_(1 - alpha).add_(policy[name].detach().to(value.dtype), alpha=alpha)
        logger.info(
            "step %d: reference moved towards the policy (TR-DPO, alpha=%g).", self.engine.step, alpha
        )

    def _finish(self) -> dict[str, Any]:
        final = Path(self.config.train.output_dir) / "final"
        policy = self.accelerator.unwrap_model(self.model).model
        weights = self.engine.full_state_dict(policy)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_final(policy, self.tokenizer, final, weights)
        extra: dict[str, Any] = {"train_pairs": len(self.train_pairs), "loss_type": self.config.loss_type}
        if self.label_noise_report is not None:
            extra["label_noise"] = self.label_noise_report
        summary = self.engine.finish(extra)
        logger.info("DPO done in %.0f s: final model in %s", summary["wall_seconds"], final)
        return summary


def _logit_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """What ResponseLogps.logits_at takes from a collated batch: ids, mask, positions, response positions."""
    return batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["response_logit_index"]
