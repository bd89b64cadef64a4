"""Faults met while a command runs end in one line with the fix (exit code 2), as the CLI runs them:
a disk that fills up while a checkpoint is written, a damaged checkpoint on --resume, a dead HTTP judge."""

import errno
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import preftune.engine.checkpoint as checkpoint_module
from preftune.cli import main
from preftune.engine import read_metrics
from tests.cli_errors import one_error_line

DETERMINISTIC = ("loss", "train/grad_norm", "train/learning_rate", "train/num_tokens", "train/epoch")


def _sft(tiny_base, synth_world, out, *extra) -> list[str]:
    return [
        "sft", "--model", tiny_base, "--dataset", str(synth_world["sft"]), "--output_dir", str(out),
        "--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--max_length", "64", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def _fill_the_disk_at_step_4(monkeypatch, where: str) -> None:
    """The write of checkpoint step-4 fails as a full disk makes it fail: safetensors raises its own
    error quoting the OS error, torch.save an OSError (wrapped in a RuntimeError by its zip writer)."""
    if where == "weights":
        real_save_file = checkpoint_module.save_file

        def save_file(tensors, filename, *args, **kwargs):
            if "/.step-4." in filename:
                raise SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            return real_save_file(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    else:
        real_save = torch.save

        def save(obj, file, *args, **kwargs):
            if "/.step-4." in str(getattr(file, "name", file)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(obj, file, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("where", ["weights", "optimizer"])
def test_a_full_disk_names_the_checkpoint_keeps_the_previous_one_and_resume_continues(
    synth_world, tiny_base, tmp_path, capsys, monkeypatch, where
):
    assert main(_sft(tiny_base, synth_world, tmp_path / "whole")) == 0
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fill_the_disk_at_step_4(patch, where)
        assert main(_sft(tiny_base, synth_world, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    root = out / "checkpoints"
    assert line == (
        f"error: Could not write checkpoint {root / 'step-4'} at step 4: the disk is full (No space left on "
        f"device). The previous checkpoint {root / 'step-2'} is intact: free space on that disk (or lower "
        "--save_total_limit), then run the same command with --resume true to continue from step 2."
    )
    assert sorted(p.name for p in root.iterdir()) == ["step-2"], "the failed write's temp files are removed"
    assert load_file(str(root / "step-2" / "model.safetensors"))  # intact

    assert main(_sft(tiny_base, synth_world, out, "--resume", "true")) == 0
    expected, resumed = (
        read_metrics(tmp_path / "whole" / "metrics.jsonl"),
        read_metrics(out / "metrics.jsonl"),
    )
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for want, got in zip(expected, resumed, strict=True):
        for key in DETERMINISTIC:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (want["step"], key)
    assert (out / "final" / "model.safetensors").is_file()


def test_a_full_disk_before_any_checkpoint_says_to_start_over(
    synth_world, tiny_base, tmp_path, capsys, monkeypatch
):
    def save_file(tensors, filename, *args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    assert main(_sft(tiny_base, synth_world, tmp_path / "run")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "step-2 at step 2: the disk is full" in line
    assert (
        "No earlier checkpoint was saved: free space on that disk" in line
        and "--overwrite_output_dir true" in line
    )


def test_a_full_disk_while_the_final_model_is_written_leaves_no_half_model(
    synth_world, tiny_base, tmp_path, capsys, monkeypatch
):
    from transformers import PreTrainedModel

    out = tmp_path / "run"
    with monkeypatch.context() as patch:

        def save_pretrained(self, folder, *args, **kwargs):
            (Path(folder) / "config.json").write_text("{}")  # what a cut-short save leaves behind
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        patch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
        assert main(_sft(tiny_base, synth_world, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: Could not write the final model to {out / 'final'}: the disk is full")
    assert "--resume true if the run saved checkpoints" in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert (
        main(_sft(tiny_base, synth_world, out, "--resume", "true")) == 0
    )  # the step-6 checkpoint: no training
    assert (out / "final" / "model.safetensors").is_file()


def test_a_damaged_checkpoint_on_resume_is_named_and_the_one_before_is_used(
    synth_world, tiny_base, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(_sft(tiny_base, synth_world, out)) == 0
    for name in ("final", "summary.json"):  # as if the run had been stopped after step 6 was saved
        path = out / name
        path.unlink() if path.is_file() else shutil.rmtree(path)
    weights = out / "checkpoints" / "step-6" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert main(_sft(tiny_base, synth_world, out, "--resume", "true")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--resume: checkpoint {weights.parent} is damaged (SafetensorError: " in line
    assert "Delete that folder to resume from the checkpoint before it" in line
    shutil.rmtree(weights.parent)  # as the message says
    assert main(_sft(tiny_base, synth_world, out, "--resume", "true")) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / "model.safetensors").is_file()


def test_an_http_judge_that_cannot_be_reached_is_one_line(synth_world, tiny_base, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    argv = [
        "loop", "--model", tiny_base, "--dataset", str(synth_world["prompts"]), "--judge", f"http:{url}",
        "--judge_options", '{"model": "m", "max_retries": 1, "backoff": 0}', "--eval_judge", "gold",
        "--rounds", "1", "--prompts_per_round", "4", "--num_generations", "2", "--num_eval_prompts", "4",
        "--max_new_tokens", "4", "--max_length", "64", "--output_dir", str(tmp_path / "loop"),
        "--disable_tqdm", "true",
    ]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: The HTTP judge at {url} stopped: POST {url}/chat/completions failed 2 times"
    )
    assert "Connection refused" in line and "re-running with the same cache_dir resumes from there" in line
