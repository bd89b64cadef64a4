"""Engine pieces that need no model: the data stream, the metrics log and checkpoint discovery."""

import json

import pytest

from preftune.engine.checkpoint import list_checkpoints
from preftune.engine.loop import index_stream
from preftune.engine.metrics import MetricsLog, read_metrics


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def test_index_stream_is_a_permutation_per_epoch_and_resumes_anywhere():
    full = _take(index_stream(7, seed=1, start=0), 21)
    for epoch in range(3):
        assert sorted(full[epoch * 7 : (epoch + 1) * 7]) == list(range(7))
    assert full[:7] != full[7:14], "each epoch is shuffled anew"
    for start in (0, 5, 7, 13):
        assert _take(index_stream(7, seed=1, start=start), 21 - start) == full[start:]
    assert _take(index_stream(7, seed=2, start=0), 7) != full[:7]


def test_metrics_window_means_and_state_round_trip(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", enabled=True)
    log.accumulate({"train/loss": 1.0})
    log.accumulate({"train/loss": 3.0})
    restored = MetricsLog(tmp_path / "m.jsonl", enabled=True)
    restored.load_state_dict(json.loads(json.dumps(log.state_dict())))
    restored.accumulate({"train/loss": 5.0})
    record = restored.flush(3)
    assert record == {"step": 3, "train/loss": 3.0, "loss": 3.0}
    assert read_metrics(tmp_path / "m.jsonl") == [record]


def test_truncate_after_drops_later_and_half_written_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 3}\n{"step": 4, "lo')
    MetricsLog(path, enabled=True).truncate_after(2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_list_checkpoints_ignores_incomplete_saves(tmp_path):
    for name in ("step-5", "step-10", ".step-15.tmp", "step-20"):
        (tmp_path / name).mkdir()
    for name in ("step-5", "step-10"):
        (tmp_path / name / "trainer_state.json").write_text("{}")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5, 10]


def test_a_tracker_that_is_not_installed_is_refused_not_dropped(tmp_path, monkeypatch):
    from accelerate.utils import LoggerType

    import preftune.engine.loop as loop_module
    from preftune.engine import TrainConfig, build_accelerator

    monkeypatch.setattr(loop_module, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    config = TrainConfig(output_dir=str(tmp_path), report_to=["tensorboard", "wandb"])
    with pytest.raises(ValueError, match=r"--report_to wandb: not installed here .*pip install wandb"):
        build_accelerator(config)
    assert build_accelerator(TrainConfig(output_dir=str(tmp_path), report_to=["tensorboard"])).log_with


def test_the_process_count_an_accelerate_launch_command_asks_for():
    from preftune.engine.loop import launcher_num_processes

    python, accelerate = "/usr/bin/python3.11", "/usr/local/bin/accelerate"
    assert (
        launcher_num_processes([python, accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "x"])
        == 2
    )
    assert launcher_num_processes([accelerate, "launch", "--num_processes=4", "train.py"]) == 4
    module = [python, "-m", "accelerate.commands.launch"]
    assert launcher_num_processes([*module, "--cpu", "--num_processes", "2", "-m", "x"]) == 2
    assert launcher_num_processes([python, accelerate, "launch", "train.py"]) is None  # no explicit count
    assert (
        launcher_num_processes([python, "-m", "preftune.cli", "--num_processes", "2"]) is None
    )  # not a launch
    assert launcher_num_processes(["/usr/bin/torchrun", "--nproc_per_node", "2", "train.py"]) is None
    assert launcher_num_processes([]) is None


def test_bf16_is_the_default_where_cuda_supports_it_and_float32_elsewhere():
    from preftune.engine.config import TrainConfig
    from preftune.engine.loop import mixed_precision

    assert TrainConfig().bf16 is None  # unset: the hardware decides
    assert mixed_precision(TrainConfig(), cuda_bf16=True) == "bf16"
    assert mixed_precision(TrainConfig(), cuda_bf16=False) == "no"  # CPU, or a GPU without bf16: float32
    assert mixed_precision(TrainConfig(bf16=False), cuda_bf16=True) == "no"  # asked for: honoured
    assert mixed_precision(TrainConfig(bf16=True), cuda_bf16=False) == "bf16"
    assert mixed_precision(TrainConfig(bf16=None, fp16=False)) in ("bf16", "no")


def test_a_checkpoint_resumes_only_in_the_layout_it_was_saved_in(tmp_path):
    from preftune.engine.checkpoint import _check_shards

    _check_shards(tmp_path, None, None)  # whole weights, unsharded run
    _check_shards(tmp_path, 2, 2)  # two shards, two FSDP processes
    with pytest.raises(
        ValueError, match=r"shards of 2 FSDP processes, and this run has 4: .*--num_processes 2"
    ):
        _check_shards(tmp_path, 2, 4)
    with pytest.raises(ValueError, match=r"shards of 2 FSDP processes, and this run is not sharded"):
        _check_shards(tmp_path, 2, None)
    with pytest.raises(ValueError, match=r"saved without FSDP, and this run is sharded over 2 processes"):
        _check_shards(tmp_path, None, 2)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ACCELERATE_USE_DEEPSPEED": "true"},
            "asks for DeepSpeed, which preftune's engine does not support yet",
        ),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP version 1; preftune shards with FSDP2 only"),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
            "asks for FSDP, but this process has no process group to shard over",
        ),
    ],
)
def test_sharding_asked_of_a_process_that_cannot_honour_it_is_refused(tmp_path, monkeypatch, env, message):
    """What the launcher asks for and this process would not do is an error, not an unsharded run."""
    from preftune.engine import TrainConfig, build_accelerator

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        build_accelerator(TrainConfig(output_dir=str(tmp_path)))


def test_fused_adamw_is_the_default_on_cuda_only_and_takes_the_same_steps():
    import torch

    from preftune.engine.config import TrainConfig
    from preftune.engine.loop import _build_optimizer, optimizer_name

    assert optimizer_name(TrainConfig(), cuda=True) == "adamw_torch_fused"
    assert optimizer_name(TrainConfig(), cuda=False) == "adamw_torch"
    assert optimizer_name(TrainConfig(optim="adamw_torch"), cuda=True) == "adamw_torch"
    assert optimizer_name(TrainConfig(optim="adamw_torch_fused"), cuda=False) == "adamw_torch_fused"
    weights = {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))
        config = TrainConfig(optim=optim, learning_rate=1e-2, weight_decay=0.1)
        optimizer, _ = _build_optimizer(model, config, total_steps=3)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert optimizer.defaults["fused"] is (True if optim == "adamw_torch_fused" else None)
        for step in range(3):
            model(torch.randn(4, 6, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        weights[optim] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert (weights[optim] - start).abs().max() > 1e-3  # the steps moved the weights
    torch.testing.assert_close(weights["adamw_torch_fused"], weights["adamw_torch"], rtol=1e-5, atol=1e-6)


def test_fsdp_asks_the_trainer_and_the_model_to_be_shardable():
    import torch

    from preftune.engine.loop import _check_shardable

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    _check_shardable(model, shardable=True)
    with pytest.raises(
        ValueError, match=r"does not declare that it runs sharded \(Engine\(\.\.\., shardable=True\)"
    ):
        _check_shardable(model, shardable=False)
    model[0].requires_grad_(False)  # as LoRA freezes the base
    with pytest.raises(ValueError, match=r"partly frozen model \(LoRA, --use_peft\).*train LoRA with DDP"):
        _check_shardable(model, shardable=True)
