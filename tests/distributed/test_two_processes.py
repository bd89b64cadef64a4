"""2 processes (accelerate launch, gloo on CPU) with the same global batch give the same losses as 1."""

import json
import subprocess
import sys

import pytest
import torch

from preftune.engine import read_metrics
from tests.distributed.launch import ENV, free_port, launch, one_process


def _args(base: str, dataset: str, out, batch: int, accumulation: int) -> list[str]:
    return [
        "sft", "--model", base, "--dataset", dataset, "--output_dir", str(out),
        "--max_steps", "5", "--logging_steps", "1", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation),
        "--max_length", "96", "--disable_tqdm", "true", "--eval_dataset", dataset,
        "--dataset_split", "train[:90%]", "--eval_dataset_split", "train[90%:]",
    ]  # fmt: skip


def _two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """`preftune *args` in 2 processes. accelerate names its multi-process launcher --multi_gpu; on a machine
    without CUDA the engine asks for the CPU and the processes join over gloo."""
    return launch(["--multi_gpu", "--num_processes", "2"], args)


@pytest.mark.distributed
def test_two_processes_match_one_process_with_accumulation(synth_world, tiny_base, tmp_path):
    dataset = str(synth_world["sft"])
    one_process(_args(tiny_base, dataset, tmp_path / "one", 4, 2))
    result = _two_processes(_args(tiny_base, dataset, tmp_path / "two", 4, 1))
    assert result.returncode == 0, result.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 5
    assert "eval/loss" in one[-1] and "eval/loss" in two[-1]
    # evaluation is sharded over the processes, then summed
    assert two[-1]["eval/loss"] == pytest.approx(one[-1]["eval/loss"], rel=1e-5)
    for key in ("loss", "train/grad_norm", "train/num_tokens"):
        torch.testing.assert_close(
            torch.tensor([r[key] for r in two], dtype=torch.float64),
            torch.tensor([r[key] for r in one], dtype=torch.float64),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip


@pytest.mark.distributed
def test_reward_model_two_processes_match_one(synth_world, tiny_base, tmp_path):

    def args(out, batch, accumulation):
        return [
            "rm", "--model", tiny_base, "--dataset", str(synth_world["pairs"]), "--output_dir", str(out),
            "--eval_dataset", str(synth_world["eval_pairs"]), "--max_steps", "4", "--logging_steps", "1",
            "--learning_rate", "3e-3", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--num_heads", "2", "--disable_tqdm", "true",
        ]  # fmt: skip

    one_process(args(tmp_path / "one", 4, 2))
    result = _two_processes(args(tmp_path / "two", 4, 1))
    assert result.returncode == 0, result.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    for key in ("loss", "rewards/accuracies", "rewards/ensemble_std", "train/grad_norm", "train/num_tokens"):
        torch.testing.assert_close(
            torch.tensor([r[key] for r in two], dtype=torch.float64),
            torch.tensor([r[key] for r in one], dtype=torch.float64),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
    assert two[-1]["eval/rewards/accuracies"] == pytest.approx(one[-1]["eval/rewards/accuracies"], abs=1e-6)
    stats = [
        json.loads((tmp_path / run / "final" / "reward_stats.json").read_text()) for run in ("one", "two")
    ]
    assert stats[1]["count"] == stats[0]["count"] and stats[1]["mean"] == pytest.approx(
        stats[0]["mean"], rel=1e-5
    )


@pytest.mark.distributed
def test_ppo_two_processes_match_one(synth_world, tiny_base, random_rm, tmp_path):
    """Samples are keyed by their position in the global batch, advantages whitened over all
    processes and losses normalised by global token counts: the split does not change the run.
    The reward model has a random head: scores vary, so advantages do."""

    def args(out, batch):
        return [
            "ppo", "--model", tiny_base, "--dataset", str(synth_world["prompts"]), "--judge", f"rm:{random_rm}",
            "--output_dir", str(out), "--eval_dataset", str(synth_world["eval_prompts"]), "--max_steps", "2",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--per_device_train_batch_size", str(batch),
            "--max_new_tokens", "8", "--max_length", "64", "--reward_norm_samples", "16", "--ppo_epochs", "1",
            "--target_kl", "0.5", "--disable_tqdm", "true",
        ]  # fmt: skip

    one_process(args(tmp_path / "one", 8))
    result = _two_processes(args(tmp_path / "two", 4))
    assert result.returncode == 0, result.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 2
    keys = ("loss", "reward/raw", "reward/normalized", "kl/coef", "value/error", "policy/entropy",
            "train/grad_norm", "rollout/num_tokens")  # fmt: skip
    for key in keys:
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-6), key
    # The KL is a difference of two sums of float32 log-probs (8 responses x 8 tokens, a few hundred
    # nats in all): the reduction order of the all-reduced update moves it by ~1e-5 nats, which can be a
    # relative 1e-4 of a KL near 0.1 (seen on a CI machine). A different sample would move it by ~0.1.
    for key in ("kl/mean", "eval/kl"):
        assert [r.get(key) for r in two] == pytest.approx([r.get(key) for r in one], abs=1e-3), key
    for key in ("eval/reward", "eval/length"):  # held-out prompts split over the processes
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-4, abs=1e-6), key


