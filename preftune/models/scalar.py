"""Scalar-head models (reward and value) scored at chosen token positions.

transformers' `...ForSequenceClassification` reads its score at "the rightmost token that
is not the pad token". That is wrong when the pad token is also the EOS token that ends
every response (the score lands on the token before EOS), and it cannot read packed rows
at all. `PooledScorer` runs the same backbone and head but reads the scores at positions
the caller gives (computed from sequence lengths, never from token ids), and only there:
the head is applied to the gathered hidden states, not to every token.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel


def score_head(model: PreTrainedModel) -> torch.nn.Module:
    """The linear head of a decoder sequence classifier (the `score` module in transformers)."""
    head = dict(model.named_children()).get("score")
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no `score` head. preftune's reward and value models are decoder "
            "sequence classifiers (LlamaForSequenceClassification, Qwen2ForSequenceClassification, ...), whose "
            "head is called `score`; use a decoder checkpoint."
        )
    return head


class PooledScorer(torch.nn.Module):
    """Scores (N, K) of a sequence classifier read at flat token positions.

    Wraps the model so that distributed wrappers (DDP) see one forward call.
    """

    def __init__(self, model: PreTrainedModel | PeftModel) -> None:
        super().__init__()
        self.model = model
        score_head(self.classifier)  # fail at construction, not at the first step

    @property
    def classifier(self) -> PreTrainedModel:
        """The sequence classifier (under its LoRA wrapper, whose adapters stay active)."""
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        assert isinstance(base, PreTrainedModel)
        return base

    def tie_weights(self) -> None:
        """As ResponseLogps.tie_weights (for accelerate's FSDP2 preparation)."""
        self.classifier.tie_weights()

    @property
    def num_heads(self) -> int:
        num_labels = self.classifier.config.num_labels
        assert num_labels is not None, "a sequence classifier always has num_labels"
        return num_labels

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, score_index: Tensor
    ) -> Tensor:
        """input_ids, position_ids (R, T); attention_mask (R, T) or (R, 1, T, T); score_index (N,)
        flat indices into the R*T tokens. Returns (N, K) float32 scores."""
        classifier = self.classifier
        hidden = classifier.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (R, T, H)
        picked = hidden.reshape(-1, hidden.shape[-1])[score_index]  # (N, H)
        return score_head(classifier)(picked).float()  # (N, K)
