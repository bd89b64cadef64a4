"""Tokenize validated examples with an exact prompt/response boundary and a loss mask.

`loss_mask[t]` is True when token t is a training target, i.e. predicted by the logits
at position t - 1; position 0 is never a target (nothing predicts it), which also keeps
sequences packed into one row from predicting across their boundary.

Boundaries:
- text: prompt ids = `tokenizer(prompt)` (with special tokens, so BOS where the tokenizer
  adds one); response ids = `tokenizer(response, add_special_tokens=False)` + EOS. The two
  are tokenized separately, so the response ids are exactly what the model generates
  after the prompt;
- conversational: prompt ids = the chat template over the prompt with the generation
  prompt; the response ids are what the template adds after it when the reply is
  appended. The template must be prefix-consistent (checked; a clear error otherwise).

Truncation ("left", the default): prompt tokens are dropped from the left (BOS at position
0 is kept) and the response is kept whole; full-text SFT examples (no prompt) are cut on
the right. "error" raises instead. Every dropped token is counted in `num_truncated`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from preftune.data.errors import DataError, Skip, summarize_skips
from preftune.data.formats import (
    Completion,
    Message,
    PairExample,
    Parsed,
    Prompt,
    PromptExample,
    SFTExample,
    UnpairedExample,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

Truncation = Literal["left", "error"]
TRUNCATIONS = ("left", "error")
_TEMPLATE_FIX = (
    "use a chat template that renders a conversation as the rendering of its earlier turns (with the "
    "generation prompt) followed by the new reply, or pass the data as plain text"
)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one sequence, (T,), with `loss_mask` (T,) True at training targets.

    The first `num_prompt_tokens` tokens are the prompt (0 for full-text SFT);
    `num_truncated` tokens of the source sequence were dropped to fit `max_length`.
    """

    input_ids: list[int]
    loss_mask: list[bool]
    num_prompt_tokens: int
    num_truncated: int
    row: int

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(
                f"input_ids has {len(self.input_ids)} tokens but loss_mask {len(self.loss_mask)}."
            )
        if self.loss_mask and self.loss_mask[0]:
            raise ValueError("loss_mask[0] must be False: no position predicts the first token.")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


@dataclass(frozen=True)
class EncodedPair:
    """A pair encoded with the same (identically truncated) prompt on both sides."""

    chosen: EncodedExample
    rejected: EncodedExample
    margin: float | None
    weight: float | None
    meta: dict[str, Any]
    row: int

    @property
    def num_truncated(self) -> int:
        return self.chosen.num_truncated  # the prompt is shared, and so is what was cut from it

    @property
    def loss_weight(self) -> float:
        """The pair's `weight` column, 1 when the data has none."""
        return 1.0 if self.weight is None else self.weight


@dataclass(frozen=True)
class EncodedUnpaired:
    """An unpaired (KTO) example: one prompt + response sequence and its label."""

    example: EncodedExample
    label: bool
    row: int

    @property
    def num_truncated(self) -> int:
        return self.example.num_truncated


@dataclass
class EncodeReport:
    """What encoding a dataset did to it, for the trainer's log."""

    source: str
    num_rows: int
    num_examples: int
    num_truncated_examples: int
    num_truncated_tokens: int
    skipped: list[Skip] = field(default_factory=list)

    def log(self, name: str) -> None:
        """Log the summary as `name: ...`, as a warning when rows were skipped or truncated."""
        log = logger.warning if self.skipped or self.num_truncated_examples else logger.info
        log("%s: %s", name, self.summary())

    def summary(self) -> str:
        return (
            f"Encoded {self.num_examples} examples from {self.num_rows} rows of {self.source}; "
            f"{self.num_truncated_examples} truncated ({self.num_truncated_tokens} tokens dropped). "
            + summarize_skips(self.skipped, self.source, self.num_rows)
        )


class EncodedDataset(NamedTuple):
    """Encoded examples and what encoding did; unpacks as `examples, report = encode_dataset(...)`."""

    examples: list[Any]
    report: EncodeReport


