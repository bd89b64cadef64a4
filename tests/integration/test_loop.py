"""`preftune loop` end to end on the tiny model: round folders, provenance, summary, and resumption
after the job is killed in the middle of a round."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module")
def random_rm(tiny_base, tmp_path_factory):
    """A reward model with a random head: distinct responses get distinct scores, so pairs exist."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("loop") / "rm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _args(tiny_base, synth_world, rm, out, rounds=2):
    return [
        "loop", "--model", tiny_base, "--dataset", str(synth_world["prompts"]),
        "--eval_dataset", str(synth_world["eval_prompts"]), "--judge", f"rm:{rm}", "--rounds", str(rounds),
        "--output_dir", str(out), "--prompts_per_round", "8", "--num_generations", "2", "--num_eval_prompts", "8",
        "--eval_samples_per_prompt", "1", "--max_new_tokens", "8", "--max_length", "64",
        "--per_device_train_batch_size", "1", "--num_train_epochs", "1", "--save_steps", "1",
        "--logging_steps", "1", "--learning_rate", "1e-3", "--disable_tqdm", "true",
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_LOG_LEVEL": "INFO"}


def _run(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "preftune.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, **kwargs)  # fmt: skip


def test_loop_rounds_provenance_and_resume_after_kill(tiny_base, synth_world, random_rm, tmp_path):
    full = _run(_args(tiny_base, synth_world, random_rm, tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    first = summary["rounds"][0]
    assert (
        first["kl"] == pytest.approx(0.0, abs=1e-4) and first["win_rate"] == 0.5
    )  # round 0 is the reference
    for r in summary["rounds"]:
        assert {"gold_reward", "judge_reward", "kl", "length", "win_rate"} <= set(r)
    for k in (1, 2):
        folder = tmp_path / "full" / f"round-{k}"
        provenance = json.loads((folder / "provenance.json").read_text())
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        samples = (folder / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 8 * 2 and provenance["counts"]["pairs"] == len(pairs) > 0
        assert provenance["counts"]["pairs"] + provenance["counts"]["ties"] == 8
        expected_policy = tiny_base if k == 1 else str(tmp_path / "full" / "round-1" / "train" / "final")
        assert provenance["policy"] == expected_policy
        for pair in pairs:
            assert pair["chosen_score"] > pair["rejected_score"] and pair["chosen"] != pair["rejected"]
            assert (pair["round"], pair["policy"], pair["judge"]) == (k, expected_policy, f"rm:{random_rm}")
        assert (folder / "train" / "final" / "model.safetensors").exists()
        assert (folder / "eval" / "eval.json").exists()
    report = (tmp_path / "full" / "report.md").read_text()
    assert "| 2 |" in report and "Trend:" in report
    assert (tmp_path / "full" / "report.html").exists()

    # Kill the job once round 2's DPO run has saved a checkpoint, then run the same command again.
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "preftune.cli", *_args(tiny_base, synth_world, random_rm, out)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    checkpoints = out / "round-2" / "train" / "checkpoints"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the loop finished before it could be killed mid-round"
    assert not (out / "round-2" / "round.json").exists()
    finished = (out / "round-1" / "round.json").stat().st_mtime_ns

    resumed = _run(_args(tiny_base, synth_world, random_rm, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Round 1 is finished" in resumed.stderr and "Round 2: reusing its dataset" in resumed.stderr
    assert "continuing its DPO run from its newest checkpoint" in resumed.stderr
    assert (out / "round-1" / "round.json").stat().st_mtime_ns == finished  # not redone
    again = json.loads((out / "summary.json").read_text())
    for a, b in zip(again["rounds"], summary["rounds"], strict=True):  # the same as the uninterrupted run
        for key in ("gold_reward", "judge_reward", "kl", "length", "win_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a["round"], key)

    # Other settings in the same folder are refused (only --rounds may change).
    changed = _run([*_args(tiny_base, synth_world, random_rm, out), "--beta", "0.5"])
    message = changed.stdout + changed.stderr
    assert changed.returncode != 0 and "other settings" in message and "beta: 0.3 -> 0.5" in message