@pytest.mark.distributed
def test_kto_two_processes_match_one(synth_world, tiny_base, tmp_path):
    """KTO's reference point is built from mismatched pairs over the whole global batch (and the whole
    held-out set), whatever the split over processes: 2 processes give 1 process's losses and z_ref."""

    def args(out, batch, accumulation):
        return [
            "kto", "--model", tiny_base, "--dataset", str(synth_world["pairs"]), "--output_dir", str(out),
            "--eval_dataset", str(synth_world["eval_pairs"]), "--eval_dataset_split", "train[:24]",
            "--max_steps", "4", "--logging_steps", "1", "--learning_rate", "2e-2", "--max_length", "96",
            "--per_device_train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation),
            "--disable_tqdm", "true",
        ]  # fmt: skip

    one_process(args(tmp_path / "one", 4, 2))
    result = _two_processes(args(tmp_path / "two", 4, 1))
    assert result.returncode == 0, result.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 4
    # z_ref = max(0, mean log-ratio): 0 until the policy has moved; the check needs steps where it is not
    assert any(r["kl/reference_point"] > 0 for r in one), [r["kl/reference_point"] for r in one]
    for key in ("loss", "kl/reference_point", "train/grad_norm", "train/num_tokens"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-5, abs=1e-7), key
    for key in ("eval/loss", "eval/kl/reference_point"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-5, abs=1e-7), key


FSDP1_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 1
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
mixed_precision: 'no'
num_machines: 1
num_processes: 2
use_cpu: true
"""


@pytest.mark.distributed
def test_launches_that_would_run_something_else_are_refused(synth_world, tiny_base, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (a halved global batch), and an FSDP1
    config on CPU runs plain DDP: both stop with what to do instead of training another run."""
    train = ["-m", "preftune.cli", *_args(tiny_base, str(synth_world["sft"]), tmp_path / "run", 4, 1)]
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    cpu = subprocess.run([*launcher, "--cpu", "--num_processes", "2", *free_port(), *train], env=ENV,
                         timeout=300, capture_output=True, text=True)  # fmt: skip
    assert cpu.returncode != 0
    assert "asked for --num_processes 2 but started 1" in cpu.stderr and "--multi_gpu" in cpu.stderr
    (tmp_path / "fsdp.yaml").write_text(FSDP1_CONFIG)
    fsdp = subprocess.run([*launcher, "--config_file", str(tmp_path / "fsdp.yaml"), *free_port(), *train],
                          env=ENV, timeout=300, capture_output=True, text=True)  # fmt: skip
    assert (
        fsdp.returncode != 0
        and "FSDP version 1; preftune shards with FSDP2 only: set `fsdp_version: 2`" in fsdp.stderr
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