# ----------------------------------------------------------------------------- prompt + response


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    response: Completion,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "<memory>",
    row: int = 0,
    response_field: str = "completion",
) -> EncodedExample:
    """Encode `prompt` + `response` with the response tokens as the only targets.

    Returns input_ids (T,) = prompt ids then response ids, T <= max_length. Raises
    DataError if the response leaves no room for a prompt token, or if anything would be
    truncated under truncation="error".
    """
    _check_options(max_length, truncation)
    prompt_ids, response_ids = _prompt_response_ids(tokenizer, prompt, response, source, row, response_field)
    drop = _prompt_cut(
        tokenizer, prompt_ids, len(response_ids), max_length, truncation, (source, row, response_field)
    )
    prompt_ids = _drop_left(prompt_ids, drop, _starts_with_bos(tokenizer, prompt_ids))
    return EncodedExample(
        input_ids=prompt_ids + response_ids,
        loss_mask=[False] * len(prompt_ids) + [True] * len(response_ids),
        num_prompt_tokens=len(prompt_ids),
        num_truncated=drop,
        row=row,
    )


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    example: PairExample,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "<memory>",
) -> EncodedPair:
    """Encode both sides of a pair; the prompt is cut once, to fit the longer response."""
    _check_options(max_length, truncation)
    prompt_ids, chosen_ids = _prompt_response_ids(
        tokenizer, example.prompt, example.chosen, source, example.row, "chosen"
    )
    _, rejected_ids = _prompt_response_ids(
        tokenizer, example.prompt, example.rejected, source, example.row, "rejected"
    )
    longer = "chosen" if len(chosen_ids) >= len(rejected_ids) else "rejected"
    num_response = max(len(chosen_ids), len(rejected_ids))
    drop = _prompt_cut(
        tokenizer, prompt_ids, num_response, max_length, truncation, (source, example.row, longer)
    )
    prompt_ids = _drop_left(prompt_ids, drop, _starts_with_bos(tokenizer, prompt_ids))
    sides = [
        EncodedExample(
            input_ids=prompt_ids + ids,
            loss_mask=[False] * len(prompt_ids) + [True] * len(ids),
            num_prompt_tokens=len(prompt_ids),
            num_truncated=drop,
            row=example.row,
        )
        for ids in (chosen_ids, rejected_ids)
    ]
    return EncodedPair(sides[0], sides[1], example.margin, example.weight, example.meta, example.row)


def encode_unpaired(
    tokenizer: PreTrainedTokenizerBase,
    example: UnpairedExample,
    max_length: int,
    truncation: Truncation = "left",
    source: str = "<memory>",
) -> EncodedUnpaired:
    encoded = encode_prompt_response(
        tokenizer, example.prompt, example.completion, max_length, truncation, source, example.row
    )
    return EncodedUnpaired(encoded, example.label, example.row)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    max_length: int | None = None,
    truncation: Truncation = "left",
    source: str = "<memory>",
    row: int = 0,
) -> list[int]:
    """Token ids of a prompt to generate from (with the generation prompt if conversational).

    With `max_length`, the prompt is cut on the left (keeping BOS), or raises DataError
    under truncation="error". `encode_dataset` gives the same ids as an EncodedExample
    (no targets) with the number of tokens cut.
    """
    return encode_prompt_example(tokenizer, prompt, max_length, truncation, source, row).input_ids


def encode_prompt_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    max_length: int | None = None,
    truncation: Truncation = "left",
    source: str = "<memory>",
    row: int = 0,
) -> EncodedExample:
    """`encode_prompt` as an EncodedExample: loss_mask all False, num_truncated counted."""
    ids = _prompt_ids(tokenizer, prompt)
    drop = 0
    if max_length is not None:
        _check_options(max_length, truncation)
        drop = _prompt_cut(tokenizer, ids, 0, max_length, truncation, (source, row, "prompt"))
        ids = _drop_left(ids, drop, _starts_with_bos(tokenizer, ids))
    return EncodedExample(ids, [False] * len(ids), len(ids), drop, row)


# ----------------------------------------------------------------------------- SFT


def encode_sft(
    tokenizer: PreTrainedTokenizerBase,
    example: SFTExample,
    max_length: int,
    completion_only: bool = True,
    truncation: Truncation = "left",
    source: str = "<memory>",
) -> EncodedExample:
    """Encode an SFT example of any format.

    - "text": every token after the first is a target; cut on the right to max_length;
    - "prompt_completion": the completion tokens are targets (all tokens after the first
      if completion_only=False); the prompt is cut on the left;
    - "messages": every assistant turn's tokens (found by rendering each prefix of the
      conversation) are targets; tokens before the final assistant turn are cut on the left.
    """
    _check_options(max_length, truncation)
    if example.format == "text":
        encoded = _encode_text(tokenizer, example, max_length, truncation, source)
    elif isinstance(example.completion, str):
        if example.prompt is None:
            raise ValueError(f"{source}, row {example.row}: a {example.format!r} example needs a prompt.")
        encoded = encode_prompt_response(
            tokenizer, example.prompt, example.completion, max_length, truncation, source, example.row
        )
    else:
        encoded = _encode_conversation(tokenizer, example, max_length, truncation, source)
    if completion_only:
        return encoded
    loss_mask = [False] + [True] * (len(encoded.input_ids) - 1)
    return EncodedExample(
        encoded.input_ids, loss_mask, encoded.num_prompt_tokens, encoded.num_truncated, example.row
    )


