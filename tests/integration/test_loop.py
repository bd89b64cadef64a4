"""`preftune loop` end to end on the tiny model: round folders, provenance, summary, and resumption
after the job is killed in the middle of a round."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


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


def test_a_human_round_goes_out_as_a_file_and_comes_back_rated(tiny_base, synth_world, tmp_path):
    """--judge human: the first run writes the round's pairs to rate and stops; the simulated panel stands in
    for people and fills the file (annotators, groups, session order, which response was shown first); the
    same command then trains on the ratings, audits them in the round's folder, and evaluates."""
    from preftune.tasks import get_task
    from preftune.tasks.panel import PanelConfig, rate_pairs

    args = _args(tiny_base, synth_world, "unused", tmp_path / "loop", rounds=1)
    args[args.index("--judge") + 1] = "human"
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "loop" / "round-1"
    to_rate = [json.loads(line) for line in (folder / "to_rate.jsonl").read_text().splitlines()]
    assert to_rate and all(row["choice"] == "" and row["response_a"] != row["response_b"] for row in to_rate)
    assert "to_rate.jsonl" in first.stderr and not (folder / "train").exists()
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0]

    # people rate: the simulated panel (3 ratings per pair); 'a' is the response shown first
    panel = rate_pairs(get_task("kindness"), [row["prompt"] for row in to_rate],
                       [(row["response_a"], row["response_b"]) for row in to_rate], PanelConfig(ratings_per_pair=3))  # fmt: skip
    rated = [
        {**to_rate[rating["pair_id"]], "choice": "a" if rating["chosen"] == to_rate[rating["pair_id"]]["response_a"]
         else "b", "annotator": rating["annotator"], "annotator_group": rating["annotator_group"],
         "order": rating["order"]}
        for rating in panel
    ]  # fmt: skip
    rated[0]["choice"] = "tie"
    (folder / "ratings.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rated))
    second = _run(args)
    assert second.returncode == 0, second.stderr[-3000:]
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(rated) - 1  # the tie is counted, not trained on
    by_id = {row["pair_id"]: row for row in to_rate}
    for pair, rating in zip(pairs, rated[1:], strict=True):
        shown = by_id[pair["pair_id"]]
        first_text = shown["response_a"]
        assert pair["shown_first"] == ("chosen" if pair["chosen"] == first_text else "rejected")
        assert (pair["annotator"], pair["annotator_group"], pair["order"]) == (
            rating["annotator"], rating["annotator_group"], rating["order"])  # fmt: skip
        assert pair["judge"] == "human" and pair["round"] == 1
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["counts"]["ties"] == 1 and provenance["counts"]["ratings"] == len(rated)
    audit = json.loads((folder / "audit" / "audit.json").read_text())
    assert audit["dataset/has_annotators"] is True
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and "audit_warnings" in summary["rounds"][1]
    assert (folder / "train" / "final" / "model.safetensors").exists()


def test_a_rated_file_with_unknown_pairs_or_choices_names_the_rows(tiny_base, synth_world, tmp_path):
    args = _args(tiny_base, synth_world, "unused", tmp_path / "loop", rounds=1)
    args[args.index("--judge") + 1] = "human"
    assert _run(args).returncode == 0
    folder = tmp_path / "loop" / "round-1"
    row = json.loads((folder / "to_rate.jsonl").read_text().splitlines()[0])
    bad = [{**row, "choice": "left"}, {**row, "pair_id": "r9-p0-s0", "choice": "a"}]
    (folder / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    result = _run(args)
    assert result.returncode == 2
    assert "row 1" in result.stderr and "'left' is not a, b or tie" in result.stderr
    assert "row 2: unknown pair_id 'r9-p0-s0'" in result.stderr
    (folder / "ratings.csv").write_text("pair_id,choice\n")
    result = _run(args)
    assert result.returncode == 2 and "holds two rated files, ratings.jsonl and ratings.csv" in result.stderr
