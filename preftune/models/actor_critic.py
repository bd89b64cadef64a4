"""The trained models of policy-gradient RLHF as one module: the policy and, for PPO, the value model.

One module means one optimizer, one gradient clip and one DDP wrapper for both, as in
most PPO implementations for language models. Two layouts:

- separate models: the policy (a causal LM, LoRA or not) and a value model, a sequence
  classifier with one head (`AutoModelForSequenceClassification`), each with its own weights;
- one shared backbone (`SharedBackboneActorCritic`): the policy is the LoRA adapter
  "default", the value model is a second LoRA adapter "value" plus a linear value head on the
  same base weights, and the reference is the base with adapters disabled. One copy of the
  base weights serves policy, value and reference.

Every forward returns per-response-token tensors, flat (M,) in the order of the batch's
`response_logit_index` (see preftune/data/pairs.py): the policy's log-probs of the tokens,
the entropy of its next-token distribution there, and the value of the state before each token.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from peft import LoraConfig, PeftModel
from torch import Tensor

from preftune.models.logps import ResponseLogps
from preftune.models.scalar import PooledScorer
from preftune.ops.logprobs import entropy_from_logits, gather_token_logps

VALUE_ADAPTER = "value"
"""Name of the value model's LoRA adapter in the shared-backbone layout."""


class TokenOutputs(NamedTuple):
    """Per response token (M,): log-probs, entropies and values (None without a value model)."""

    logps: Tensor
    entropy: Tensor
    values: Tensor | None


def _policy_outputs(
    policy: ResponseLogps,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    logit_index: Tensor,
    targets: Tensor,
) -> tuple[Tensor, Tensor]:
    logits = policy.logits_at(input_ids, attention_mask, position_ids, logit_index)  # (M, V), / temperature
    logps = gather_token_logps(logits[None], targets[None])[0]  # (M,)
    with torch.no_grad():  # entropy is logged, not trained
        entropy = entropy_from_logits(logits)
    return logps, entropy


class ActorCritic(torch.nn.Module):
    """A policy (with its sampling temperature) and an optional separate value model."""

    def __init__(self, policy: ResponseLogps, value: PooledScorer | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value = value
        if value is not None and value.num_heads != 1:
            raise ValueError(f"The value model must have one head, got {value.num_heads}.")

    def tie_weights(self) -> None:
        """As ResponseLogps.tie_weights (for accelerate's FSDP2 preparation)."""
        self.policy.tie_weights()
        if self.value is not None:
            self.value.tie_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        logit_index: Tensor,
        targets: Tensor,
    ) -> TokenOutputs:
        """input_ids, attention_mask, position_ids (R, T); logit_index, targets (M,) as for ResponseLogps."""
        logps, entropy = _policy_outputs(
            self.policy, input_ids, attention_mask, position_ids, logit_index, targets
        )
        values = None
        if self.value is not None:
            values = self.value(input_ids, attention_mask, position_ids, logit_index)[:, 0]  # (M,)
        return TokenOutputs(logps, entropy, values)


class SharedBackboneActorCritic(torch.nn.Module):
    """Policy adapter, value adapter + value head, and the reference, all on one LoRA base model."""

    def __init__(self, policy: ResponseLogps, lora: LoraConfig) -> None:
        super().__init__()
        if not isinstance(policy.model, PeftModel):
            raise ValueError("The shared-backbone layout needs a LoRA policy (--use_peft true).")
        self.policy = policy
        peft_model = policy.model
        peft_model.add_adapter(VALUE_ADAPTER, lora)
        hidden = policy.causal_lm.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)  # values start at 0: no untrained-head noise in GAE
        torch.nn.init.zeros_(self.value_head.bias)
        # peft marks only the active adapter trainable; both are trained here.
        self._trainable = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        self._use_adapter("default")

    def _use_adapter(self, name: str) -> None:
        cast(PeftModel, self.policy.model).set_adapter(name)
        for param in self._trainable:  # set_adapter froze the other adapter; keep both trainable
            param.requires_grad_(True)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        logit_index: Tensor,
        targets: Tensor,
    ) -> TokenOutputs:
        """As ActorCritic.forward; the value pass runs the base with the value adapter."""
        logps, entropy = _policy_outputs(
            self.policy, input_ids, attention_mask, position_ids, logit_index, targets
        )
        self._use_adapter(VALUE_ADAPTER)
        try:
            hidden = self.policy.causal_lm.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state  # (R, T, H)
        finally:
            self._use_adapter("default")
        picked = hidden.reshape(-1, hidden.shape[-1])[logit_index]  # (M, H)
        values = self.value_head(picked.to(self.value_head.weight.dtype))[:, 0].float()  # (M,)
        return TokenOutputs(logps, entropy, values)
