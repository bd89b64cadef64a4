"""FSDP2 through accelerate: what the engine needs to train, evaluate, checkpoint and save a sharded model.

accelerate shards the model (`fully_shard` on each decoder layer, then the whole) when it is launched
with an FSDP config (`accelerate launch --use_fsdp --fsdp_version 2 ...` or a config file). Under FSDP2
every parameter is a DTensor holding this process's shard, and a forward pass gathers the weights it
needs from the other processes: a collective, so every process must run the same number of forwards.

- `gathered(model)`: the whole weights on every process for a while (evaluation and RL sampling, where
  processes run different numbers of forward passes; TR-DPO's reference update); no collective inside.
- `local_tensor` / `sharded_optimizer_state`: each process's shard of the trainable weights and of the
  optimizer state, as checkpoint.save_weights writes them and as they load back; resuming needs the same
  processes.
- `full_state_dict`: the whole weights gathered on the main process, for the final safetensors folder.

accelerate 1.16 turns FSDP on only for GPU-like devices; with CPU processes (gloo) it runs plain DDP and
ignores the config. `enable_fsdp_on_cpu` sets the same state accelerate sets on a GPU, so its own FSDP2
code prepares the model there too (what the tests of tests/distributed run).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (accelerate launch sets ACCELERATE_USE_FSDP from its config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def deepspeed_requested() -> bool:
    """Whether the launcher asked for DeepSpeed (ACCELERATE_USE_DEEPSPEED, from its config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def fsdp_version() -> int:
    """The FSDP version the launcher asked for (accelerate's default is 1)."""
    value = os.environ.get("FSDP_VERSION", "1")
    return int(value) if value.isdigit() else 0


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def enable_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Turn accelerate's FSDP2 on for CPU processes joined over gloo (one or several, started by
    `accelerate launch`), as accelerate does itself on GPUs: it sets these fields of its shared state."""
    assert accelerator.distributed_type == DistributedType.MULTI_CPU, accelerator.distributed_type
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # the process state too: each later AcceleratorState() (accelerate makes some in `prepare`) copies its
    # distributed type over the accelerator's. Its collectives (gather, reduce) work the same under FSDP.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def warn_about_checkpoint_format() -> None:
    """accelerate's `fsdp_state_dict_type` chooses the format of its own save_state; preftune writes its
    checkpoints itself, one shard per process, and gathers only final/: say so once if FULL was asked."""
    if os.environ.get("FSDP_STATE_DICT_TYPE", "").upper() == "FULL_STATE_DICT":
        logger.warning(
            "fsdp_state_dict_type FULL_STATE_DICT does not apply to preftune's checkpoints: they hold one shard "
            "per process (resume under the same launch); final/ is always the whole model, gathered."
        )


def wrap_decoder_layers(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Shard each decoder layer as its own unit (gathered one at a time in forward and backward) unless
    the launcher chose a wrapping. accelerate finds the layer class from the `_no_split_modules` of the
    model it prepares, but preftune prepares a wrapper (ResponseLogps, PooledScorer): name the class of
    the transformers model inside."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    if plugin.auto_wrap_policy is None:
        plugin.auto_wrap_policy = transformer_auto_wrap_policy
    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy or plugin.transformer_cls_names_to_wrap:
        return
    present = {type(module).__name__ for module in model.modules()}
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]
            return


def settle_root(model: torch.nn.Module) -> None:
    """Make the prepared `model` the root of its FSDP2 units now. FSDP2 settles it at the first forward
    pass, taking the module run first for the root; preftune's first pass may be a submodule's (an RL
    run samples from the policy before its first update), which would then break the model's own
    forward. torch has no public call for this; the root's lazy initialisation is what its forward runs."""
    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Every FSDP2 unit of `model` holds its whole weights (one all-gather each, on entry) and keeps them
    through forward passes, which then make no collective: processes may run different numbers of
    them. Resharded on exit. A no-op for a model that is not sharded. Costs the memory of the whole
    weights, as DDP does; for evaluation, sampling and weight copies, not for training (no backward)."""
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not units or _GATHERED.get(id(model)):  # not sharded, or gathered already (a nested call)
        yield
        return
    # each unit's own setting, restored on exit (accelerate keeps the root and the LM head gathered after
    # forward, the decoder layers not); torch sets it publicly but reads it back only from private fields
    states = [unit._get_fsdp_state() for unit in units]
    before = [
        (s._auto_reshard_after_forward, [g.post_forward_mesh_info for g in s._fsdp_param_groups])
        for s in states
    ]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    _GATHERED[id(model)] = True
    try:
        yield
    finally:
        del _GATHERED[id(model)]
        for unit, state, (auto, infos) in zip(units, states, before, strict=True):
            unit.reshard()
            state._auto_reshard_after_forward = auto
            for group, info in zip(state._fsdp_param_groups, infos, strict=True):
                group.post_forward_mesh_info = info


_GATHERED: dict[int, bool] = {}
"""The models inside `gathered` now (by id)."""


def local_tensor(value: Any) -> Any:
    """This process's shard of a DTensor; anything else as it is."""
    return value.to_local() if isinstance(value, DTensor) else value


def sharded_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state saved by `checkpoint.save_weights` with its per-parameter tensors (Adam's moments) made
    DTensors again, sharded as their parameters are in `optimizer`, so that it loads into it."""
    ordered = [p for group in optimizer.param_groups for p in group["params"]]  # the state's ids
    for i, entries in state["state"].items():
        param = ordered[i]
        if not isinstance(param, DTensor):
            continue
        for key, value in entries.items():
            if value.dim() > 0 and value.shape == param.to_local().shape:  # not Adam's scalar step
                entries[key] = DTensor.from_local(
                    value, param.device_mesh, param.placements, shape=param.shape, stride=param.stride()
                )
    return state


def full_state_dict(
    accelerator: Accelerator, model: torch.nn.Module, module: torch.nn.Module
) -> dict[str, torch.Tensor] | None:
    """The whole weights of `module` (a submodule of the prepared `model`, e.g. the causal LM inside
    ResponseLogps) with its own parameter names, gathered on the main process (an empty dict on the
    others). Every process must call it. None when `model` is not sharded: save `module` as it is."""
    if not is_sharded(accelerator):
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # on the main process, in CPU memory
    state = get_model_state_dict(model, options=options)
    prefix = next(name for name, sub in model.named_modules() if sub is module)
    start = f"{prefix}." if prefix else ""
    # a tied weight (the LM head on the embeddings) is gathered under each of its names: keep the first,
    # as transformers saves it
    tied = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    tied -= {name for name, _ in module.named_parameters()}
    return {
        name[len(start) :]: value
        for name, value in state.items()
        if name.startswith(start) and name[len(start) :] not in tied
    }
