"""Tiny-model factory: a byte-level BPE tokenizer trained locally and a random-init Llama.

Everything here is built from text on disk, never downloaded, and is reproducible for
a given seed: tests, the demo and the benchmarks all start from these models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from preftune.models.loading import token_id

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# A minimal chat template: each turn is "<|role|>\n content"; an assistant turn ends
# with EOS and nothing after it (newlines inside blocks are written as {{ '\\n' }} because
# transformers renders templates with trim_blocks), so the response tokens of a prompt rendered with
# add_generation_prompt=True are exactly what the model must generate (ending at EOS).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


SIZES: dict[str, TinySize] = {
    # ~0.3M parameters besides the embeddings: learns the synthetic task in about a minute on 2 cores.
    "tiny": TinySize(64, 192, 2, 4, 2, 1024),
    # ~3M parameters besides the embeddings: for real data and GPU checks.
    "small": TinySize(256, 688, 4, 8, 4, 2048),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with bos/eos/pad, role tokens and a chat template.

    Plain-text encoding (add_special_tokens=True) prepends BOS, as Llama tokenizers do.
    Training is deterministic: the same texts give the same vocabulary.
    """
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 bytes + special tokens), got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = [BOS, EOS, PAD, *ROLE_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_nonempty(texts), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=SIZES["small"].max_position_embeddings,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    count = 0
    for text in texts:
        if text:
            count += 1
            yield text
    if count == 0:
        raise ValueError("No text to train the tokenizer on: every text field was empty.")


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, size: Literal["tiny", "small"] = "tiny", seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama-style causal LM sized for `tokenizer`, seeded."""
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(SIZES)}.")
    shape = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=token_id(tokenizer, "bos"),
        eos_token_id=token_id(tokenizer, "eos"),
        pad_token_id=token_id(tokenizer, "pad"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = token_id(tokenizer, "pad")
    model.generation_config.eos_token_id = token_id(tokenizer, "eos")
    model.generation_config.bos_token_id = token_id(tokenizer, "bos")
    return model


def texts_of_row(row: dict[str, Any]) -> Iterator[str]:
    """Every string inside a dataset row (text, prompt, chosen, message contents, ...)."""
    for value in row.values():
        yield from _strings(value)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)


def make_tiny(
    texts: Iterable[str],
    out_dir: str | Path,
    size: Literal["tiny", "small"] = "tiny",
    vocab_size: int = 2048,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a random-init model, save both to `out_dir`."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(tokenizer, size=size, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Wrote a %s model (%.2fM parameters, vocab %d) to %s", size, n_params / 1e6, len(tokenizer), out
    )
    return out
