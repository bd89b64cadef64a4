"""The LLM judge (`llm:PATH`): a local causal LM compares two responses by its next-token answer.

    judge = LLMJudge("models/judge", min_answer_mass=0.2, cache_dir="runs/judge-cache")
    verdicts = judge.compare(prompts, first, second)   # PairVerdicts with prob_first and consistent

The pair is rendered with a `PairTemplate` (fenced texts, see preftune/judges/template.py), wrapped
as one user message with the generation prompt when the tokenizer has a chat template
(`chat_template="auto"`), and the preference is read from the log-probabilities of the two answer
tokens at the next position, never from generated text. Each pair is judged in both orders
(`two_order_verdicts`). A pair is not judged (NaN and a reason) when a rendered prompt is longer
than `max_length` tokens or the model puts less than `min_answer_mass` on the two answers.

Forwards are batched with left padding (position ids follow the attention mask) and keep only the
last position's logits; the model is in eval mode and runs without gradients. With `cache_dir`, the
answer log-probs of every rendered prompt are stored on disk (preftune/judges/cache.py), keyed by
the model's files (path, config.json, and the size and mtime of each weight file), the dtype, the
rendered prompt and the answer tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from preftune.data import Completion, Prompt
from preftune.judges.base import PairVerdicts, check_pairs
from preftune.judges.cache import VerdictCache, decode_logps, encode_logps
from preftune.judges.template import Answer, PairTemplate, two_order_verdicts
from preftune.models.loading import check_model_path, load_reference, load_tokenizer, token_id

logger = logging.getLogger(__name__)

DEFAULT_MIN_ANSWER_MASS = 0.2
"""A verdict needs at least this probability on the two answer tokens together, in both orders."""

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.gguf")
"""The files of a checkpoint folder that `model_fingerprint` counts as weights."""


def model_fingerprint(path: str) -> str:
    """sha256 of a checkpoint folder's identity: resolved path, config.json, and name, size and mtime
    of every weight file (`WEIGHT_PATTERNS`), so retrained weights in the same folder get new cache keys."""
    folder = Path(path).resolve()
    digest = hashlib.sha256(str(folder).encode())
    digest.update((folder / "config.json").read_bytes())
    for weights in sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)}):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class LLMJudge:
    """Pairwise verdicts from a local causal LM's next-token probabilities of the answer labels."""

    def __init__(
        self,
        path: str,
        template: PairTemplate | None = None,
        chat_template: bool | Literal["auto"] = "auto",
        min_answer_mass: float = DEFAULT_MIN_ANSWER_MASS,
        max_length: int | None = None,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "float32",
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        check_model_path(path, "llm:")
        if not 0.0 <= min_answer_mass <= 1.0:
            raise ValueError(f"min_answer_mass must be in [0, 1], got {min_answer_mass}. Default: 0.2.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.path = path
        self.dtype = dtype
        self.template = template or PairTemplate()
        self.min_answer_mass = min_answer_mass
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(path, trust_remote_code, "llm:")
        has_chat = bool(self.tokenizer.chat_template)
        if chat_template is True and not has_chat:
            raise ValueError(f"llm:{path}: chat_template=True, but the tokenizer has no chat template.")
        self.use_chat = has_chat if chat_template == "auto" else bool(chat_template)
        self.answer_ids = tuple(self._answer_id(label) for label in self.template.answers)
        if self.answer_ids[0] == self.answer_ids[1]:
            raise ValueError(f"llm:{path}: the answers {self.template.answers} map to the same token.")
        # judged text may not smuggle in the tokenizer's special tokens (a fake end of turn, ...)
        self.reserved = tuple(t for t in self.tokenizer.all_special_tokens if len(t) >= 2)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_reference(path, dtype, str(self.device), trust_remote_code, "llm:")
        limit = max_length or self.model.config.to_dict().get("max_position_embeddings")
        if not isinstance(limit, int):
            raise ValueError(f"llm:{path}: the model config has no max_position_embeddings; pass max_length.")
        self.max_length: int = limit
        self.cache = VerdictCache(cache_dir) if cache_dir else None
        self.fingerprint = model_fingerprint(path) if cache_dir else ""

    def _answer_id(self, label: str) -> int:
        """The single token id of `label`: the bare label, else the label after a space."""
        for text in (label, " " + label):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                return int(ids[0])
        raise ValueError(
            f"llm:{self.path}: the answer {label!r} is not a single token of this tokenizer, bare or after "
            f"a space ({self.tokenizer.encode(label, add_special_tokens=False)}). Pick answers that are, "
            "e.g. answers=('A', 'B') or ('1', '2')."
        )

    def render(self, prompt: Prompt, first: Completion, second: Completion) -> tuple[str, str]:
        """The exact text the model reads for (forward, swapped) orders, chat template applied."""
        return self._wrap(self.template.render_both_orders(prompt, first, second, self.reserved))

    def _wrap(self, texts: Sequence[str]) -> tuple[str, str]:
        if not self.use_chat:
            return texts[0], texts[1]
        wrapped = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
        return str(wrapped[0]), str(wrapped[1])

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (a chat-wrapped text already holds its special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=not self.use_chat)["input_ids"])

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts:
        """(N,) verdicts: the mean over both orders of the probability that `first` wins."""
        check_pairs(prompts, first, second)
        texts = [t for p, a, b in zip(prompts, first, second, strict=True) for t in self.render(p, a, b)]
        answers = self.answer_logps(texts)  # 2N: forward, swapped, forward, swapped, ...
        return two_order_verdicts(answers[0::2], answers[1::2], self.min_answer_mass)

    def answer_logps(self, texts: Sequence[str]) -> list[Answer]:
        """For each rendered text, (logp answer 0, logp answer 1) at the next token, or "prompt too long"."""
        keys = [VerdictCache.key("llm", self.fingerprint, self.dtype, t, self.answer_ids) for t in texts]
        results: dict[int, Answer] = {}
        todo: list[tuple[int, list[int]]] = []
        for i, text in enumerate(texts):
            stored = self.cache.get(keys[i]) if self.cache is not None else None
            ids = self.encode(text) if stored is None else []
            if stored is not None:
                first, second = decode_logps(stored["logps"])
                results[i] = (first, second)
            elif len(ids) > self.max_length:
                results[i] = "prompt too long"
            else:
                todo.append((i, ids))
        todo.sort(key=lambda item: len(item[1]))  # similar lengths per batch
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            logps = self._next_token_logps([ids for _, ids in chunk])  # (B, 2)
            for (i, _), row in zip(chunk, logps.tolist(), strict=True):
                results[i] = (row[0], row[1])
                stored = encode_logps(row)  # None for NaN or +inf: not cached, the pair is not judged
                if self.cache is not None and stored is not None:
                    self.cache.put(keys[i], {"logps": stored})
        return [results[i] for i in range(len(texts))]

    @torch.no_grad()
    def _next_token_logps(self, sequences: Sequence[list[int]]) -> torch.Tensor:
        """(B, 2) float64 log-probs of the two answer tokens after each (left-padded) sequence."""
        T = max(len(s) for s in sequences)
        pad = token_id(self.tokenizer, "pad")
        input_ids = torch.full((len(sequences), T), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), T), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, T - len(ids) :] = torch.tensor(ids)
            attention_mask[row, T - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at each first real token
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            logits_to_keep=1,
        )
        logps = out.logits[:, -1].float().log_softmax(dim=-1)  # (B, V)
        return logps[:, list(self.answer_ids)].double().cpu()  # (B, 2)
