"""Read dataset rows from local files or the Hugging Face hub, keeping row numbers; write JSON Lines.

Local files are read here (not through `datasets`) so that every row keeps the number
a user can find in the file: the line number for JSON Lines, the 1-based record index
for JSON arrays, Parquet and CSV (the CSV header is not counted). Directories and
hub names go through `datasets`.

Every source takes a split with an optional slice in the syntax of Hugging Face datasets:
`train`, `train[:1500]`, `train[1500:]`, `train[100:200]`, `train[:80%]`, `train[80%:]`.
A file has one split, `train`. Slicing happens after the split is read, for every kind of
source, and the kept rows keep their original row numbers.

From Python, a source may also be data in memory (the trainers' `train_dataset=`): a
`datasets.Dataset`, a `datasets.DatasetDict` (the split names which one) or a list of dicts,
numbered from 1 like a JSON array.

Writing: `write_jsonl` (rows as JSON Lines), `json_safe` (NaN and infinities as null, for strict JSON) and
`atomic_path` (write to a temporary file, then rename it into place).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.data.errors import DataError

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet", ".csv")
# Extensions that make a string a file path rather than a hub dataset name.
_FILE_LIKE_EXTENSIONS = (*SUPPORTED_EXTENSIONS, ".gz", ".tsv", ".txt", ".arrow", ".zst", ".xz", ".zip", ".pq")
# Files that `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write.
_SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
# NAME or NAME[START:STOP]; each bound optional, an int or an int percentage, negative from the end.
_SPLIT_PATTERN = re.compile(r"(?P<name>[\w.+-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")
SPLIT_EXAMPLES = "'train', 'train[:1500]', 'train[1500:]', 'train[100:200]', 'train[:80%]', 'train[80%:]'"


@dataclass(frozen=True)
class RowTable:
    """Raw rows of one dataset split, each with the row number used in error messages."""

    source: str
    rows: list[dict[str, Any]]
    row_numbers: list[int]

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.row_numbers):
            raise ValueError(f"RowTable has {len(self.rows)} rows but {len(self.row_numbers)} row numbers.")

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class SplitBound:
    """One end of a split slice: a row index, or a percentage of the split's rows."""

    value: int
    percent: bool

    def to_index(self, num_rows: int) -> int:
        """The row index; percentages round to the closest row as `datasets` does."""
        return round(self.value * num_rows / 100) if self.percent else self.value


@dataclass(frozen=True)
class SplitSlice:
    """A split name and an optional slice of it, parsed from text such as 'train[:80%]'."""

    name: str
    start: SplitBound | None
    stop: SplitBound | None
    sliced: bool = field(compare=False)
    """True when the text had brackets (even 'train[:]'), so the table's source names the slice;
    not compared, so 'train' == 'train[:]' (the same rows)."""

    def select(self, num_rows: int) -> slice:
        """The rows kept of a split of `num_rows` rows; bounds clip like Python slicing."""
        start = None if self.start is None else self.start.to_index(num_rows)
        stop = None if self.stop is None else self.stop.to_index(num_rows)
        return slice(start, stop)


def parse_split(split: str, source: str = "split") -> SplitSlice:
    """Parse 'NAME' or 'NAME[START:STOP]' (Hugging Face datasets slice syntax).

    Each bound is optional and is an int (a row index; negative counts from the end) or an
    int percentage between -100% and 100%. Raises `DataError` naming `source` (the data
    source, or the flag the split came from) and the value otherwise.
    """
    match = _SPLIT_PATTERN.fullmatch(split)
    if match is None:
        raise DataError(
            source,
            None,
            None,
            f"invalid split {split!r} (expected a split name with an optional [START:STOP] slice of "
            "row indices or whole percentages)",
            f"write it like {SPLIT_EXAMPLES}",
        )
    bounds = []
    for text in (match["start"], match["stop"]):
        bound = None if text is None else SplitBound(int(text.rstrip("%")), text.endswith("%"))
        if bound is not None and bound.percent and abs(bound.value) > 100:
            raise DataError(
                source,
                None,
                None,
                f"invalid split {split!r} (percentage bounds must be between -100% and 100%, got {text})",
                f"write it like {SPLIT_EXAMPLES}",
            )
        bounds.append(bound)
    return SplitSlice(match["name"], bounds[0], bounds[1], sliced="[" in split)


