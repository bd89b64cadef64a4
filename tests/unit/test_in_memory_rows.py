"""load_rows reads data given in memory (the trainers' train_dataset=) as it reads files: slices, row numbers, errors."""

import datasets
import pytest

from preftune.config import config_to_flat_dict
from preftune.data import DataConfig, load_rows
from preftune.data.errors import DataError
from preftune.data.io import describe_source

ROWS = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)]


def test_a_dataset_a_dataset_dict_and_a_list_give_the_same_rows_and_slices():
    dataset = datasets.Dataset.from_list(ROWS)
    splits = datasets.DatasetDict({"train": dataset, "test": datasets.Dataset.from_list(ROWS[:2])})
    for source in (dataset, splits, ROWS):
        table = load_rows(source, "train[7:]")
        assert table.rows == ROWS[7:] and table.row_numbers == [8, 9, 10]
    assert load_rows(splits, "test").rows == ROWS[:2]
    assert load_rows(ROWS, "train[:20%]").source == "<list in memory, 10 rows>[train[:20%]]"


def test_in_memory_data_errors_name_the_split_or_the_row():
    with pytest.raises(DataError, match=r"no split 'validation' \(found \['train'\]\)"):
        load_rows(datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}), "validation")
    with pytest.raises(DataError, match=r"row 2.*a row is a dict of columns"):
        load_rows([ROWS[0], ["not", "a", "row"]])
    with pytest.raises(DataError, match="a path, a datasets.Dataset or a list of dicts, got int"):
        load_rows(3)


def test_config_yaml_names_in_memory_data_instead_of_writing_it_out():
    config = DataConfig(dataset=datasets.Dataset.from_list(ROWS), eval_dataset=ROWS[:3])
    flat = config_to_flat_dict(config)
    assert (
        flat["dataset"] == "<Dataset in memory, 10 rows>"
        and flat["eval_dataset"] == "<list in memory, 3 rows>"
    )
    assert describe_source("data/pairs.jsonl") == "data/pairs.jsonl"