def _encode_text(
    tokenizer: PreTrainedTokenizerBase,
    example: SFTExample,
    max_length: int,
    truncation: Truncation,
    source: str,
) -> EncodedExample:
    assert isinstance(example.completion, str)
    ids = _with_eos(tokenizer, tokenizer(example.completion, add_special_tokens=True)["input_ids"])
    dropped = max(0, len(ids) - max_length)
    if dropped and truncation == "error":
        raise DataError(
            source,
            example.row,
            "text",
            f"the text has {len(ids)} tokens, over max_length={max_length} (truncation='error')",
            "raise max_length, shorten the text, or use truncation='left' (cuts full texts on the right)",
            skippable=True,
        )
    ids = ids[:max_length]
    return EncodedExample(ids, [False] + [True] * (len(ids) - 1), 0, dropped, example.row)


def _encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    example: SFTExample,
    max_length: int,
    truncation: Truncation,
    source: str,
) -> EncodedExample:
    """Targets are the assistant turns from `train_from` on, each located by prefix rendering."""
    prompt = example.prompt if isinstance(example.prompt, list) else []
    assert isinstance(example.completion, list)
    messages = prompt + example.completion
    train_from = 0 if example.format == "messages" else len(prompt)
    full_ids = _render(tokenizer, messages, add_generation_prompt=False)
    mask = [False] * len(full_ids)
    for index in range(train_from, len(messages)):
        if messages[index]["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        _check_prefix(tokenizer, before, through, source, example.row)
        _check_prefix(tokenizer, through, full_ids, source, example.row)
        mask[len(before) : len(through)] = [True] * (len(through) - len(before))
    prompt_ids = _render(tokenizer, prompt, add_generation_prompt=True)
    _check_prefix(tokenizer, prompt_ids, full_ids, source, example.row)
    num_prompt = len(prompt_ids)
    where = (source, example.row, "messages" if example.format == "messages" else "completion")
    drop = _prompt_cut(
        tokenizer, full_ids[:num_prompt], len(full_ids) - num_prompt, max_length, truncation, where
    )
    keep_bos = _starts_with_bos(tokenizer, full_ids)
    ids = _drop_left(full_ids[:num_prompt], drop, keep_bos) + full_ids[num_prompt:]
    mask = _drop_left(mask[:num_prompt], drop, keep_bos) + mask[num_prompt:]
    mask[0] = False  # a cut may leave an earlier assistant token first; nothing predicts it
    return EncodedExample(ids, mask, num_prompt - drop, drop, example.row)


# ----------------------------------------------------------------------------- datasets


def encode_dataset(
    tokenizer: PreTrainedTokenizerBase,
    parsed: Parsed[Any],
    max_length: int,
    truncation: Truncation = "left",
    completion_only: bool = True,
    skip_invalid: bool = False,
) -> EncodedDataset:
    """Encode every parsed example (SFT -> EncodedExample, pair -> EncodedPair, unpaired ->
    EncodedUnpaired, prompt -> EncodedExample) and report truncation and skips.

    With skip_invalid, rows that cannot be encoded (no room for the response, or too long
    under truncation="error") are counted in `report.skipped`, next to the parse skips.
    """
    source = parsed.source
    examples: list[Any] = []
    skipped = list(parsed.skipped)
    for example in parsed.examples:
        try:
            if isinstance(example, SFTExample):
                encoded: Any = encode_sft(tokenizer, example, max_length, completion_only, truncation, source)
            elif isinstance(example, PairExample):
                encoded = encode_pair(tokenizer, example, max_length, truncation, source)
            elif isinstance(example, UnpairedExample):
                encoded = encode_unpaired(tokenizer, example, max_length, truncation, source)
            elif isinstance(example, PromptExample):
                encoded = encode_prompt_example(
                    tokenizer, example.prompt, max_length, truncation, source, example.row
                )
            else:
                raise TypeError(f"encode_dataset cannot encode {type(example).__name__} examples.")
        except DataError as error:
            if not (skip_invalid and error.skippable):
                raise
            skipped.append(Skip.from_error(error))
            continue
        examples.append(encoded)
    truncated = [item.num_truncated for item in examples if item.num_truncated > 0]
    report = EncodeReport(
        source=source,
        num_rows=parsed.num_rows,
        num_examples=len(examples),
        num_truncated_examples=len(truncated),
        num_truncated_tokens=sum(truncated),
        skipped=sorted(skipped, key=lambda skip: skip.row),
    )
    if not examples:
        raise DataError(
            source, None, None, f"no example could be encoded. {report.summary()}", "see the rows listed"
        )
    return EncodedDataset(examples, report)


# ----------------------------------------------------------------------------- helpers


def _check_options(max_length: int, truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}.")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt token and a response token), got {max_length}.")


