"""Validate raw rows into typed examples: SFT, pairwise, unpaired and prompt-only.

Column conventions are TRL's, so users bring their data as is:

| task        | columns (first match wins)                                               |
|-------------|--------------------------------------------------------------------------|
| SFT         | `messages` / `prompt`+`completion` / `text` (or any column: `text_field`) |
| pairwise    | `prompt`+`chosen`+`rejected` / `chosen`+`rejected` (implicit prompt)      |
| unpaired    | `prompt`+`completion`+`label`                                            |
| prompt-only | `prompt`                                                                 |

Text fields are strings ("standard") or lists of `{"role", "content"}` messages
("conversational"); a prompt and its responses use the same style. A null value counts
as a missing column, and extra columns are ignored. Every invalid row raises a
`DataError` naming source, row and field, or, with `skip_invalid=True`, is counted in
`Parsed.skipped`; nothing is dropped silently.

Pairs may carry a soft label, the optional column `chosen_probability` (SOFT_LABEL): the
probability, in [0.5, 1], that `chosen` is truly the preferred response (e.g. a Dawid-Skene
posterior written by preftune/feedback/aggregate.py). A missing value means a hard label, 1.
It is kept in `PairExample.meta["chosen_probability"]` and read by `data.pairs.chosen_probabilities`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from preftune.data.dialogues import DIALOGUE_FORMATS, DialogueFormat, NotADialogue, hh_to_messages
from preftune.data.errors import DataError, Skip, summarize_skips
from preftune.data.io import RowTable

Message: TypeAlias = dict[str, str]
Prompt: TypeAlias = str | list[Message]
Completion: TypeAlias = str | list[Message]


def response_completions(prompts: Sequence[Prompt], texts: Sequence[str]) -> list[Completion]:
    """Each response text in its prompt's format: text, or one assistant message for chat prompts."""
    return [
        text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]
        for prompt, text in zip(prompts, texts, strict=True)
    ]


SFTFormat = Literal["text", "prompt_completion", "messages"]

ROLES = ("system", "user", "assistant", "tool")

# Every format, in the order detection tries them (the most specific first).
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "unpaired_preference": ("prompt", "completion", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "prompt_only": ("prompt",),
}
SFT_FORMATS = ("messages", "prompt_completion", "text")
PAIR_FORMATS = ("preference", "implicit_preference")
UNPAIRED_FORMATS = ("unpaired_preference",)
PROMPT_FORMATS = ("prompt_only",)
TEXT_COLUMNS = ("prompt", "chosen", "rejected", "completion")
"""Columns whose text transcripts `--dialogue_format hh` reads as message lists."""

# Rating metadata kept on pairs (see DESIGN.md, "Data formats"): field -> accepted types.
META_TYPES: dict[str, tuple[type, ...]] = {
    "annotator": (str, int),
    "annotator_group": (str, int),
    "order": (int,),
    "shown_first": (str,),
    "pair_id": (str, int),
}

SOFT_LABEL = "chosen_probability"
"""Optional pairwise column: P(chosen is truly preferred), in [0.5, 1]; kept in `PairExample.meta`."""

# A dialogue turn marker such as HH-RLHF's "\n\nAssistant:" at the start of a line.
_ASSISTANT_TURN = re.compile(r"^(?:#+ *)?Assistant:", re.MULTILINE)


@dataclass(frozen=True)
class SFTExample:
    """One SFT example. `format` says which tokens are targets (see `tokenize.encode_sft`).

    - "text": `prompt` is None and `completion` is the whole text;
    - "prompt_completion": train on `completion`, conditioned on `prompt`;
    - "messages": a conversation; `prompt` holds the messages before the final assistant
      turn and `completion` that turn; every assistant turn is a target.
    """

    prompt: Prompt | None
    completion: Completion
    row: int
    format: SFTFormat = "prompt_completion"


@dataclass(frozen=True)
class PairExample:
    """A preference pair: `chosen` was preferred over `rejected` as a reply to `prompt`."""

    prompt: Prompt
    chosen: Completion
    rejected: Completion
    margin: float | None
    weight: float | None
    meta: dict[str, Any]
    row: int


