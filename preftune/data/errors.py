"""Errors and skip records for data validation.

Every problem with a user's data is reported as a `DataError` that names the source
(file path or dataset name), the row, the field, what is wrong and how to fix it. When
a flag allows skipping invalid rows, the same information is kept as a `Skip` record
and reported in one summary, so rows are never dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SKIP_HINT = "or pass --skip_invalid true to skip and count such rows"


class DataError(ValueError):
    """A problem with one row (or the whole source) of a dataset.

    The message reads `SOURCE, row N, field 'F': PROBLEM. Fix: FIX`; `row` is 1-based
    (for JSON Lines files, the line number in the file) and may be None for problems
    with the source itself, as may `field`. `skippable` marks row-level problems that
    `skip_invalid=True` may skip (the message then says so).
    """

    def __init__(
        self,
        source: str,
        row: int | None,
        field: str | None,
        problem: str,
        fix: str,
        skippable: bool = False,
    ) -> None:
        self.source = source
        self.row = row
        self.field = field
        self.problem = problem
        self.fix = fix
        self.skippable = skippable
        fix_text = f"{fix} ({SKIP_HINT})" if skippable else fix
        super().__init__(f"{format_location(source, row, field)}: {problem}. Fix: {fix_text}.")

    def __reduce__(self):  # keep the fields when pickled (dataloader workers, datasets.map)
        return (DataError, (self.source, self.row, self.field, self.problem, self.fix, self.skippable))


def format_location(source: str, row: int | None, field: str | None) -> str:
    """`'data/pairs.jsonl, row 12, field 'chosen''`, leaving out the parts that are None."""
    parts = [source]
    if row is not None:
        parts.append(f"row {row}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Skip:
    """A row left out because it was invalid and skipping was allowed."""

    row: int
    field: str | None
    problem: str

    @classmethod
    def from_error(cls, error: DataError) -> Skip:
        if error.row is None:
            raise ValueError(f"Only row-level errors can be skipped, got one for the whole source: {error}")
        return cls(row=error.row, field=error.field, problem=error.problem)


def summarize_skips(
    skips: Sequence[Skip], source: str, num_rows: int | None = None, max_rows_listed: int = 10
) -> str:
    """One line for the log: how many rows were skipped, why, and the first row numbers.

    `'Skipped 3 of 1800 rows of data/pairs.jsonl: 2 x empty response (field 'chosen');
    1 x chosen identical to rejected (field 'rejected'). Rows: 12, 40, 77.'`
    """
    of = f" of {num_rows}" if num_rows is not None else ""
    if not skips:
        return f"Skipped 0{of} rows of {source}."
    reasons = Counter((skip.problem, skip.field) for skip in skips)
    parts = [
        f"{count} x {problem}" + (f" (field {field!r})" if field is not None else "")
        for (problem, field), count in reasons.most_common()
    ]
    rows = [str(skip.row) for skip in skips[:max_rows_listed]]
    more = f" and {len(skips) - max_rows_listed} more" if len(skips) > max_rows_listed else ""
    return f"Skipped {len(skips)}{of} rows of {source}: {'; '.join(parts)}. Rows: {', '.join(rows)}{more}."


def report_skips(source: str, skips: Sequence[Skip], num_rows: int | None = None) -> str:
    """Log the skip summary (a warning when rows were skipped) and return it."""
    summary = summarize_skips(skips, source, num_rows)
    if skips:
        logger.warning(summary)
    else:
        logger.info(summary)
    return summary