def describe_source(source: Any) -> str:
    """How messages and config.yaml name a data source: a path as given, data in memory by its type and size."""
    if isinstance(source, str):
        return source
    size = f"{len(source)} rows" if hasattr(source, "__len__") else "rows"
    if isinstance(source, dict):  # a DatasetDict
        size = ", ".join(f"{name}: {len(part)} rows" for name, part in source.items())
    return f"<{type(source).__name__} in memory, {size}>"


def _in_memory_table(source: Any, split: str) -> RowTable:
    """The rows of a `datasets.Dataset`, a `datasets.DatasetDict` (its split `split`) or a list of dicts."""
    name = describe_source(source)
    if isinstance(source, dict):
        if split not in source:
            raise DataError(
                name, None, None, f"no split {split!r} (found {sorted(source)})", "pass one of those splits"
            )
        source = source[split]
    if hasattr(source, "to_list") and hasattr(source, "column_names"):  # a datasets.Dataset
        return _table_from_dataset(source, name)
    if not isinstance(source, (list, tuple)):
        raise DataError(
            name,
            None,
            None,
            f"a data source is a path, a datasets.Dataset or a list of dicts, got {type(source).__name__}",
            "pass one of those",
        )
    for number, row in enumerate(source, start=1):
        if not isinstance(row, dict):
            raise DataError(
                name, number, None, f"a row is a dict of columns, got {_preview(row)}", "fix that row"
            )
    return RowTable(source=name, rows=list(source), row_numbers=list(range(1, len(source) + 1)))


def load_rows(source: Any, split: str = "train") -> RowTable:
    """Read the rows of `split` of `source`: a local file, a saved dataset directory, or a hub name.

    Files: `.json` (a JSON array of objects, or JSON Lines content), `.jsonl`, `.jsonl.gz`,
    `.json.gz`, `.parquet`, `.csv`; their only split is "train". A directory written by
    `save_to_disk` is read with `datasets.load_from_disk`; any other directory or a string that
    is not a path goes to `datasets.load_dataset(source, split=name)`. `split` may slice the
    split (see `parse_split`); the kept rows keep their row numbers and the table's source
    names the slice, e.g. 'data/pairs.jsonl[train[:1500]]'. Data in memory (module docstring)
    is read as it is. Raises `DataError` naming the file and line for malformed JSON, rows that are
    not objects, missing files, unknown types, bad split syntax and slices that select no rows.
    """
    if not isinstance(source, str):
        spec = parse_split(split, describe_source(source))
        return _sliced(_in_memory_table(source, spec.name), spec, split, describe_source(source))
    if not source.strip():
        raise DataError(
            "<no source>", None, None, "no data source given", "pass --dataset FILE (or a datasets folder)"
        )
    spec = parse_split(split, source)
    path = Path(source).expanduser()
    if path.is_file():
        if spec.name != "train":
            raise DataError(
                source,
                None,
                None,
                f"a file has one split, called 'train', got split {split!r}",
                f"use split 'train' or a slice of it, e.g. {SPLIT_EXAMPLES}",
            )
        table = _read_file(path, source)
    elif path.is_dir() and any((path / name).exists() for name in _SAVED_DATASET_FILES):
        table = _read_saved_dataset(path, source, spec.name)
    elif path.is_dir() or not _looks_like_path(source):
        table = _read_hub_dataset(source, spec.name)
    else:
        raise DataError(
            source,
            None,
            None,
            f"file not found (looked for {path.resolve()})",
            "check the path (relative paths start from the current directory)",
        )
    return _sliced(table, spec, split, source)


def _sliced(table: RowTable, spec: SplitSlice, split: str, source: str) -> RowTable:
    """The rows of `table` that `spec` keeps, under the name `source[split]`."""
    if not spec.sliced:
        return table
    kept = spec.select(len(table))
    sliced = RowTable(f"{source}[{split}]", table.rows[kept], table.row_numbers[kept])
    if not sliced.rows:
        raise DataError(
            sliced.source,
            None,
            None,
            f"the slice selects no rows (split {spec.name!r} has {len(table)} rows)",
            f"choose bounds that keep some of the {len(table)} rows, e.g. {SPLIT_EXAMPLES}",
        )
    return sliced


def _looks_like_path(source: str) -> bool:
    lowered = source.lower()
    return (
        source.startswith((".", "/", "~", "\\"))
        or source.count("/") > 1
        or lowered.endswith(_FILE_LIKE_EXTENSIONS)
    )


