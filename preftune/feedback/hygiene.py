"""Dataset hygiene of pairwise data: ties, empty and truncated responses, duplicates, train/eval overlap.

`load_audit_pairs` reads and validates rows as every pairwise command does
(`preftune.data.parse_pairs`), except that the two problems the audit exists to count,
ties (chosen identical to rejected) and empty responses (including a dialogue that ends
with an empty assistant turn), are kept as hygiene findings instead of stopping the run.
Any other invalid row is an error naming file, row and field, or, with `skip_invalid`,
a counted skip.

What `hygiene_stats` counts (texts of conversational rows are their message contents):
- exact duplicates: a row repeating an earlier row's (annotator, prompt, chosen, rejected);
  ratings of one pair by different annotators are overlap, not duplicates;
- contradictory duplicates: one annotator (or, without annotators, the dataset) has the
  same pair in both directions; counted once per pair;
- near duplicates: rows equal to another row after normalising the texts (lowercase,
  punctuation removed, whitespace collapsed) but not exactly: distinct exact keys minus
  distinct normalised keys. Hashing, so linear in the number of rows;
- near ties: chosen and rejected equal after normalising;
- truncated responses: a response at the length cap (the largest word count, when at least
  `min_cap_count` responses reach it: a cut-off leaves a spike there) that does not end with
  terminal punctuation; `unterminated` counts all responses without terminal punctuation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from preftune.data import DataError, PairExample, RowTable, Skip, load_rows, parse_pairs
from preftune.feedback.ratings import completion_text, num_words, response_text

TIE_PROBLEM = "chosen identical to rejected"
EMPTY_PROBLEM = "empty response"
_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_TERMINAL = re.compile(r"[.!?\"'\u201d\u2019)\]:;*`~]\s*$|[\U0001F300-\U0001FAFF]\s*$")
MAX_EXAMPLES = 5
"""Row numbers listed as evidence of each finding."""


@dataclass
class AuditPairs:
    """Validated pairs of one source, with the rows kept out and why."""

    source: str
    pairs: list[PairExample]
    num_rows: int
    tie_rows: list[int] = field(default_factory=list)
    empty_rows: list[int] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def load_audit_pairs(source: str, split: str = "train", skip_invalid: bool = False) -> AuditPairs:
    """Read and validate pairwise rows; ties and empty responses become hygiene findings.

    Raises `DataError` for the first other invalid row unless `skip_invalid`, which counts them.
    Data where every row is a tie or empty gives no pairs, with every row counted.
    """
    table = load_rows(source, split)
    if len(table) == 0:
        parse_pairs(table, skip_invalid=True)  # raises "no rows"
    try:
        parsed = parse_pairs(table, skip_invalid=True)
        examples, skips = parsed.examples, parsed.skipped
    except DataError:  # every row is invalid, which parse_pairs refuses: classify them one by one
        examples, skips = [], [_row_skip(table, position) for position in range(len(table))]
    result = AuditPairs(table.source, examples, len(table))
    for skip in skips:
        if skip.problem.startswith(TIE_PROBLEM):
            result.tie_rows.append(skip.row)
        elif skip.problem.startswith(EMPTY_PROBLEM):
            result.empty_rows.append(skip.row)
        elif skip_invalid:
            result.skipped.append(skip)
        else:  # re-validate the row alone to raise its full error (with the fix)
            position = table.row_numbers.index(skip.row)
            parse_pairs(RowTable(table.source, [table.rows[position]], [skip.row]), skip_invalid=False)
            # parsing is deterministic, so the line above raised; keep the row from passing silently anyway
            raise DataError(table.source, skip.row, skip.field, skip.problem, "fix the row")
    return result


def _row_skip(table: RowTable, position: int) -> Skip:
    """Why the row at `position` is invalid (every row of `table` is)."""
    row = table.row_numbers[position]
    try:
        parse_pairs(RowTable(table.source, [table.rows[position]], [row]), skip_invalid=False)
    except DataError as error:
        return Skip.from_error(error)
    raise AssertionError(f"row {row} of {table.source} parsed alone but not in its table")


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: the key of near duplicates."""
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text.lower())).strip()


def _examples(rows: Sequence[int]) -> list[int]:
    return sorted(rows)[:MAX_EXAMPLES]


