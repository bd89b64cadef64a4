"""Atomic, resumable checkpoints: checkpoints/step-N/ holds model, optimizer, scheduler and RNG.

Nothing here unpickles arbitrary objects: weights are safetensors, the optimizer state is
read with torch.load(weights_only=True), everything else is JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from preftune.engine.sharding import local_tensor, sharded_optimizer_state
from preftune.errors import UserFault, file_system_fault

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first (temp dirs of interrupted saves are ignored)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep: int,
    sharded: bool = False,
) -> Path:
    """Write checkpoints/step-N atomically (temp dir + rename) and prune old ones.

    Call on the main process only; what every rank wrote first under `rank_file_prefix(step)` (its RNG
    state, `save_rng`; with `sharded`, its shard of the weights and optimizer state, which then are not
    written whole here) moves in.
    """
    root.mkdir(parents=True, exist_ok=True)
    prefix = rank_file_prefix(step)
    for stale in root.glob(".step-*"):  # left by a save that was killed half-way
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".rank-step-*"):
        if not stale.name.startswith(prefix):
            stale.unlink()
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=root))
    try:
        if not sharded:
            save_weights(tmp, "", model, optimizer)
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        for name in os.listdir(root):  # RNG files written by every rank before this call
            if name.startswith(prefix):
                shutil.move(str(root / name), tmp / name[len(prefix) :])
    except BaseException:
        # a full disk, Ctrl-C, ...: free the space at once; the earlier checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        for name in os.listdir(root):
            if name.startswith(prefix):
                (root / name).unlink()
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for _, old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    return final


def save_weights(folder: Path, prefix: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The trainable weights (`{prefix}model.safetensors`) and the optimizer state (`{prefix}optimizer.pt`,
    plain tensors: read back with weights_only=True) into `folder`. Under FSDP, each process writes its own
    shard of both (`prefix` names the process; the DTensors' local parts are saved)."""
    save_file(_trainable_state(model), str(folder / f"{prefix}model.safetensors"))
    state = optimizer.state_dict()
    local = {
        "state": {i: {k: local_tensor(v) for k, v in s.items()} for i, s in state["state"].items()},
        "param_groups": state["param_groups"],
    }
    # through an open file: torch.save to a path reports a full disk without the OSError behind it
    with open(folder / f"{prefix}optimizer.pt", "wb") as file:
        torch.save(local, file)


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: with LoRA the adapters, not the frozen base (a copy of it
    would cost the whole model's size in every checkpoint); under FSDP this process's shards."""
    return {
        name: local_tensor(p.detach()).contiguous() for name, p in model.named_parameters() if p.requires_grad
    }


def rank_file_prefix(step: int) -> str:
    """Name prefix of the files each rank writes into checkpoints/ for step N, before the main process
    moves them into step-N (without the prefix)."""
    return f".rank-step-{step}."


def save_rng(root: Path, step: int, rank: int) -> None:
    """Each rank's RNG state, moved into step-N by the main process's save_checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())  # (devices, state)
    save_file(tensors, str(root / f"{rank_file_prefix(step)}rng-{rank}.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[1].tolist(), *np_state[2:]],
    }
    (root / f"{rank_file_prefix(step)}rng-{rank}.json").write_text(json.dumps(state))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    num_shards: int | None = None,
) -> dict[str, Any]:
    """Restore everything saved by save_checkpoint/save_rng; returns trainer_state.json. `num_shards`: the
    number of processes when the model is sharded (FSDP), whose checkpoints hold one shard per process.

    Raises UserFault when the weights or the optimizer state cannot be read (a damaged file)."""
    state = json.loads((path / "trainer_state.json").read_text())
    _check_shards(path, state.get("shards"), num_shards)
    try:
        if num_shards:  # this process's shard, written by save_weights
            saved = load_file(str(path / f"shard-{rank}.model.safetensors"))
            optimizer_state = torch.load(path / f"shard-{rank}.optimizer.pt", weights_only=True)
            optimizer_state = sharded_optimizer_state(optimizer_state, optimizer)
        else:
            saved = load_file(str(path / "model.safetensors"))
            optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    except (SafetensorError, RuntimeError) as error:
        # torch reports a damaged optimizer.pt as "PytorchStreamReader failed reading zip archive: ..."
        damaged = isinstance(error, SafetensorError) or "PytorchStreamReader" in str(error)
        if not damaged or file_system_fault(error) is not None:
            raise  # not a damaged file (an OS error is worded by preftune.errors)
        raise UserFault(
            f"--resume: checkpoint {path} is damaged ({type(error).__name__}: {error}). Delete that folder "
            f"to resume from the checkpoint before it (in {path.parent}), or start over with "
            "--overwrite_output_dir true."
        ) from error
    _copy_weights(path, saved, model)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    _load_rng(path, rank)
    return state


def _check_shards(path: Path, saved: int | None, now: int | None) -> None:
    """A sharded checkpoint resumes only under the same sharding (one shard per process)."""
    if saved == now:
        return
    if saved is None:
        raise ValueError(
            f"--resume: checkpoint {path} was saved without FSDP, and this run is sharded over {now} processes: "
            "resume it the way the interrupted run was launched (without FSDP)."
        )
    launch = f"under the same FSDP launch with --num_processes {saved}"
    raise ValueError(
        f"--resume: checkpoint {path} holds the shards of {saved} FSDP processes, and this run "
        f"{'is not sharded' if now is None else f'has {now}'}: resume it {launch}."
    )


def _copy_weights(path: Path, saved: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The saved trainable weights (whole, or this process's shards) into `model`."""
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    if set(saved) != trainable:
        missing, unexpected = sorted(trainable - set(saved)), sorted(set(saved) - trainable)
        raise ValueError(
            f"Checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}). "
            "Resume with the same --model and LoRA settings as the interrupted run."
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            local_tensor(params[name]).copy_(tensor)


def _load_rng(path: Path, rank: int) -> None:
    rng_file = path / f"rng-{rank}.safetensors"
    if not rng_file.exists():
        logger.warning(
            "%s has no RNG state for process %d (was it saved with fewer processes?); random streams "
            "will differ from the interrupted run.",
            path,
            rank,
        )
    else:
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        state = json.loads((path / f"rng-{rank}.json").read_text())
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np.random.set_state(("MT19937", np.array(state["numpy"][0], dtype=np.uint32), *state["numpy"][1:]))
