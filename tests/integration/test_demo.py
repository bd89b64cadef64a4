"""`preftune demo` with its defaults (the README's first command): SFT must clearly beat the base model."""

import json

import pytest

from preftune.cli import main


@pytest.mark.slow
def test_demo_defaults_learn_the_task(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    base, sft, corpus = summary["methods"]["base"], summary["methods"]["sft"], summary["sft_corpus"]
    for scores in (base, sft, corpus):
        low, high = scores["gold_reward_ci"]
        assert low <= scores["gold_reward"] <= high
    assert sft["gold_reward"] > base["gold_reward"] + 0.5, summary
    # SFT imitates its corpus: within a few tenths of the corpus' mean gold reward
    assert abs(sft["gold_reward"] - corpus["gold_reward"]) < 0.3, summary
    assert "gold reward" in capsys.readouterr().out
    assert "| sft |" in (out / "report.md").read_text()
    assert (out / "sft" / "final" / "model.safetensors").exists()
