"""Small pieces of the reward-model evaluation: strict JSON and the synthetic-task detection."""

import json
import math

import pytest

from preftune.data.io import json_safe
from preftune.tasks import detect_task


def test_json_safe_writes_null_for_nan_and_infinity():
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "x", "e": 2}
    safe = json_safe(value)
    assert safe == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 2}
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_task_is_detected_from_task_json_beside_the_data(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    assert detect_task(str(data), "auto") is None
    (tmp_path / "task.json").write_text(json.dumps({"task": "kindness"}))
    assert detect_task(str(data), "auto") == "kindness"
    assert detect_task(str(data), "none") is None
    with pytest.raises(ValueError, match="Unknown task"):
        detect_task(str(data), "nope")
