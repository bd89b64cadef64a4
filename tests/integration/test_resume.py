"""kill -9 in the middle of training, then --resume: the later metrics equal an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preftune.engine import read_metrics

DETERMINISTIC = ("loss", "train/grad_norm", "train/learning_rate", "train/num_tokens", "train/epoch")


def _sft_command(base: str, dataset: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "preftune.cli", "sft",
        "--model", base, "--dataset", dataset, "--output_dir", str(out),
        "--max_steps", "40", "--save_steps", "5", "--save_total_limit", "0", "--logging_steps", "4",
        "--per_device_train_batch_size", "32", "--learning_rate", "3e-3", "--warmup_ratio", "0.1",
        "--max_length", "128", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PREFTUNE_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill9_then_resume_reproduces_the_uninterrupted_run(synth_world, tiny_base, tmp_path):
    dataset = str(synth_world["sft"])
    whole = tmp_path / "whole"
    subprocess.run(_sft_command(tiny_base, dataset, whole), check=True, env=_env(), timeout=300)

    broken = tmp_path / "broken"
    process = subprocess.Popen(_sft_command(tiny_base, dataset, broken), env=_env())
    deadline = time.time() + 240
    while not (broken / "checkpoints" / "step-15").exists():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (broken / "final").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = max(int(p.name.split("-")[1]) for p in (broken / "checkpoints").glob("step-*"))
    assert killed_at < 40

    subprocess.run(
        _sft_command(tiny_base, dataset, broken, "--resume", "true"), check=True, env=_env(), timeout=300
    )
    expected = read_metrics(whole / "metrics.jsonl")
    resumed = read_metrics(broken / "metrics.jsonl")
    # logging every 4 steps and saving every 5: the resumed run must restore the open averaging window
    # (the kill comes right after step-15 is saved, mid-window; the window state is also unit-tested)
    assert [r["step"] for r in resumed] == list(range(4, 41, 4))
    for want, got in zip(expected, resumed, strict=True):
        for key in DETERMINISTIC:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (want["step"], key)


def test_resume_without_checkpoint_says_how_to_fix(synth_world, tiny_base, tmp_path):
    result = subprocess.run(
        _sft_command(tiny_base, str(synth_world["sft"]), tmp_path / "none", "--resume", "true"),
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert (
        "no checkpoint in" in message
        and "--save_steps" in message
        and "Traceback" not in result.stderr
        and result.stdout == ""
    )