def _prompt_response_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    response: Completion,
    source: str,
    row: int,
    response_field: str,
) -> tuple[list[int], list[int]]:
    if isinstance(prompt, str) and isinstance(response, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        response_ids = _with_eos(tokenizer, tokenizer(response, add_special_tokens=False)["input_ids"])
    elif isinstance(prompt, list) and isinstance(response, list):
        prompt_ids = _render(tokenizer, prompt, add_generation_prompt=True)
        full_ids = _render(tokenizer, prompt + response, add_generation_prompt=False)
        _check_prefix(tokenizer, prompt_ids, full_ids, source, row)
        response_ids = full_ids[len(prompt_ids) :]
    else:
        raise ValueError(
            f"{source}, row {row}: prompt and {response_field} must both be text or both be message lists, "
            f"got {type(prompt).__name__} and {type(response).__name__}."
        )
    if not response_ids:
        raise DataError(
            source, row, response_field, "the response encodes to no tokens", "fill in the response"
        )
    return prompt_ids, response_ids


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return _render(tokenizer, prompt, add_generation_prompt=True)


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool
) -> list[int]:
    if tokenizer.chat_template is None:
        raise ValueError(
            "Conversational data (lists of messages) needs a tokenizer with a chat template, and this one has "
            "none. Set tokenizer.chat_template, use a chat model's tokenizer, or pass the data as plain text."
        )
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert isinstance(text, str), "apply_chat_template(tokenize=False) renders one conversation to one string"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_prefix(
    tokenizer: PreTrainedTokenizerBase, prefix: list[int], full: list[int], source: str, row: int
) -> None:
    if full[: len(prefix)] == prefix:
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b), min(len(prefix), len(full))
    )
    raise DataError(
        source,
        row,
        "prompt",
        "the chat template is not prefix-consistent: rendering the earlier turns (with the generation prompt) "
        f"gives {tokenizer.decode(prefix[at : at + 8])!r} at token {at}, but the full conversation has "
        f"{tokenizer.decode(full[at : at + 8])!r} there, so the response tokens cannot be located",
        _TEMPLATE_FIX,
    )


def _with_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise ValueError(
            "The tokenizer has no eos_token; set one so responses can end (tokenizer.eos_token = ...)."
        )
    return ids if ids and ids[-1] == eos else [*ids, eos]


def _starts_with_bos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> bool:
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _prompt_cut(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    num_response: int,
    max_length: int,
    truncation: Truncation,
    where: tuple[str, int, str],
) -> int:
    """How many prompt tokens to drop (from the left, after a leading BOS) to fit max_length."""
    source, row, response_field = where
    if not prompt_ids:
        raise DataError(source, row, "prompt", "the prompt encodes to no tokens", "fill in the prompt")
    excess = len(prompt_ids) + num_response - max_length
    if excess <= 0:
        return 0
    if truncation == "error":
        raise DataError(
            source,
            row,
            "prompt",
            f"prompt ({len(prompt_ids)} tokens) + response ({num_response} tokens) exceed max_length={max_length} "
            "(truncation='error')",
            "raise max_length, shorten the row, or use truncation='left' to cut the prompt on the left",
            skippable=True,
        )
    if num_response >= max_length:
        raise DataError(
            source,
            row,
            response_field,
            f"the response alone has {num_response} tokens, which leaves no room for the prompt under "
            f"max_length={max_length}",
            "raise max_length or shorten the response",
            skippable=True,
        )
    return excess


def _drop_left(values: list[Any], drop: int, keep_first: bool) -> list[Any]:
    """values without `drop` items from the left, after the first one if keep_first (BOS)."""
    if drop == 0:
        return list(values)
    return [values[0], *values[1 + drop :]] if keep_first else list(values[drop:])