@dataclass(frozen=True)
class UnpairedExample:
    """A single rated response (KTO): `label` True means desirable."""

    prompt: Prompt
    completion: Completion
    label: bool
    row: int


@dataclass(frozen=True)
class PromptExample:
    """A prompt to generate from (PPO, RLOO/GRPO, best-of-n, evaluation)."""

    prompt: Prompt
    row: int


T = TypeVar("T")


@dataclass
class Parsed(Generic[T]):
    """Examples parsed from one source, with the rows skipped (only when allowed)."""

    examples: list[T]
    skipped: list[Skip] = field(default_factory=list)
    source: str = "<memory>"
    num_rows: int = 0

    def summary(self) -> str:
        return summarize_skips(self.skipped, self.source, self.num_rows)


@dataclass(frozen=True)
class _Row:
    source: str
    number: int
    values: dict[str, Any]

    def error(self, field: str | None, problem: str, fix: str) -> DataError:
        return DataError(self.source, self.number, field, problem, fix, skippable=True)


class _SplitError(ValueError):
    """Why an implicit prompt could not be split off; `field` is the column to blame."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{problem}. Fix: {fix}.")


# ----------------------------------------------------------------------------- detection


def detect_format(row: dict[str, Any]) -> str | None:
    """The name of the first format in `FORMAT_COLUMNS` whose columns are all present
    (non-null) in `row`, or None if there is none."""
    return _match(row, tuple(FORMAT_COLUMNS))


def _match(values: dict[str, Any], accepted: tuple[str, ...]) -> str | None:
    present = {name for name, value in values.items() if value is not None}
    return next((name for name in accepted if set(FORMAT_COLUMNS[name]) <= present), None)


def _no_format_error(row: _Row, accepted: tuple[str, ...], task: str, hint: str = "") -> DataError:
    present = sorted(name for name, value in row.values.items() if value is not None)
    options = " | ".join("+".join(FORMAT_COLUMNS[name]) for name in accepted)
    fix = f"give each {task} row the columns {options} (extra columns are ignored){hint}"
    # Blame the first missing column of the closest format, if any format is partly there.
    # closest: most columns present, then fewest missing (a row with only `chosen` is an implicit pair
    # missing `rejected`, not a prompted pair missing `prompt`), then the order of `accepted`
    overlaps = [
        (len(set(FORMAT_COLUMNS[name]) & set(present)), -len(set(FORMAT_COLUMNS[name]) - set(present)), name)
        for name in accepted
    ]
    best_overlap, _, best = max(overlaps, key=lambda item: item[:2])
    if best_overlap == 0:
        return row.error(None, f"no {task} format matches the columns {present}", fix)
    missing = next(name for name in FORMAT_COLUMNS[best] if name not in present)
    return row.error(missing, f"missing or null (the row has columns {present})", fix)


# ----------------------------------------------------------------------------- parsers


def parse_sft(
    table: RowTable,
    text_field: str | None = None,
    skip_invalid: bool = False,
    dialogue_format: DialogueFormat = "text",
) -> Parsed[SFTExample]:
    """Validate SFT rows: `messages`, `prompt`+`completion` or `text`; with `text_field`,
    that column (text, or a conversation) is the whole training sequence."""
    columns = (*TEXT_COLUMNS, text_field) if text_field else TEXT_COLUMNS
    return _parse_rows(
        table, lambda row: _parse_sft_row(row, text_field), skip_invalid, dialogue_format, columns
    )


def parse_pairs(
    table: RowTable, skip_invalid: bool = False, dialogue_format: DialogueFormat = "text"
) -> Parsed[PairExample]:
    """Validate preference pairs; rows without `prompt` get the implicit (shared) prompt."""
    return _parse_rows(table, _parse_pair_row, skip_invalid, dialogue_format)


def parse_unpaired(
    table: RowTable, skip_invalid: bool = False, dialogue_format: DialogueFormat = "text"
) -> Parsed[UnpairedExample]:
    """Validate unpaired (KTO) rows: `prompt`+`completion`+`label` (true/false, or 0/1)."""
    return _parse_rows(table, _parse_unpaired_row, skip_invalid, dialogue_format)


def parse_prompts(
    table: RowTable, skip_invalid: bool = False, dialogue_format: DialogueFormat = "text"
) -> Parsed[PromptExample]:
    """Validate prompt-only rows: the `prompt` column, or the prompt of a pairwise row (its shared
    prefix when it has no `prompt` column, as in HH-RLHF), so pairwise data also serves RL and evaluation."""
    return _parse_rows(table, _parse_prompt_row, skip_invalid, dialogue_format)


def _parse_rows(
    table: RowTable,
    parse_row: Callable[[_Row], T],
    skip_invalid: bool,
    dialogue_format: DialogueFormat = "text",
    columns: tuple[str, ...] = TEXT_COLUMNS,
) -> Parsed[T]:
    if dialogue_format not in DIALOGUE_FORMATS:
        raise ValueError(f"dialogue_format must be one of {DIALOGUE_FORMATS}, got {dialogue_format!r}.")
    if len(table) == 0:
        raise DataError(table.source, None, None, "no rows", "check the file, the dataset name and the split")
    examples: list[T] = []
    skipped: list[Skip] = []
    for values, number in zip(table.rows, table.row_numbers, strict=True):
        try:
            row = _Row(table.source, number, values)
            if dialogue_format == "hh":
                row = _as_messages(row, columns)
            examples.append(parse_row(row))
        except DataError as error:
            if not (skip_invalid and error.skippable):
                raise
            skipped.append(Skip.from_error(error))
    summary = summarize_skips(skipped, table.source, len(table))
    if not examples:
        raise DataError(
            table.source,
            None,
            None,
            f"every row is invalid. {summary.rstrip('.')}",
            "fix the rows listed, or check that this is the right file for this command",
        )
    return Parsed(examples=examples, skipped=skipped, source=table.source, num_rows=len(table))


def _parse_sft_row(row: _Row, text_field: str | None) -> SFTExample:
    if text_field is not None:
        value = row.values.get(text_field)
        if value is None:
            raise row.error(
                text_field, "missing or null", f"fill in {text_field!r} or pass another --dataset_text_field"
            )
        if isinstance(value, list):
            return _conversation_example(row, text_field)
        return SFTExample(None, _text(row, text_field, "text"), row.number, "text")
    fmt = _match(row.values, SFT_FORMATS)
    if fmt == "messages":
        return _conversation_example(row, "messages")
    if fmt == "prompt_completion":
        prompt = _prompt(row, "prompt")
        completion = _response(row, "completion", prompt)
        return SFTExample(prompt, completion, row.number, "prompt_completion")
    if fmt == "text":
        return SFTExample(None, _text(row, "text", "text"), row.number, "text")
    if "chosen" in row.values and "rejected" in row.values:
        raise DataError(
            row.source,
            row.number,
            None,
            "this is pairwise data (chosen/rejected), not SFT data",
            "pass --dataset_text_field chosen to train on the chosen responses as plain text, "
            "or use a pairwise command (rm, dpo)",
        )  # not skippable: skipping every row of the wrong kind of file helps no one
    raise _no_format_error(row, SFT_FORMATS, "SFT", "; or name any text column with --dataset_text_field")


def _conversation_example(row: _Row, name: str) -> SFTExample:
    messages = _messages(row, name, row.values[name])
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and not message["content"].strip():
            raise row.error(
                f"{name}[{index}].content", "empty response", "remove the row or fill in the response"
            )
    if messages[-1]["role"] != "assistant":
        raise row.error(
            f"{name}[{len(messages) - 1}].role",
            f"the conversation ends with a {messages[-1]['role']!r} turn, not an assistant turn",
            "end each conversation with the assistant reply to train on (drop trailing turns)",
        )
    return SFTExample(messages[:-1] or None, messages[-1:], row.number, "messages")


def _parse_pair_row(row: _Row) -> PairExample:
    fmt = _match(row.values, PAIR_FORMATS)
    if fmt == "preference":
        prompt = _prompt(row, "prompt")
        chosen = _response(row, "chosen", prompt)
        rejected = _response(row, "rejected", prompt)
    elif fmt == "implicit_preference":
        prompt, chosen, rejected = _implicit_pair(row)
    else:
        raise _no_format_error(row, PAIR_FORMATS, "pairwise")
    if chosen == rejected:
        raise row.error(
            "rejected", "chosen identical to rejected", "remove the row: a pair needs two different responses"
        )
    return PairExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=_optional_number(row, "margin"),
        weight=_optional_number(row, "weight"),
        meta=_meta(row) | _soft_label(row),
        row=row.number,
    )


def _soft_label(row: _Row) -> dict[str, float]:
    """{SOFT_LABEL: p} when the row has a soft label in [0.5, 1], else {}."""
    probability = _optional_number(row, SOFT_LABEL)
    if probability is None:
        return {}
    if not 0.5 <= probability <= 1.0:
        raise row.error(
            SOFT_LABEL,
            f"{probability} is outside [0.5, 1]",
            "write P(chosen is truly preferred), at least 0.5: if the rejected response is the likelier "
            f"winner, swap chosen and rejected and write {1 - probability:g}",
        )
    return {SOFT_LABEL: probability}


def _implicit_pair(row: _Row) -> tuple[Prompt, Completion, Completion]:
    chosen, rejected = row.values["chosen"], row.values["rejected"]
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            _text(row, name, "response")
        elif not isinstance(value, list):
            raise row.error(
                name, f"expected text or a list of messages, got {_describe(value)}", "fix the type"
            )
    if isinstance(chosen, list):
        chosen = _messages(row, "chosen", chosen)
    if isinstance(rejected, list):
        rejected = _messages(row, "rejected", rejected)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise row.error(
            "rejected",
            f"chosen is {_style(chosen)} but rejected is {_style(rejected)}",
            "write chosen and rejected in the same style (both text or both message lists)",
        )
    try:
        prompt, chosen_response, rejected_response = split_implicit_prompt(chosen, rejected)
    except _SplitError as error:
        raise row.error(error.field, error.problem, error.fix) from error
    if isinstance(chosen, list):
        offset = len(prompt)
        _check_response_messages(row, "chosen", chosen_response, offset)  # type: ignore[arg-type]
        _check_response_messages(row, "rejected", rejected_response, offset)  # type: ignore[arg-type]
    return prompt, chosen_response, rejected_response


def _parse_unpaired_row(row: _Row) -> UnpairedExample:
    if _match(row.values, UNPAIRED_FORMATS) is None:
        raise _no_format_error(row, UNPAIRED_FORMATS, "unpaired")
    prompt = _prompt(row, "prompt")
    completion = _response(row, "completion", prompt)
    label = row.values["label"]
    if isinstance(label, bool):
        pass
    elif isinstance(label, int) and label in (0, 1):
        label = bool(label)
    else:
        raise row.error(
            "label",
            f"expected true or false, got {_describe(label)}",
            "write the label as a JSON boolean (true = desirable, false = undesirable); 0/1 integers also work",
        )
    return UnpairedExample(prompt, completion, label, row.number)


def _parse_prompt_row(row: _Row) -> PromptExample:
    if _match(row.values, PROMPT_FORMATS) is None:
        if _match(row.values, PAIR_FORMATS) == "implicit_preference":
            return PromptExample(_implicit_pair(row)[0], row.number)
        raise _no_format_error(row, PROMPT_FORMATS, "prompt-only")
    return PromptExample(_prompt(row, "prompt"), row.number)


def _as_messages(row: _Row, columns: tuple[str, ...]) -> _Row:
    """`row` with the text transcripts of `columns` as message lists (`--dialogue_format hh`,
    preftune/data/dialogues.py). A `prompt` loses its trailing empty assistant turn (the generation
    prompt); a response beside an explicit prompt that has no turn markers is one assistant turn."""
    values = dict(row.values)
    explicit_prompt = isinstance(values.get("prompt"), str)
    for name in columns:
        value = values.get(name)
        if not isinstance(value, str):
            continue
        try:
            messages = hh_to_messages(value)
        except NotADialogue as error:
            if explicit_prompt and name != "prompt":
                values[name] = [{"role": "assistant", "content": value.strip()}]
                continue
            raise row.error(
                name,
                f"not an HH-RLHF transcript ({error})",
                'write turns as "\\n\\nHuman: ..." and "\\n\\nAssistant: ...", pass message lists, or drop '
                "--dialogue_format hh",
            ) from error
        if name == "prompt" and messages[-1] == {"role": "assistant", "content": ""}:
            messages = messages[:-1]
        values[name] = messages
    return _Row(row.source, row.number, values)


# ----------------------------------------------------------------------------- implicit prompts


def split_implicit_prompt(chosen: Completion, rejected: Completion) -> tuple[Prompt, Completion, Completion]:
    """Split two full dialogues that share a prompt into (prompt, chosen_response, rejected_response).

    Text: take the longest common character prefix and back it off to the start of the
    first differing word, then over the whitespace before it, so the responses start with
    that whitespace (" Sure" vs " I'm sorry"). If the shared part contains a dialogue turn
    marker (a line starting with "Assistant:", as in HH-RLHF), the prompt ends right after
    the last one, so responses that begin with the same words are still split at the turn.
    Message lists: the prompt is the common leading messages.

    One string may extend the other (HH-RLHF has such pairs) as long as both responses
    have text. Raises ValueError if the two are identical, share no prompt, or a response
    is empty or whitespace (e.g. a dialogue that ends with "Assistant: ").
    """
    if chosen == rejected:
        raise _SplitError(
            "rejected", "chosen identical to rejected", "remove the row: a pair needs two responses"
        )
    if isinstance(chosen, list) and isinstance(rejected, list):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        prompt: Prompt = chosen[:cut]
    elif isinstance(chosen, str) and isinstance(rejected, str):
        cut = _implicit_prompt_end(chosen, rejected)
        prompt = chosen[:cut]
    else:
        raise TypeError(
            f"chosen and rejected must both be str or both lists, got {_style(chosen)}, {_style(rejected)}"
        )
    if cut == 0:
        raise _SplitError(
            "chosen",
            "chosen and rejected share no prompt (they differ from the first word or message)",
            "add a 'prompt' column, or start chosen and rejected with the same prompt",
        )
    for name, response in (("chosen", chosen[cut:]), ("rejected", rejected[cut:])):
        if not _has_text(response):
            raise _SplitError(
                name,
                f"empty response ({name} is the shared prompt and nothing more)",
                "remove the row or fill in the response",
            )
    return prompt, chosen[cut:], rejected[cut:]


def _implicit_prompt_end(chosen: str, rejected: str) -> int:
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    markers = list(_ASSISTANT_TURN.finditer(chosen, 0, common))
    if markers:  # a dialogue: the responses are what follows the last shared assistant turn marker
        return markers[-1].end()
    cut = common
    while cut > 0 and not chosen[cut - 1].isspace():  # back to the start of the differing word
        cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():  # and over the whitespace before it
        cut -= 1
    return cut


def _has_text(response: Completion) -> bool:
    if isinstance(response, str):
        return bool(response.strip())
    return any(message.get("content", "").strip() for message in response)


# ----------------------------------------------------------------------------- field checks


def _text(row: _Row, name: str, what: str) -> str:
    value = row.values[name]
    if not isinstance(value, str):
        raise row.error(name, f"expected text, got {_describe(value)}", f"write the {what} as a string")
    if not value.strip():
        raise row.error(name, f"empty {what}", f"remove the row or fill in the {what}")
    return value


def _prompt(row: _Row, name: str) -> Prompt:
    value = row.values[name]
    if isinstance(value, list):
        messages = _messages(row, name, value)
        if not _has_text(messages):
            raise row.error(
                name, "empty prompt (every message is blank)", "remove the row or fill in the prompt"
            )
        return messages
    return _text(row, name, "prompt")


def _response(row: _Row, name: str, prompt: Prompt) -> Completion:
    """A response in the style of its prompt: text after text, messages after messages."""
    value = row.values[name]
    if isinstance(prompt, str) and not isinstance(value, str):
        raise row.error(
            name,
            f"expected text (the prompt is text), got {_describe(value)}",
            "write the prompt and its responses in the same style (text, or lists of messages)",
        )
    if isinstance(prompt, list):
        if not isinstance(value, list):
            raise row.error(
                name,
                f"expected a list of messages (the prompt is a list of messages), got {_describe(value)}",
                'write it as [{"role": "assistant", "content": "..."}]',
            )
        messages = _messages(row, name, value)
        _check_response_messages(row, name, messages, 0)
        return messages
    return _text(row, name, "response")


def _check_response_messages(row: _Row, name: str, messages: list[Message], offset: int) -> None:
    """A conversational response starts with an assistant turn and has some text."""
    if messages[0]["role"] != "assistant":
        raise row.error(
            f"{name}[{offset}].role",
            f"the response starts with a {messages[0]['role']!r} turn, not an assistant turn",
            "start each response with the assistant reply (earlier turns belong in the prompt)",
        )
    if not _has_text(messages):
        raise row.error(name, "empty response", "remove the row or fill in the response")


def _messages(row: _Row, name: str, value: Any) -> list[Message]:
    """Validated copies of a message list (keys with null values, e.g. from Parquet structs, dropped)."""
    example = '[{"role": "user", "content": "..."}]'
    if not isinstance(value, list) or not value:
        raise row.error(
            name, f"expected a non-empty list of messages, got {_describe(value)}", f"write it as {example}"
        )
    messages: list[Message] = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise row.error(
                where, f"expected a message object, got {_describe(message)}", f"write it as {example}"
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise row.error(
                f"{where}.role", f"missing or not text (got {_describe(role)})", f"use one of {ROLES}"
            )
        if role not in ROLES:
            raise row.error(f"{where}.role", f"unknown role {role!r}", f"use one of {ROLES}")
        if not isinstance(content, str):
            raise row.error(
                f"{where}.content",
                f"missing or not text (got {_describe(content)})",
                "give every message a text content",
            )
        messages.append({key: item for key, item in message.items() if item is not None})
    return messages


def _optional_number(row: _Row, name: str) -> float | None:
    value = row.values.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise row.error(
            name,
            f"expected a number, got {_describe(value)}",
            "write it as a number such as 0.5, or leave it empty",
        )
    number = float(value)
    if not math.isfinite(number):
        raise row.error(name, f"non-finite value {number}", "use a finite number, or leave it empty")
    if name == "weight" and number < 0:
        raise row.error(name, f"negative weight {number}", "use a weight >= 0")
    return number


def _meta(row: _Row) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for name, types in META_TYPES.items():
        value = row.values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join("text" if kind is str else "an integer" for kind in types)
            raise row.error(
                name, f"expected {expected}, got {_describe(value)}", "fix the value or drop the column"
            )
        if name == "order" and value < 0:
            raise row.error(
                name, f"negative order {value}", "number each annotator's items from 0 or 1 upwards"
            )
        if name == "shown_first" and value not in ("chosen", "rejected"):
            raise row.error(
                name,
                f"expected 'chosen' or 'rejected', got {value!r}",
                "write which response was shown first",
            )
        meta[name] = value
    return meta


def _style(value: Any) -> str:
    return (
        "text"
        if isinstance(value, str)
        else "a list of messages"
        if isinstance(value, list)
        else _describe(value)
    )


def _describe(value: Any, limit: int = 40) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"
