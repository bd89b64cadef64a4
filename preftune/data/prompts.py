"""Prompt-only data (PPO, RLOO/GRPO, best-of-n, policy evaluation): the prompts and their token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from preftune.data.config import DataConfig
from preftune.data.formats import Prompt, parse_prompts
from preftune.data.io import load_rows
from preftune.data.tokenize import encode_dataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptSet:
    """Prompts as read (text or message lists, for judges) and as token ids to generate from."""

    prompts: list[Prompt]
    ids: list[list[int]]
    rows: list[int]
    """Row number of each prompt in its source, for error messages and provenance."""

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    split: str,
    max_prompt_length: int,
    config: DataConfig,
    name: str,
) -> PromptSet:
    """Read, validate and encode the `prompt` column of `source`, each cut on the left to
    `max_prompt_length` tokens under the data config's truncation and skip rules (reported)."""
    if max_prompt_length < 1:
        raise ValueError(
            f"No room for the prompt: max_length ({config.max_length}) minus the tokens to generate leaves "
            f"{max_prompt_length}. Raise --max_length or lower --max_new_tokens."
        )
    parsed = parse_prompts(
        load_rows(source, split), skip_invalid=config.skip_invalid, dialogue_format=config.dialogue_format
    )
    encoded, report = encode_dataset(
        tokenizer, parsed, max_prompt_length, config.truncation, skip_invalid=config.skip_invalid
    )
    report.log(f"{name} prompts")
    by_row = {example.row: example.prompt for example in parsed.examples}
    return PromptSet(
        prompts=[by_row[item.row] for item in encoded],
        ids=[item.input_ids for item in encoded],
        rows=[item.row for item in encoded],
    )
