"""rows -> validated examples -> tokenized -> batches (no models).

Typical use (a pairwise trainer)::

    table = load_rows("data/pairs.jsonl")                    # RowTable, row numbers kept
    parsed = parse_pairs(table, skip_invalid=False)          # Parsed[PairExample]
    pairs, report = encode_dataset(tokenizer, parsed, max_length=1024)
    logger.info(report.summary())                            # truncation and skips
    batch = pad_batch([pair.chosen for pair in pairs[:8]], tokenizer.pad_token_id)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from preftune.data.config import DataConfig
from preftune.data.errors import DataError, Skip, report_skips, summarize_skips
from preftune.data.formats import (
    FORMAT_COLUMNS,
    ROLES,
    Completion,
    Message,
    PairExample,
    Parsed,
    Prompt,
    PromptExample,
    SFTExample,
    UnpairedExample,
    detect_format,
    parse_pairs,
    parse_prompts,
    parse_sft,
    parse_unpaired,
    response_completions,
    split_implicit_prompt,
)
from preftune.data.io import SUPPORTED_EXTENSIONS, RowTable, load_rows
from preftune.data.tokenize import (
    EncodedDataset,
    EncodedExample,
    EncodedPair,
    EncodedUnpaired,
    EncodeReport,
    encode_dataset,
    encode_pair,
    encode_prompt,
    encode_prompt_example,
    encode_prompt_response,
    encode_sft,
    encode_unpaired,
)

if TYPE_CHECKING:
    from preftune.data.collate import collate_packed, pack_examples, pad_batch

_LAZY = {name: "preftune.data.collate" for name in ("collate_packed", "pack_examples", "pad_batch")}
"""Loaded on first use (torch): the rest of the package, config classes included, imports no torch."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_COLUMNS",
    "ROLES",
    "SUPPORTED_EXTENSIONS",
    "Completion",
    "DataConfig",
    "DataError",
    "EncodeReport",
    "EncodedDataset",
    "EncodedExample",
    "EncodedPair",
    "EncodedUnpaired",
    "Message",
    "PairExample",
    "Parsed",
    "Prompt",
    "PromptExample",
    "RowTable",
    "SFTExample",
    "Skip",
    "UnpairedExample",
    "collate_packed",
    "detect_format",
    "encode_dataset",
    "encode_pair",
    "encode_prompt",
    "encode_prompt_example",
    "encode_prompt_response",
    "encode_sft",
    "encode_unpaired",
    "load_rows",
    "pack_examples",
    "pad_batch",
    "parse_pairs",
    "parse_prompts",
    "parse_sft",
    "parse_unpaired",
    "response_completions",
    "report_skips",
    "split_implicit_prompt",
    "summarize_skips",
]
