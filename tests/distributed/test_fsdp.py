"""FSDP2 through accelerate (2 CPU processes over gloo): the same run as one process, sharded checkpoints
that resume exactly, a gathered final/ folder that plain transformers loads, and clear refusals."""

import shutil

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from preftune.engine import read_metrics
from tests.distributed.launch import launch, one_process

FSDP2 = ["--use_fsdp", "--fsdp_version", "2", "--num_processes", "2"]


def _args(command: str, base: str, world: dict, out, accumulation: int, *extra: str) -> list[str]:
    data = "sft" if command == "sft" else "pairs"
    held_out = ["--eval_dataset", str(world["sft" if command == "sft" else "eval_pairs"])]
    held_out += ["--eval_dataset_split", "train[:30]"]
    return [
        command, "--model", base, "--dataset", str(world[data]), "--output_dir", str(out), *held_out,
        "--max_steps", "4", "--logging_steps", "1", "--learning_rate", "3e-3", "--max_length", "96",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", str(accumulation),
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


METRICS = {
    "sft": ("loss", "train/grad_norm", "train/num_tokens", "eval/loss"),
    "rm": ("loss", "rewards/accuracies", "train/grad_norm", "eval/loss", "eval/rewards/margins"),
    "dpo": ("loss", "rewards/margins", "logps/chosen", "train/grad_norm", "eval/loss", "eval/kl"),
    "kto": ("loss", "kl/reference_point", "train/grad_norm", "eval/loss", "eval/kl/reference_point"),
}


def _same_runs(command: str, one, two) -> None:
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for key in METRICS[command]:
        assert [r.get(key) for r in b] == pytest.approx([r.get(key) for r in a], rel=1e-5, abs=1e-6), key


def _same_weights(one, two, rel: float = 1e-5) -> None:
    """The same final weights, tensor by tensor, to `rel` of each tensor's norm (not element by element:
    where a gradient is ~0, Adam's update m / sqrt(v) turns summation-order noise into a difference of
    up to the learning rate, and gloo's reduction order varies from run to run)."""
    a, b = (
        load_file(str(one / "final" / "model.safetensors")),
        load_file(str(two / "final" / "model.safetensors")),
    )
    assert sorted(a) == sorted(b)  # the gathered folder names its weights as an unsharded save does
    for name in a:
        assert (b[name] - a[name]).norm() <= rel * a[name].norm(), name


@pytest.mark.distributed
@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto"])
def test_fsdp2_matches_one_process_and_resumes_from_its_shards(command, synth_world, tiny_base, tmp_path):
    runs = tmp_path / command
    extra = ["--num_heads", "2"] if command == "rm" else []
    one_process(_args(command, tiny_base, synth_world, runs / "one", 2, *extra))
    if command == "dpo":  # activation checkpointing under FSDP2 changes nothing either
        extra += ["--gradient_checkpointing", "true"]
    sharded = _args(command, tiny_base, synth_world, runs / "two", 1, "--save_steps", "2", *extra)
    result = launch(FSDP2, sharded)
    assert result.returncode == 0, result.stderr[-3000:]
    _same_runs(command, runs / "one", runs / "two")
    _same_weights(runs / "one", runs / "two")
    auto = AutoModelForSequenceClassification if command == "rm" else AutoModelForCausalLM
    assert auto.from_pretrained(runs / "two" / "final").num_parameters() > 0  # plain transformers loads it

    # each process saved its own shard, not the whole model
    step = runs / "two" / "checkpoints" / "step-2"
    shards = [load_file(str(step / f"shard-{rank}.model.safetensors")) for rank in (0, 1)]
    assert not (step / "model.safetensors").exists() and (step / "shard-1.optimizer.pt").exists()
    whole = load_file(str(runs / "one" / "final" / "model.safetensors"))
    assert sum(t.numel() for t in shards[0].values()) < sum(t.numel() for t in whole.values())

    # as if the run had died after step 2: resume from the shards, under the same launch
    shutil.rmtree(runs / "two" / "checkpoints" / "step-4")
    shutil.rmtree(runs / "two" / "final")
    (runs / "two" / "summary.json").unlink()
    resumed = launch(FSDP2, [*sharded, "--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_runs(command, runs / "one", runs / "two")
    _same_weights(runs / "one", runs / "two")

    if command == "sft":
        # one process under FSDP2 (a smoke test of the sharded code paths) is the same run too
        alone = launch(["--use_fsdp", "--fsdp_version", "2", "--num_processes", "1"],
                       _args(command, tiny_base, synth_world, runs / "alone", 2))  # fmt: skip
        assert alone.returncode == 0, alone.stderr[-3000:]
        _same_runs(command, runs / "one", runs / "alone")
        # a sharded checkpoint does not resume in another layout
        unsharded = launch(["--multi_gpu", "--num_processes", "2"], [*sharded, "--resume", "true"])
        assert unsharded.returncode != 0
        assert "holds the shards of 2 FSDP processes, and this run is not sharded" in unsharded.stderr


RL_METRICS = ("loss", "reward/raw", "train/grad_norm", "eval/reward", "pairs/count")
# a KL is a difference of two sums of float32 log-probs: the order of the sums moves it by ~1e-5 nats
RL_KL = ("kl/mean", "eval/kl")


@pytest.mark.distributed
@pytest.mark.parametrize("command", ["ppo", "grpo", "online-dpo"])
def test_fsdp2_rl_matches_one_process_and_resumes(command, synth_world, tiny_base, random_rm, tmp_path):
    """Rollouts, the judge's statistics and the held-out evaluation sample with the weights gathered; the
    updates (PPO: policy and value model) run sharded: the run of 1 process, and a resume from the shards.
    Online DPO draws its pairs from the same rollouts and trains on them like DPO."""

    def args(out, batch, *extra):
        return [
            command, "--model", tiny_base, "--dataset", str(synth_world["prompts"]),
            "--judge", f"rm:{random_rm}", "--eval_dataset", str(synth_world["eval_prompts"]),
            "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3",
            "--per_device_train_batch_size", str(batch), "--max_new_tokens", "8", "--max_length", "64",
            "--reward_norm_samples", "16", "--disable_tqdm", "true", *extra,
        ]  # fmt: skip

    one_process(args(tmp_path / "one", 8))
    sharded = args(tmp_path / "two", 4, "--save_steps", "1")
    result = launch(FSDP2, sharded)
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = read_metrics(tmp_path / "two" / "metrics.jsonl")
    expected = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert len(uninterrupted) == len(expected) == 2
    keys = [key for key in (*RL_METRICS, *RL_KL) if key in expected[-1]]
    assert len(keys) >= 5, keys
    for key in keys:
        got, want = [r.get(key) for r in uninterrupted], [r.get(key) for r in expected]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4 if key in RL_KL else 1e-6), key
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "step-2")  # as if it had died after step 1
    shutil.rmtree(tmp_path / "two" / "final")
    resumed = launch(FSDP2, [*sharded, "--resume", "true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = read_metrics(tmp_path / "two" / "metrics.jsonl")
    for key in keys:
        got, want = [r.get(key) for r in again], [r.get(key) for r in uninterrupted]
        assert got == pytest.approx(want, rel=1e-5), key  # gloo's reduction order varies between runs
    _same_weights(tmp_path / "one", tmp_path / "two", rel=1e-4)


@pytest.mark.distributed
def test_lora_under_fsdp2_is_refused(synth_world, tiny_base, tmp_path):
    """A partly frozen model stops before training, saying what to use instead."""
    lora = launch(FSDP2, _args("dpo", tiny_base, synth_world, tmp_path / "lora", 1, "--use_peft", "true"))
    assert lora.returncode != 0 and "FSDP with a partly frozen model (LoRA, --use_peft)" in lora.stderr
    assert "train LoRA with DDP" in lora.stderr and not (tmp_path / "lora" / "metrics.jsonl").exists()
