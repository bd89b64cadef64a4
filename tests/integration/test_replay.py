"""`preftune CMD --config RUN/config.yaml --output_dir NEW` reproduces RUN, for every command that saves
a config.yaml, also when RUN was itself resumed: the saved config carries no run-control flag
(`resume`, `overwrite_output_dir`) that would replay (issue 19)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from preftune.cli import main
from preftune.engine import read_metrics
from preftune.engine.config import RUN_CONTROL


def _trainer_args(command: str, tiny_base: str, synth_world, rm: str) -> list[str]:
    data = {"sft": "sft", "rm": "pairs", "dpo": "pairs", "kto": "pairs"}.get(command, "prompts")
    args = [
        command, "--model", tiny_base, "--dataset", str(synth_world[data]), "--max_length", "64",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--max_steps", "3", "--save_steps", "1", "--disable_tqdm", "true",
    ]  # fmt: skip
    if data == "prompts":  # the RL commands sample and score
        args += ["--judge", f"rm:{rm}", "--max_new_tokens", "6"]
    if command in ("ppo", "rloo", "grpo"):
        args += ["--reward_normalization", "none"]
    if command in ("rloo", "grpo"):
        args += ["--num_generations", "4"]
    return args


def _same_records(expected: list[dict], got: list[dict]) -> None:
    """Equal within float tolerance, except timings."""
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for want, have in zip(expected, got, strict=True):
        keys = {k for k in want if "second" not in k}
        assert keys == {k for k in have if "second" not in k}, want["step"]
        for key in keys:
            if isinstance(want[key], float) and math.isnan(want[key]):
                assert math.isnan(have[key]), (want["step"], key)
            else:
                assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)


def _saved_keys(run: Path) -> set[str]:
    return set(yaml.safe_load((run / "config.yaml").read_text()))


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto", "ppo", "rloo", "grpo", "online-dpo"])
def test_a_resumed_runs_config_replays_it_in_a_new_output_dir(
    synth_world, tiny_base, random_rm, tmp_path, command
):
    args = _trainer_args(command, tiny_base, synth_world, random_rm)
    run = tmp_path / "run"
    assert main([*args, "--output_dir", str(run)]) == 0
    # stopped after step 2 had been saved, then resumed
    for leftover in (run / "final", run / "summary.json", run / "checkpoints" / "step-3"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    assert main([*args, "--output_dir", str(run), "--resume", "true"]) == 0
    assert not _saved_keys(run) & set(RUN_CONTROL)

    new = tmp_path / "new"
    assert main([command, "--config", str(run / "config.yaml"), "--output_dir", str(new)]) == 0
    _same_records(read_metrics(run / "metrics.jsonl"), read_metrics(new / "metrics.jsonl"))
    assert _saved_keys(new) == _saved_keys(run)


def test_a_started_over_runs_config_does_not_overwrite_the_new_output_dir(
    synth_world, tiny_base, tmp_path, capsys
):
    """A saved `overwrite_output_dir: true` would delete an earlier run in NEW without asking."""
    args = _trainer_args("sft", tiny_base, synth_world, "")
    run, new = tmp_path / "run", tmp_path / "new"
    assert main([*args, "--output_dir", str(new)]) == 0
    assert main([*args, "--output_dir", str(run), "--overwrite_output_dir", "true"]) == 0
    assert main(["sft", "--config", str(run / "config.yaml"), "--output_dir", str(new)]) == 2
    assert f"{new} already holds an earlier run" in capsys.readouterr().err


def test_a_best_of_n_config_replays_it(synth_world, tiny_base, random_rm, tmp_path):
    args = [
        "bon", "--model", tiny_base, "--dataset", str(synth_world["eval_prompts"]),
        "--judge", f"rm:{random_rm}", "--n", "4", "--max_new_tokens", "6", "--max_length", "64",
        "--max_prompts", "4", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "run")]) == 0
    assert (
        main(
            ["bon", "--config", str(tmp_path / "run" / "config.yaml"), "--output_dir", str(tmp_path / "new")]
        )
        == 0
    )
    for name in ("bon.json", "samples.jsonl", "pairs.jsonl"):
        assert (tmp_path / "new" / name).read_text() == (tmp_path / "run" / name).read_text(), name


@pytest.mark.slow
def test_a_loop_config_replays_it(synth_world, tiny_base, random_rm, tmp_path):
    args = [
        "loop", "--model", tiny_base, "--dataset", str(synth_world["prompts"]),
        "--eval_dataset", str(synth_world["eval_prompts"]), "--judge", f"rm:{random_rm}", "--rounds", "1",
        "--prompts_per_round", "8", "--num_generations", "2", "--eval_samples_per_prompt", "1",
        "--max_new_tokens", "6", "--max_length", "64", "--per_device_train_batch_size", "2",
        "--num_train_epochs", "1", "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    (run / "old").write_text("an earlier loop's leftovers")
    assert main([*args, "--output_dir", str(run), "--overwrite_output_dir", "true"]) == 0
    assert not _saved_keys(run) & set(RUN_CONTROL)
    assert main(["loop", "--config", str(run / "config.yaml"), "--output_dir", str(tmp_path / "new")]) == 0
    rounds = [json.loads((p / "summary.json").read_text())["rounds"] for p in (run, tmp_path / "new")]
    _same_records(*[[{"step": r["round"], **_numbers(r)} for r in summary] for summary in rounds])
    _same_records(*[read_metrics(p / "round-1" / "train" / "metrics.jsonl") for p in (run, tmp_path / "new")])


@pytest.mark.slow
def test_a_cai_config_replays_it(sft_model, synth_world, tmp_path):
    args = [
        "cai", "--model", sft_model, "--dataset", str(synth_world["prompts"]),
        "--eval_dataset", str(synth_world["eval_prompts"]), "--num_prompts", "16", "--num_eval_prompts", "8",
        "--max_new_tokens", "8", "--max_length", "64", "--sft_epochs", "1", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--preference", "revision", "--disable_tqdm", "true",
    ]  # fmt: skip
    run = tmp_path / "run"
    assert main([*args, "--output_dir", str(run), "--overwrite_output_dir", "true"]) == 0
    assert not _saved_keys(run) & set(RUN_CONTROL)
    assert main(["cai", "--config", str(run / "config.yaml"), "--output_dir", str(tmp_path / "new")]) == 0
    summaries = [json.loads((p / "summary.json").read_text()) for p in (run, tmp_path / "new")]
    for stage in ("before", "after_sft", "after"):
        _same_records(*[[{"step": 0, **_numbers(s[stage])}] for s in summaries])
    for part in ("sft", "dpo"):
        _same_records(*[read_metrics(p / part / "metrics.jsonl") for p in (run, tmp_path / "new")])


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
