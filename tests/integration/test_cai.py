"""`preftune cai` end to end on the tiny model: data with provenance, SFT then DPO, `final/`, summary."""

import json

import pytest
from transformers import AutoModelForCausalLM

from preftune.cli import main


def _args(tiny_base, synth_world, out, *extra):
    return [
        "cai", "--model", tiny_base, "--dataset", str(synth_world["prompts"]),
        "--eval_dataset", str(synth_world["eval_prompts"]), "--output_dir", str(out), "--num_prompts", "16",
        "--num_eval_prompts", "8", "--max_new_tokens", "8", "--max_length", "64", "--sft_epochs", "1",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def test_cai_writes_data_final_policy_and_before_after(sft_model, synth_world, tmp_path):
    out = tmp_path / "cai"
    assert main(_args(sft_model, synth_world, out, "--preference", "revision")) == 0
    records = [json.loads(line) for line in (out / "data" / "critiques.jsonl").read_text().splitlines()]
    assert len(records) == 16
    for record in records:
        assert record["principle"] == "kind-words"
        assert (
            record["critique_request"] == f"Critique the reply for kindness.\nReply: {record['response']}\n"
        )
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    changed = [r for r in records if r["changed"]]
    assert len(pairs) == len(changed) > 0
    assert all(p["chosen"] != p["rejected"] and p["label_source"] == "revision" for p in pairs)
    sft_rows = (out / "data" / "revisions.jsonl").read_text().splitlines()
    assert len(sft_rows) == sum(bool(r["revision"]) for r in records)
    AutoModelForCausalLM.from_pretrained(out / "final")  # plain transformers loads the tuned policy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == len(pairs) and summary["eval_judge"] == "gold"
    for stage in ("before", "after_sft", "after"):
        assert -1.0 <= summary[stage]["gold_reward"] <= 1.0
    assert summary["before"]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert summary["after"]["kl"] > 0  # DPO moved the policy


def test_cai_with_a_model_that_cannot_revise_says_why(tiny_base, synth_world, tmp_path, capsys):
    # The random model follows no instruction: its revisions are empty, which is refused before any training.
    assert main(_args(tiny_base, synth_world, tmp_path / "none", "--preference", "critique")) == 2
    assert "Every revision is empty" in capsys.readouterr().err
