"""Response-token log-probabilities of a causal LM, computed only where they are needed.

`ResponseLogps` runs the backbone over the whole batch but applies the LM head only at
the positions that predict response tokens (the flat `response_logit_index` of a pair or
sequence batch), so neither the prompt's logits nor a full-vocabulary log-softmax of the
batch is ever materialised: the float32 working set is (M, V) for M response tokens.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel

from preftune.models.config import ModelConfig
from preftune.models.loading import load_reference
from preftune.ops.logprobs import gather_token_logps

logger = logging.getLogger(__name__)


class ResponseLogps(torch.nn.Module):
    """Token log-probs (M,) of a causal LM at flat positions; wraps the model for DDP."""

    def __init__(self, model: PreTrainedModel | PeftModel, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.model = model
        self.temperature = temperature
        config = self.causal_lm.config.to_dict()
        if config.get("final_logit_softcapping") or config.get("logit_scale"):
            raise ValueError(
                f"{type(self.causal_lm).__name__} post-processes its logits (soft-capping or scaling), which the "
                "response-only log-prob path does not reproduce yet; use a model without it."
            )

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The causal LM (under its LoRA wrapper, whose adapters stay active)."""
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        assert isinstance(base, PreTrainedModel)
        return base

    def tie_weights(self) -> None:
        """Tie the LM head to the embeddings again, if the model ties them: accelerate's FSDP2 preparation
        calls this on the module it shards after moving it to the meta device (which unties them)."""
        self.causal_lm.tie_weights()

    def logits_at(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, logit_index: Tensor
    ) -> Tensor:
        """(M, V) float32 logits (divided by the temperature) at flat positions `logit_index` (M,)."""
        lm = self.causal_lm
        hidden = lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (R, T, H)
        picked = hidden.reshape(-1, hidden.shape[-1])[logit_index]  # (M, H)
        head = lm.get_output_embeddings()
        assert isinstance(head, torch.nn.Module), "a causal LM has an output embedding (the LM head)"
        return head(picked).float() / self.temperature  # (M, V)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        logit_index: Tensor,
        targets: Tensor,
    ) -> Tensor:
        """input_ids, position_ids (R, T); attention_mask (R, T) or (R, 1, T, T); logit_index, targets
        (M,): flat positions into the R*T tokens whose logits predict `targets`. Returns (M,) float32."""
        logits = self.logits_at(input_ids, attention_mask, position_ids, logit_index)  # (M, V)
        return gather_token_logps(logits[None], targets[None])[0]  # (M,)


def sequence_sums(token_values: Tensor, sequence_index: Tensor, num_sequences: int) -> Tensor:
    """(S,) sums of (M,) per-token values grouped by their (M,) sequence index."""
    sums = torch.zeros(num_sequences, dtype=token_values.dtype, device=token_values.device)
    return sums.index_add(0, sequence_index, token_values)


def load_frozen_reference(
    config: ModelConfig, ref_model: str | None, device: str, temperature: float = 1.0
) -> ResponseLogps | None:
    """The reference policy as a frozen copy of `ref_model` (default: `config.model`), or None when it
    is the LoRA policy (`config.use_peft`, no `ref_model`) with its adapter disabled. Its log-probs
    use `temperature`, which must be the policy's (RL: the sampling temperature)."""
    if config.use_peft and not ref_model:
        logger.info("Reference: the policy with its LoRA adapter disabled.")
        return None
    path = ref_model or config.model
    logger.info("Reference: a frozen copy of %s.", path)
    return ResponseLogps(
        load_reference(path, config.dtype, device, config.trust_remote_code), temperature
    ).eval()


@contextlib.contextmanager
def reference_view(
    reference: ResponseLogps | None,
    policy: ResponseLogps,
    autocast: contextlib.AbstractContextManager,
) -> Iterator[ResponseLogps]:
    """The module that computes the reference's log-probs, run under the same `autocast` as the
    policy so both use one precision: the frozen copy, or the (unwrapped) LoRA policy with its
    adapter disabled."""
    if reference is not None:
        with autocast:
            yield reference
        return
    if not isinstance(policy.model, PeftModel):
        raise ValueError("Without a reference model the policy must be a LoRA adapter (--use_peft).")
    with policy.model.disable_adapter(), autocast:
        yield policy
