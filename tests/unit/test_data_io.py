"""Reading rows from files: formats round-trip, row numbers, and errors that name file and line; atomic writes."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preftune.data import DataConfig, DataError, Skip, load_rows, parse_pairs, report_skips, summarize_skips
from preftune.data.io import atomic_path, parse_split

ROWS = [
    {"prompt": "What is two plus two?", "chosen": " Four.", "rejected": " Five.", "margin": 1.5},
    {"prompt": "Say hi", "chosen": " hi", "rejected": " no", "margin": None},
    {"prompt": "Unicode \u2028 line separator, é", "chosen": " a", "rejected": " b", "margin": -0.25},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "hello"}],
        "chosen": [{"role": "assistant", "content": "hi there"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
]


def _write(path, rows, kind):
    if kind == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif kind in (".jsonl.gz", ".json.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif kind == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("kind", [".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet"])
@pytest.mark.parametrize("rows", [ROWS, CONVERSATIONAL], ids=["standard", "conversational"])
def test_file_formats_round_trip(tmp_path, kind, rows):
    path = tmp_path / f"pairs{kind}"
    _write(path, rows, kind)
    table = load_rows(str(path))
    assert table.rows == rows
    assert table.row_numbers == list(range(1, len(rows) + 1))
    assert table.source == str(path)


def test_csv_round_trip_infers_numbers_and_booleans(tmp_path):
    path = tmp_path / "kto.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label", "weight"])
        writer.writerow(["Hi, you", " hello, friend", "true", "0.5"])
        writer.writerow(["Bye", ' go "now"', "false", ""])
    table = load_rows(str(path))
    assert table.rows == [
        {"prompt": "Hi, you", "completion": " hello, friend", "label": True, "weight": 0.5},
        {"prompt": "Bye", "completion": ' go "now"', "label": False, "weight": None},
    ]
    assert table.row_numbers == [1, 2]


def test_jsonl_blank_lines_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\r\n\n{"text": "c"}', encoding="utf-8")
    table = load_rows(str(path))
    assert [row["text"] for row in table.rows] == ["a", "b", "c"]
    assert table.row_numbers == [1, 4, 6]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b",}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    assert info.value.row == 3
    assert str(info.value).startswith(f"{path}, row 3: malformed JSON")
    assert "Fix: write exactly one JSON object per line" in str(info.value)


def test_malformed_json_array_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON \(.* at line 3, column 12\)"):
        load_rows(str(path))


@pytest.mark.parametrize(
    ("name", "content", "row", "got"),
    [
        ("rows.jsonl", '{"text": "a"}\n["a", "b"]\n', 2, "list"),
        ("rows.json", '[{"text": "a"}, "just text"]', 2, "str"),
    ],
)
def test_non_object_row_is_an_error(tmp_path, name, content, row, got):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    assert info.value.row == row
    assert f"row {row}: expected a JSON object, got {got}" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "pairs.jsonl"
    with pytest.raises(DataError, match=r"pairs\.jsonl: file not found \(looked for .*nope/pairs\.jsonl\)"):
        load_rows(str(missing))
    with pytest.raises(DataError, match="file not found"):
        load_rows("data/not_here.parquet")  # relative, with an extension: a path, not a hub name


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    message = str(info.value)
    assert "unsupported file type '.txt'" in message
    for extension in (".json", ".jsonl", ".jsonl.gz", ".parquet", ".csv"):
        assert extension in message


def test_not_gzip_and_not_utf8_are_clear_errors(tmp_path):
    fake_gz = tmp_path / "a.jsonl.gz"
    fake_gz.write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="not a valid gzip file"):
        load_rows(str(fake_gz))
    latin = tmp_path / "b.jsonl"
    latin.write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8") as error:
        load_rows(str(latin))
    assert (
        error.value.row == 2
        and "b.jsonl, row 2:" in str(error.value)
        and "byte 14 of the line" in str(error.value)
    )
    gz_latin = tmp_path / "c.jsonl.gz"
    with gzip.open(gz_latin, "wb") as handle:
        handle.write('{"text": "a"}\n\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="c.jsonl.gz, row 3: not valid UTF-8"):
        load_rows(str(gz_latin))


def test_saved_dataset_directory_is_read_with_load_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(single))
    assert load_rows(str(single)).rows == ROWS[:2]
    both = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:1]), "test": datasets.Dataset.from_list(ROWS[1:2])}
    ).save_to_disk(str(both))
    assert load_rows(str(both), split="test").rows == ROWS[1:2]
    with pytest.raises(DataError, match=r"no split 'validation' \(found \['test', 'train'\]\)"):
        load_rows(str(both), split="validation")


def test_hub_name_goes_to_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS[:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table = load_rows("someone/some-pairs", split="test")
    assert calls == [("someone/some-pairs", "test")]
    assert table.rows == ROWS[:1]
    assert table.source == "someone/some-pairs[test]"


def _numbered_jsonl(path, num_rows: int) -> None:
    """Rows {"i": 0..num_rows-1} with a blank line after the 2nd, so row i sits on line i + 1 (i < 2)
    or i + 2 (i >= 2)."""
    lines = [json.dumps({"i": i}) for i in range(num_rows)]
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("split", "kept"),
    [
        ("train[:3]", [0, 1, 2]),
        ("train[7:]", [7, 8, 9]),
        ("train[2:4]", [2, 3]),
        ("train[-2:]", [8, 9]),
        ("train[:80%]", list(range(8))),
        ("train[80%:]", [8, 9]),
        ("train[:25%]", [0, 1]),  # round(25 * 10 / 100) = round(2.5) = 2, as datasets rounds
        ("train[:35%]", [0, 1, 2, 3]),  # round(3.5) = 4
        ("train[5:1000]", [5, 6, 7, 8, 9]),  # clipped like Python slicing
        ("train[:]", list(range(10))),
    ],
)
def test_split_slices_keep_the_original_row_numbers(tmp_path, split, kept):
    path = tmp_path / "rows.jsonl"
    _numbered_jsonl(path, 10)
    table = load_rows(str(path), split)
    assert [row["i"] for row in table.rows] == kept
    assert table.row_numbers == [i + 1 if i < 2 else i + 2 for i in kept]
    assert table.source == f"{path}[{split}]"


def test_unsliced_train_split_keeps_the_plain_source(tmp_path):
    path = tmp_path / "rows.jsonl"
    _numbered_jsonl(path, 3)
    assert load_rows(str(path), "train").source == str(path)


def test_errors_in_a_slice_name_the_slice_and_the_line_of_the_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": " a", "rejected": " b"}] * 3 + [
        {"prompt": "p", "chosen": "", "rejected": " b"}
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert len(parse_pairs(load_rows(str(path), "train[:3]")).examples) == 3
    with pytest.raises(DataError) as info:
        parse_pairs(load_rows(str(path), "train[2:]"))
    assert info.value.row == 4
    assert str(info.value).startswith(f"{path}[train[2:]], row 4")


@pytest.mark.parametrize("kind", [".parquet", ".csv", ".json"])
def test_slices_work_on_every_file_type(tmp_path, kind):
    path = tmp_path / f"rows{kind}"
    rows = [{"text": f"row {i}"} for i in range(5)]
    if kind == ".csv":
        path.write_text("text\n" + "".join(f"{row['text']}\n" for row in rows), encoding="utf-8")
    else:
        _write(path, rows, kind)
    table = load_rows(str(path), "train[60%:]")
    assert table.rows == rows[3:]
    assert table.row_numbers == [4, 5]
    assert table.source == f"{path}[train[60%:]]"


def test_a_file_has_only_the_train_split(tmp_path):
    path = tmp_path / "rows.jsonl"
    _numbered_jsonl(path, 3)
    with pytest.raises(DataError) as info:
        load_rows(str(path), "test[:2]")
    message = str(info.value)
    assert "a file has one split, called 'train', got split 'test[:2]'" in message
    assert "'train[:1500]'" in message and "'train[80%:]'" in message


@pytest.mark.parametrize(
    "split",
    ["train[:x]", "train[1.5:]", "train[:10%%]", "train[1:2:3]", "train[]", "[:10]", "train [:10]", ""],
)
def test_bad_split_syntax_names_the_value_and_shows_examples(tmp_path, split):
    path = tmp_path / "rows.jsonl"
    _numbered_jsonl(path, 3)
    with pytest.raises(DataError) as info:
        load_rows(str(path), split)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid split {split!r}")
    assert "'train[:1500]', 'train[1500:]', 'train[100:200]', 'train[:80%]', 'train[80%:]'" in message


def test_percentages_beyond_100_are_rejected():
    with pytest.raises(DataError, match=r"between -100% and 100%, got 150%"):
        parse_split("train[:150%]")
    assert parse_split("train[-100%:100%]").select(10) == slice(-10, 10)
    assert parse_split("train") == parse_split("train[:]") != parse_split("train[:100%]")


@pytest.mark.parametrize("split", ["train[3:]", "train[20:30]", "train[:0]", "train[2:1]", "train[:-5]"])
def test_a_slice_that_selects_no_rows_is_an_error(tmp_path, split):
    path = tmp_path / "rows.jsonl"
    _numbered_jsonl(path, 3)
    with pytest.raises(DataError, match=r"the slice selects no rows \(split 'train' has 3 rows\)") as info:
        load_rows(str(path), split)
    assert info.value.source == f"{path}[{split}]"


def test_saved_dataset_and_hub_splits_are_sliced_after_loading(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    both = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:1]), "test": datasets.Dataset.from_list(ROWS)}
    ).save_to_disk(str(both))
    table = load_rows(str(both), split="test[1:]")
    assert (table.rows, table.row_numbers, table.source) == (ROWS[1:], [2, 3], f"{both}[test[1:]]")
    with pytest.raises(DataError, match=r"no split 'validation'"):
        load_rows(str(both), split="validation[:10]")

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table = load_rows("someone/some-pairs", split="test[:67%]")  # round(2.01) = 2
    assert calls == [("someone/some-pairs", "test")]
    assert (table.rows, table.row_numbers) == (ROWS[:2], [1, 2])
    assert table.source == "someone/some-pairs[test[:67%]]"


def test_data_config_eval_split_defaults_to_the_training_split():
    assert DataConfig(dataset="a.jsonl", eval_dataset="b.jsonl").eval_split == "train"
    config = DataConfig(
        dataset="a.jsonl",
        eval_dataset="a.jsonl",
        dataset_split="train[:90%]",
        eval_dataset_split="train[90%:]",
    )
    assert (config.dataset_split, config.eval_split) == ("train[:90%]", "train[90%:]")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dataset_split": "train[:90%]"},
        {"dataset_split": "train[:90%]", "eval_dataset_split": "train[:90%]"},
        {"dataset_split": "train", "eval_dataset_split": "train[:]"},
    ],
)
def test_data_config_refuses_to_evaluate_on_the_training_data(kwargs):
    with pytest.raises(ValueError, match=r"is the training data") as info:
        DataConfig(dataset="a.jsonl", eval_dataset="a.jsonl", **kwargs)
    assert "--dataset_split 'train[:90%]' --eval_dataset_split 'train[90%:]'" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset_split": "train[:ten]"}, r"--dataset_split: invalid split 'train\[:ten\]'"),
        (
            {"eval_dataset": "b.jsonl", "eval_dataset_split": "train[80 %:]"},
            r"--eval_dataset_split: invalid split",
        ),
        ({"eval_dataset_split": "train[80%:]"}, r"no --eval_dataset is given"),
    ],
)
def test_data_config_checks_splits_before_reading_data(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(dataset="a.jsonl", **kwargs)


def test_data_error_message_fields_and_pickling():
    error = DataError(
        "data/pairs.jsonl", 12, "chosen", "empty response", "remove the row or fill in the response", True
    )
    assert str(error) == (
        "data/pairs.jsonl, row 12, field 'chosen': empty response. Fix: remove the row or fill in the response "
        "(or pass --skip_invalid true to skip and count such rows)."
    )
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.row, copy.field, copy.skippable, str(copy)) == (
        "data/pairs.jsonl",
        12,
        "chosen",
        True,
        str(error),
    )


def test_summarize_skips_counts_reasons_and_lists_rows():
    skips = [Skip(12, "chosen", "empty response"), Skip(40, "rejected", "chosen identical to rejected")]
    skips.append(Skip(77, "chosen", "empty response"))
    summary = summarize_skips(skips, "d.jsonl", 100)
    assert summary == (
        "Skipped 3 of 100 rows of d.jsonl: 2 x empty response (field 'chosen'); "
        "1 x chosen identical to rejected (field 'rejected'). Rows: 12, 40, 77."
    )
    assert summarize_skips([], "d.jsonl", 5) == "Skipped 0 of 5 rows of d.jsonl."
    assert summarize_skips(skips[:1], "d.jsonl") == (
        "Skipped 1 rows of d.jsonl: 1 x empty response (field 'chosen'). Rows: 12."
    )


def test_report_skips_logs_a_warning_and_returns_the_summary(caplog):
    with caplog.at_level(logging.INFO, logger="preftune.data"):
        summary = report_skips("d.jsonl", [Skip(3, "text", "empty text")], 10)
    assert summary == "Skipped 1 of 10 rows of d.jsonl: 1 x empty text (field 'text'). Rows: 3."
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [("WARNING", summary)]


def test_atomic_path_replaces_the_file_only_when_the_block_ends(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("new")
        assert target.read_text() == "old"  # not yet in place
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_path_leaves_the_file_and_no_temporary_when_the_block_raises(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_path_gives_each_call_its_own_temporary(tmp_path):
    with atomic_path(tmp_path / "a") as first, atomic_path(tmp_path / "a") as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "a").read_text() == "1"  # the outer block ends last
