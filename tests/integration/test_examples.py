"""docs/examples run as written and do what they say."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_python_api_example_trains_a_reward_model_and_dpo_and_evaluates(tmp_path):
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "python_api.py"), "--out", str(out), "--steps", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "PREFTUNE_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("sft", "rm", "dpo"):
        assert (out / run / "final" / "model.safetensors").exists(), run
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert 0.0 <= evaluation["policy/dpo/win_rate"] <= 1.0 and evaluation["policy/dpo/kl"] > 0.1  # DPO moved
    assert (out / "eval" / "report.html").exists()