def _read_file(path: Path, source: str) -> RowTable:
    name = path.name.lower()
    if name.endswith((".json", ".jsonl")):
        return _parse_json_text(_read_text(path, source, compressed=False), source)
    if name.endswith((".json.gz", ".jsonl.gz")):
        return _parse_json_text(_read_text(path, source, compressed=True), source)
    if name.endswith(".parquet"):
        return _read_arrow(path, source, "parquet")
    if name.endswith(".csv"):
        return _read_arrow(path, source, "csv")
    raise DataError(
        source,
        None,
        None,
        f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}",
        f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}, or pass a hub dataset name",
    )


def _read_text(path: Path, source: str, compressed: bool) -> str:
    try:
        if compressed:
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as error:
        raise DataError(
            source, None, None, f"not a valid gzip file ({error})", "re-compress it with gzip or drop the .gz"
        ) from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # the line (the row of a JSON Lines file) holding the first bad byte
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            source,
            line,
            None,
            f"not valid UTF-8 text (byte {data[error.start : error.start + 1]!r} at line {line}, byte {column} "
            f"of the line: {error.reason})",
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or fix that line",
        ) from error


def _parse_json_text(text: str, source: str) -> RowTable:
    """A JSON array of objects (rows numbered 1..n) or JSON Lines (rows numbered by line)."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                source,
                None,
                None,
                f"malformed JSON ({error.msg} at line {error.lineno}, column {error.colno})",
                "fix the JSON syntax there (a JSON array of objects, or one object per line)",
            ) from error
        numbers = list(range(1, len(items) + 1))
    else:
        items, numbers = [], []
        # split on "\n" only: str.splitlines would also split on U+2028 inside JSON strings
        for line_number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue  # blank lines are not data
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    source,
                    line_number,
                    None,
                    f"malformed JSON ({error.msg} at column {error.colno})",
                    "write exactly one JSON object per line; check quotes, commas and escapes "
                    "(a line that is not JSON cannot be skipped: --skip_invalid applies to rows that parse)",
                ) from error
            numbers.append(line_number)
    for item, number in zip(items, numbers, strict=True):
        if not isinstance(item, dict):
            raise DataError(
                source,
                number,
                None,
                f"expected a JSON object, got {type(item).__name__} {_preview(item)}",
                'make each row an object such as {"prompt": "...", "completion": "..."}',
            )
    return RowTable(source=source, rows=items, row_numbers=numbers)


def _read_arrow(path: Path, source: str, kind: str) -> RowTable:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path) if kind == "parquet" else pyarrow.csv.read_csv(path)
    except pa.ArrowException as error:
        raise DataError(
            source,
            None,
            None,
            f"could not read it as {kind} ({error})",
            f"check that it is a valid {kind} file",
        ) from error
    rows = table.to_pylist()
    return RowTable(source=source, rows=rows, row_numbers=list(range(1, len(rows) + 1)))


def _read_saved_dataset(path: Path, source: str, split: str) -> RowTable:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                source, None, None, f"no split {split!r} (found {sorted(loaded)})", "pass one of those splits"
            )
        loaded = loaded[split]
    return _table_from_dataset(loaded, source)


def _read_hub_dataset(source: str, split: str) -> RowTable:
    import datasets

    logger.info("Loading %s (split %s) with datasets.load_dataset", source, split)
    try:
        loaded = datasets.load_dataset(source, split=split)
    except Exception as error:  # datasets raises many types; re-raise with the source named
        raise DataError(
            source,
            None,
            None,
            f"datasets.load_dataset failed ({type(error).__name__}: {error})",
            f"check the dataset name and split {split!r}, or pass a local file ({', '.join(SUPPORTED_EXTENSIONS)})",
        ) from error
    return _table_from_dataset(loaded, f"{source}[{split}]")


def _table_from_dataset(dataset: Any, source: str) -> RowTable:
    rows = dataset.to_list()
    return RowTable(source=source, rows=rows, row_numbers=list(range(1, len(rows) + 1)))


def _preview(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines (UTF-8, "\\n" line ends, keys in insertion order)."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None (null), so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write the file to; renamed onto `path` when the block ends.

    A killed job leaves `path` as it was or complete, never half written. The name is unique per process
    and call (processes that share a folder, such as a cache, do not collide); when the block raises, the
    temporary file is removed and `path` is untouched.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
