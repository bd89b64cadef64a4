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


def test_cai_falls_back_to_revision_pairs_when_the_critiques_label_none(
    sft_model, synth_world, tmp_path, monkeypatch, caplog
):
    """Issue 16: a critic whose critiques find an issue in every sample gave no pair and stopped the run; it
    now trains on revision-over-original pairs and says so."""
    import preftune.pipelines.cai as cai

    def no_pairs(critic, policy, prompts, *args):  # what a weak critic gives: an issue in both samples
        return [], {"both_no_issue": 0, "both_issue": len(prompts), "identical": 0, "empty": 0}

    monkeypatch.setattr(cai, "critique_pairs", no_pairs)
    out = tmp_path / "fallback"
    with caplog.at_level("WARNING", logger="preftune.pipelines.cai"):
        assert main(_args(sft_model, synth_world, out, "--preference", "critique")) == 0
    summary = json.loads((out / "summary.json").read_text())
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    assert summary["preference"] == "revision (fallback)" and summary["pairs"] == len(pairs) > 0
    assert summary["pairs_left_out"]["both_issue"] == 16
    assert all(p["label_source"] == "revision" for p in pairs)
    assert "no critique pair" in caplog.text and "revision-over-original" in caplog.text


def test_cai_with_the_chat_template_asks_trains_and_evaluates_in_chat_format(
    sft_model, synth_world, tmp_path
):
    out = tmp_path / "chat"
    # --task none: the synthetic gold reward scores plain text only, so the before/after evaluation is skipped
    args = _args(
        sft_model,
        synth_world,
        out,
        "--preference",
        "revision",
        "--use_chat_template",
        "true",
        "--task",
        "none",
    )
    assert main(args) == 0
    user = {"role": "user"}
    revisions = [json.loads(line) for line in (out / "data" / "revisions.jsonl").read_text().splitlines()]
    assert revisions and all(r["prompt"][0].items() >= user.items() for r in revisions)
    assert all(r["completion"][0]["role"] == "assistant" for r in revisions)
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant" for p in pairs)
    records = [json.loads(line) for line in (out / "data" / "critiques.jsonl").read_text().splitlines()]
    assert all(isinstance(r["prompt"], str) for r in records)  # the record keeps the request's text
    assert json.loads((out / "summary.json").read_text())["pairs"] == len(pairs)