def hygiene_stats(data: AuditPairs, min_cap_count: int = 3) -> dict[str, Any]:
    """Counts (and example rows) of each hygiene problem of one source; see the module docstring."""
    exact: dict[tuple, int] = {}
    normalised: set[tuple] = set()
    duplicate_rows, near_tie_rows = [], []
    responses: list[tuple[str, int]] = []  # (text, row)
    for pair in data.pairs:
        prompt = completion_text(pair.prompt)
        chosen, rejected = response_text(pair.chosen), response_text(pair.rejected)
        key = (pair.meta.get("annotator"), prompt, chosen, rejected)
        if key in exact:
            duplicate_rows.append(pair.row)
        else:
            exact[key] = pair.row
        normal_chosen, normal_rejected = normalize_text(chosen), normalize_text(rejected)
        normalised.add((key[0], normalize_text(prompt), normal_chosen, normal_rejected))
        if normal_chosen == normal_rejected:
            near_tie_rows.append(pair.row)
        responses += [(chosen, pair.row), (rejected, pair.row)]
    contradictory_rows = [
        row
        for (annotator, prompt, chosen, rejected), row in exact.items()
        if chosen < rejected and (annotator, prompt, rejected, chosen) in exact
    ]
    truncated = truncated_responses(responses, min_cap_count)
    return {
        "num_rows": data.num_rows,
        "num_valid_rows": len(data.pairs),
        "num_skipped_invalid": len(data.skipped),
        "ties": len(data.tie_rows),
        "tie_rows": _examples(data.tie_rows),
        "near_ties": len(near_tie_rows),
        "near_tie_rows": _examples(near_tie_rows),
        "empty_responses": len(data.empty_rows),
        "empty_rows": _examples(data.empty_rows),
        "exact_duplicates": len(duplicate_rows),
        "exact_duplicate_rows": _examples(duplicate_rows),
        "contradictory_duplicates": len(contradictory_rows),
        "contradictory_rows": _examples(contradictory_rows),
        "near_duplicates": len(exact) - len(normalised),
        **truncated,
    }


def truncated_responses(responses: Sequence[tuple[str, int]], min_cap_count: int = 3) -> dict[str, Any]:
    """Responses (text, row) cut off at a length cap; see the module docstring for the heuristic."""
    unterminated = [(num_words(text), row) for text, row in responses if not _TERMINAL.search(text)]
    lengths = Counter(num_words(text) for text, _ in responses)
    cap = max(lengths, default=0)
    capped = lengths[cap] >= min_cap_count and cap > 0
    truncated_rows = [row for words, row in unterminated if capped and words == cap]
    return {
        "unterminated_responses": len(unterminated),
        "unterminated_share": len(unterminated) / len(responses) if responses else float("nan"),
        "length_cap_words": cap if capped else None,
        "truncated_responses": len(truncated_rows),
        "truncated_rows": _examples(truncated_rows),
    }


def prompt_overlap(train: AuditPairs, held_out: AuditPairs) -> dict[str, Any]:
    """Held-out rows whose prompt (normalised) or whole pair (normalised, either order) is in train."""

    def pair_key(pair: PairExample) -> tuple[str, ...]:
        responses = sorted(normalize_text(response_text(r)) for r in (pair.chosen, pair.rejected))
        return (normalize_text(completion_text(pair.prompt)), *responses)

    train_prompts = {normalize_text(completion_text(p.prompt)) for p in train.pairs}
    train_pairs = {pair_key(p) for p in train.pairs}
    prompt_rows = [
        p.row for p in held_out.pairs if normalize_text(completion_text(p.prompt)) in train_prompts
    ]
    pair_rows = [p.row for p in held_out.pairs if pair_key(p) in train_pairs]
    shared = {normalize_text(completion_text(p.prompt)) for p in held_out.pairs} & train_prompts
    return {
        "eval_source": held_out.source,
        "eval_num_rows": held_out.num_rows,
        "eval_prompt_overlap_rows": len(prompt_rows),
        "eval_prompt_overlap_share": len(prompt_rows) / max(len(held_out.pairs), 1),
        "eval_prompt_overlap_distinct": len(shared),
        "eval_prompt_overlap_examples": _examples(prompt_rows),
        "eval_pair_overlap_rows": len(pair_rows),
        "eval_pair_overlap_examples": _examples(pair_rows),
    }
