"""The one training loop, on accelerate: what every method needs and nothing method-specific.

A trainer asks the engine for the micro-batches of each optimizer step, computes its own
losses, and hands back the gradient and its metrics; the engine owns the optimizer,
schedule, clipping, mixed precision, logging, checkpoints, resume and the NaN guard.

Data order is a stream of per-epoch permutations (seeded) cut into global batches, so the
position in the data is just the step number: resuming is exact, and process p of P
always gets the same slice of each global batch, whatever P is.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from preftune.engine.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    rank_file_prefix,
    save_checkpoint,
    save_rng,
    save_weights,
)
from preftune.engine.config import RUN_CONTROL, TrainConfig
from preftune.engine.metrics import MetricsLog
from preftune.engine.sharding import (
    deepspeed_requested,
    enable_fsdp_on_cpu,
    fsdp_requested,
    fsdp_version,
    full_state_dict,
    gathered,
    is_sharded,
    settle_root,
    warn_about_checkpoint_format,
    wrap_decoder_layers,
)
from preftune.errors import FileSystemFault, UserFault, file_system_fault
from preftune.models.loading import enable_gradient_checkpointing

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Raised when the loss or the gradient norm stops being finite."""


def mixed_precision(config: TrainConfig, cuda_bf16: bool | None = None) -> str:
    """The run's mixed precision: "bf16", "fp16" or "no". --bf16 left unset (None) means bf16 where CUDA
    supports it (`cuda_bf16`, measured when not given) and float32 elsewhere."""
    if config.fp16:
        return "fp16"
    if config.bf16 is None:
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "no"
    return "bf16" if config.bf16 else "no"


def optimizer_name(config: TrainConfig, cuda: bool | None = None) -> str:
    """The run's AdamW implementation: --optim, or when unset the fused kernel on CUDA (`cuda`, measured
    when not given) and torch's default AdamW elsewhere."""
    if config.optim is not None:
        return config.optim
    if cuda is None:
        cuda = torch.cuda.is_available()
    return "adamw_torch_fused" if cuda else "adamw_torch"


def build_accelerator(config: TrainConfig) -> Accelerator:
    """Mixed precision and trackers from the config. Accumulation is done by the engine itself.

    Without CUDA the accelerator is told it is on CPU, so several processes started by
    `accelerate launch --multi_gpu --num_processes N` (or torchrun) join over gloo.
    """
    # before accelerate, which fails in its own words (FSDP1 on CPU, DeepSpeed not installed)
    if deepspeed_requested():
        raise ValueError(DEEPSPEED_REFUSED)
    if fsdp_requested() and fsdp_version() != 2:
        raise ValueError(FSDP1_REFUSED)
    mixed = mixed_precision(config)
    trackers = [name for name in config.report_to if name != "none"]
    installed = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in trackers if name != "all" and name not in installed]
    if missing:  # accelerate would drop them with a debug message and log to the others
        raise ValueError(
            f"--report_to {', '.join(missing)}: not installed here (installed trackers: {sorted(installed) or 'none'}). "
            f"Install it (pip install {' '.join(missing)}) or leave it out of --report_to."
        )
    # accelerate keeps one AcceleratorState per process, but a pipeline runs several trainers in
    # one process (SFT, then DPO, ...) that may differ in mixed precision: start each from a
    # fresh state. The process group (PartialState) is kept. accelerate has no public reset.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed,
        log_with=cast(list[Any], trackers) or None,
        project_dir=config.output_dir or None,
    )
    if fsdp_requested() and fsdp_version() == 2 and accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp_on_cpu(accelerator)
    return check_accelerator(accelerator, config)


def close_processes() -> None:
    """End a multi-process run: every process waits for the others, then the process group goes down.

    Call it once the trainers are done with (the CLI does, after each command). Taking the group down
    while a DDP model still holds it (what `accelerator.end_training()` does) leaves its last owner to
    the model's destructor, and a process could then wait forever in gloo's teardown for a peer that
    had already exited. A no-op in a single process.
    """
    gc.collect()  # free the trainers' DDP models (they sit in reference cycles) while the group is up
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_accelerator(accelerator: Accelerator, config: TrainConfig) -> Accelerator:
    """`accelerator` when the engine can train with it: the config's mixed precision, and no sharding."""
    mixed = mixed_precision(config)
    if config.bf16 is None and str(accelerator.mixed_precision) in ("bf16", "no"):
        mixed = str(accelerator.mixed_precision)  # --bf16 unset: the accelerator given decides
    if str(accelerator.mixed_precision) != mixed:
        raise ValueError(
            f"The accelerator has mixed_precision={accelerator.mixed_precision!r} but the config asks for {mixed!r} "
            "(--bf16/--fp16): build the Accelerator with the config's precision, or set bf16/fp16 to match."
        )
    _check_sharding(accelerator)
    requested = launcher_num_processes(_parent_command())
    if requested is not None and requested > accelerator.num_processes:
        raise ValueError(
            f"accelerate launch was asked for --num_processes {requested} but started {accelerator.num_processes} "
            "(with --cpu it starts one process); the global batch would shrink without a word. On CPU, launch "
            "several processes with `accelerate launch --multi_gpu --num_processes N` (they join over gloo), "
            "or drop --num_processes."
        )
    return accelerator


DEEPSPEED_REFUSED = (
    "The accelerate config asks for DeepSpeed, which preftune's engine does not support yet. Shard with FSDP2 "
    "instead (`accelerate launch --use_fsdp --fsdp_version 2 ...`: sft, rm, dpo, kto, ppo, rloo, grpo, online-dpo), "
    "or use DDP (`accelerate launch --multi_gpu ...`) or a single process."
)
FSDP1_REFUSED = (
    "The accelerate config asks for FSDP version 1; preftune shards with FSDP2 only: set `fsdp_version: 2` in "
    "the config (or pass --fsdp_version 2 to accelerate launch)."
)


def _check_sharding(accelerator: Accelerator) -> None:
    """FSDP2 runs (engine.sharding); DeepSpeed and FSDP1 are refused, as is a launcher setting that asks for
    sharding the accelerator does not do (it would run plain DDP instead)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED or deepspeed_requested():
        raise ValueError(DEEPSPEED_REFUSED)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ValueError(FSDP1_REFUSED)
    if fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            "The accelerate config asks for FSDP, but this process has no process group to shard over (start "
            f"it with accelerate launch): accelerate would run {accelerator.distributed_type.value} instead, "
            "without sharding."
        )


def launcher_num_processes(argv: list[str]) -> int | None:
    """The --num_processes an `accelerate launch` command line asks for (None: not such a command, or no
    explicit count)."""
    names = [Path(arg).name for arg in argv[:2]]
    module = argv[1:3] == ["-m", "accelerate.commands.launch"]  # python -m accelerate.commands.launch ...
    if not module and ("accelerate" not in names or "launch" not in argv):
        return None
    for i, arg in enumerate(argv):
        if arg.startswith("--num_processes="):
            value = arg.split("=", 1)[1]
        elif arg in ("--num_processes", "--num-processes") and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return int(value) if value.isdigit() else None
    return None


def _parent_command() -> list[str]:
    """The parent process's command line (Linux /proc; empty elsewhere or when it cannot be read)."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def index_stream(num_items: int, seed: int, start: int) -> Iterator[int]:
    """Item indices from position `start` of the concatenated per-epoch seeded permutations."""
    epoch, offset = divmod(start, num_items)
    while True:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_items, generator=generator).tolist()
        yield from order[offset:]
        epoch, offset = epoch + 1, 0


class Engine:
    """Owns the optimizer step, schedule, logging, checkpoints and resume for one run."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        num_items: int,
        run_config: dict[str, Any],
        accelerator: Accelerator | None = None,
        items_per_step: int | None = None,
        shardable: bool = False,
    ) -> None:
        """`items_per_step`: items (examples, pairs, prompts) of the global batch of one step; default
        per-device batch x accumulation x processes. RL trainers take a batch of prompts per step
        and make several optimizer updates from it (see `update` and `end_step`). `shardable`: the
        trainer runs under FSDP2 (its evaluation in `gathered`, its final save from `full_state_dict`)."""
        if not config.output_dir:
            raise ValueError("output_dir is empty: pass --output_dir DIR.")
        self.config = config
        self.accelerator = accelerator or build_accelerator(config)
        self.sharded = is_sharded(self.accelerator)
        if self.sharded:
            _check_shardable(model, shardable)
            warn_about_checkpoint_format()
        self.out = Path(config.output_dir)
        self.checkpoint_root = self.out / "checkpoints"
        set_seed(config.seed)
        per_process = config.per_device_train_batch_size * config.gradient_accumulation_steps
        self.global_batch_size = items_per_step or per_process * self.accelerator.num_processes
        if self.global_batch_size % self.accelerator.num_processes:
            raise ValueError(
                f"The global batch of {self.global_batch_size} items per step does not split evenly over "
                f"{self.accelerator.num_processes} processes; make it a multiple of the number of processes."
            )
        if num_items < 1:
            raise ValueError("The training set has no examples: check --dataset (every row was skipped?).")
        self.num_items = num_items
        if self.global_batch_size > num_items:
            logger.warning(
                "The global batch (%d) is larger than the training set (%d items): every step repeats items.",
                self.global_batch_size,
                num_items,
            )
        self.total_steps = (
            config.max_steps
            if config.max_steps > 0
            else max(1, math.ceil(config.num_train_epochs * num_items / self.global_batch_size))
        )
        self.unwrapped = model
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.optimizer, self.scheduler = _build_optimizer(model, config, self.total_steps)
        self.step = 0
        self.skipped_steps = 0
        self._last_lr = config.learning_rate
        self._resumed_wall_seconds = 0.0
        self._total_tokens = 0.0
        self._window_tokens = 0.0
        self.last_record: dict[str, Any] = {}
        self.trainer_state: dict[str, Any] = {}
        """JSON-safe state of the method (e.g. PPO's adaptive KL coefficient), saved in checkpoints and
        restored on resume; a trainer sets its entries before the first step and reads them after."""
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.is_main)
        resume_from = self._checkpoint_to_resume(run_config) if config.resume else None
        if resume_from is None:
            self._start_fresh()
        if self.sharded:
            wrap_decoder_layers(self.accelerator, model)
        ties = _num_tied(model)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if self.sharded:
            settle_root(self.model)
        if _num_tied(self.model) != ties:  # would train the two copies apart
            raise RuntimeError(
                f"Preparing the model for {self.accelerator.distributed_type.value} untied {ties} tied weight(s) "
                "(e.g. the LM head and the embeddings). Report it with the model's name; meanwhile use DDP."
            )
        if resume_from is not None:  # once prepared: under FSDP the checkpoint holds this process's shards
            self._resume(resume_from)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            saved = {k: v for k, v in run_config.items() if k not in RUN_CONTROL}
            (self.out / "config.yaml").write_text(
                SAVED_CONFIG_HEADER + yaml.safe_dump(saved, sort_keys=False)
            )
        self.accelerator.init_trackers("preftune", config=_scalars(run_config))
        self._start_time = time.perf_counter() - self._resumed_wall_seconds  # wall time spans interruptions
        self._window_time = time.perf_counter()
        self._progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            disable=config.disable_tqdm or not self.is_main,
            dynamic_ncols=True,
        )

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def eval_starts(self, num_items: int, batch_size: int) -> Iterable[int]:
        """range(0, num_items, batch_size) under an "eval" progress bar (main process, unless
        --disable_tqdm; cleared when done), so a long evaluation is never a frozen training bar."""
        return tqdm(
            range(0, num_items, batch_size),
            desc="eval",
            leave=False,
            disable=self.config.disable_tqdm or not self.is_main,
            dynamic_ncols=True,
        )

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def steps(self) -> Iterator[list[list[int]]]:
        """For each remaining optimizer step: this process's micro-batches, as lists of item indices."""
        cfg = self.config
        stream = index_stream(self.num_items, cfg.seed, start=self.step * self.global_batch_size)
        per_process = self.global_batch_size // self.accelerator.num_processes
        rank = self.accelerator.process_index
        while not self.done:
            global_batch = [next(stream) for _ in range(self.global_batch_size)]
            mine = global_batch[rank * per_process : (rank + 1) * per_process]
            size = cfg.per_device_train_batch_size
            yield [mine[i : i + size] for i in range(0, per_process, size)]

    def global_sum(self, value: torch.Tensor | float | list[float]) -> torch.Tensor:
        """Sum over all processes of a scalar or a tensor (float64, same shape, on the local device).

        Pass several values as one tensor or list: one collective instead of one per value.
        """
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.accelerator.device)
        summed = self.accelerator.reduce(tensor.reshape(-1), reduction="sum")  # (numel,)
        assert isinstance(summed, torch.Tensor), "accelerate reduces a tensor to a tensor"
        return summed.reshape(tensor.shape)

    def global_sums(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Named scalars (tensors on the device, or numbers) summed over all processes, with one
        collective and one device-to-host copy: the per-step metric reduction of every trainer."""
        device = self.accelerator.device
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values.values()]
        )
        return dict(zip(values, self.global_sum(stacked).tolist(), strict=True))

    def gathered(self) -> contextlib.AbstractContextManager:
        """The model's whole weights on every process (sharding.gathered; nothing to do unless sharded):
        for evaluation, where processes score different numbers of batches, and weight copies."""
        return gathered(self.model)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole weights of `module` (the trained model or a part of it) on the main process when
        sharded, for `save_final`; None otherwise (save the module as it is). Every process calls it."""
        return full_state_dict(self.accelerator, self.model, module)

    def sync_context(self, micro_index: int, num_micro: int) -> contextlib.AbstractContextManager:
        """No gradient all-reduce except on the last micro-batch of the step."""
        if micro_index == num_micro - 1:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate a loss already normalised by *global* counts.

        DDP averages gradients over processes, so the loss is scaled by their number to
        get the gradient of the global sum / global count.
        """
        self.accelerator.backward(loss * self.accelerator.num_processes)

    def optimizer_step(
        self,
        loss: float,
        num_tokens: float,
        metrics: dict[str, float],
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """One optimizer update, then the end of the step (`update` + `end_step`)."""
        grad_norm = self.update(loss)
        metrics = {**metrics, "train/grad_norm": grad_norm} if math.isfinite(grad_norm) else metrics
        self.end_step(loss, num_tokens, metrics, evaluate)

    def update(self, loss: float) -> float:
        """Clip, check, step the optimizer and zero the gradients; returns the gradient norm before clipping.

        A step is normally one update; RL trainers make several per step (PPO epochs x mini-batches).
        With fp16 loss scaling an inf gradient is an overflow: the scaler skips the update and
        lowers the scale. Anything else non-finite is divergence.
        """
        grad_norm = self._clip()
        overflow = (
            self.accelerator.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm)
        )
        if not overflow and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self._diverged(loss, grad_norm)
        self.optimizer.step()
        if overflow:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def end_step(
        self,
        loss: float,
        num_tokens: float,
        metrics: dict[str, float],
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """Schedule, count the step; then evaluation, logging and checkpointing.

        `evaluate` (returning `eval/...` metrics) runs every eval_steps and at the last step;
        its metrics go into that step's metrics.jsonl line and its time stays out of tokens/s.
        """
        self._last_lr = self.scheduler.get_last_lr()[0]  # the rate this step's updates used
        if self.skipped_steps:
            metrics = {**metrics, "train/skipped_steps": float(self.skipped_steps)}
        self.scheduler.step()
        self.step += 1
        self._window_tokens += num_tokens
        self._total_tokens += num_tokens
        self.metrics.accumulate({"train/loss": loss, **metrics})
        eval_metrics = self._evaluate(evaluate) if evaluate is not None and self._eval_due() else {}
        if eval_metrics or self.step % self.config.logging_steps == 0 or self.done:
            self._log(eval_metrics)
        self._progress.update(1)
        if self.config.save_steps and (self.step % self.config.save_steps == 0 or self.done):
            self.save_checkpoint()

    def _clip(self) -> float:
        """Global gradient norm before clipping (clipping is off when max_grad_norm is 0)."""
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        assert norm is not None, (
            "accelerate returns no norm only under DeepSpeed, which build_accelerator rejects"
        )
        return float(norm)

    def _scaler_state(self) -> dict[str, Any] | None:
        scaler = self.accelerator.scaler
        return None if scaler is None else scaler.state_dict()

    def _diverged(self, loss: float, grad_norm: float) -> None:
        checkpoints = list_checkpoints(self.checkpoint_root)
        if checkpoints:
            last = f"the last good checkpoint is {checkpoints[-1][1]} (continue from it with --resume true)"
        else:
            last = "no checkpoint was saved (use --save_steps to keep some)"
        self._progress.close()
        raise TrainingDiverged(
            f"step {self.step + 1}: loss={loss}, grad_norm={grad_norm} is not finite, so training stopped; "
            f"{last}. Lower --learning_rate, check the data of this step, or turn off --fp16/--bf16."
        )

    def _log(self, eval_metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        extra = {
            "train/learning_rate": self._last_lr,
            "train/tokens_per_second": self._window_tokens / max(now - self._window_time, 1e-9),
            "train/num_tokens": self._total_tokens,
            "train/epoch": self.step * self.global_batch_size / self.num_items,
            **eval_metrics,
        }
        self._window_time, self._window_tokens = now, 0.0
        record = self.metrics.flush(self.step, extra)
        self.last_record.update(record)
        self._progress.set_postfix(
            loss=f"{record['loss']:.4f}", tok_s=f"{extra['train/tokens_per_second']:.0f}"
        )
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=self.step)

    def _eval_due(self) -> bool:
        every = self.config.eval_steps
        return self.done or (every > 0 and self.step % every == 0)

    def _evaluate(self, run: Callable[[], dict[str, float]]) -> dict[str, float]:
        start = time.perf_counter()
        metrics = run()
        elapsed = time.perf_counter() - start
        self._window_time += elapsed  # evaluation time is not training time
        logger.info("step %d: %s", self.step, {k: round(v, 4) for k, v in metrics.items()})
        return {**metrics, "eval/seconds": elapsed}

    def save_checkpoint(self) -> None:
        """Resumable state at the current step (every rank's RNG, the rest on the main process).

        A write that fails for want of space (or permission) stops the run with a UserFault naming the
        checkpoint, the intact earlier one and how to resume from it."""
        try:
            self._save_checkpoint()
        except Exception as error:  # OSError, or a torch / safetensors error caused by one (else re-raised)
            fault = file_system_fault(error)
            if fault is None:
                raise
            self._progress.close()  # the error starts on a line of its own, not after the progress bar
            raise UserFault(self._checkpoint_failure(fault)) from error

    def _checkpoint_failure(self, fault: FileSystemFault) -> str:
        written = self.checkpoint_root / f"step-{self.step}"
        if fault.no_room:
            fix = "free space on that disk (or lower --save_total_limit)"
        else:
            fix = f"make {self.checkpoint_root} writable"
        earlier = [(step, path) for step, path in list_checkpoints(self.checkpoint_root) if step < self.step]
        if earlier:
            step, path = earlier[-1]
            then = (
                f"The previous checkpoint {path} is intact: {fix}, then run the same command with "
                f"--resume true to continue from step {step}."
            )
        else:
            then = (
                f"No earlier checkpoint was saved: {fix}, then run the same command with "
                "--overwrite_output_dir true."
            )
        return f"Could not write checkpoint {written} at step {self.step}: {fault.words}. {then}"

    def _save_checkpoint(self) -> None:
        rank = self.accelerator.process_index
        save_rng(self.checkpoint_root, self.step, rank)
        if self.sharded:
            prefix = f"{rank_file_prefix(self.step)}shard-{rank}."
            save_weights(self.checkpoint_root, prefix, self.model, self.optimizer)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {
                "num_tokens": self._total_tokens,
                "metrics_window": self.metrics.state_dict(),
                "last_record": self.last_record,
                "wall_seconds": time.perf_counter() - self._start_time,
                "skipped_steps": self.skipped_steps,
                "scaler": self._scaler_state(),
                "trainer_state": self.trainer_state,
                "shards": self.accelerator.num_processes if self.sharded else None,
            }
            save_checkpoint(
                self.checkpoint_root,
                self.step,
                self.accelerator.unwrap_model(self.model),
                self.optimizer,
                self.scheduler,
                state,
                keep=self.config.save_total_limit,
                sharded=self.sharded,
            )
        self.accelerator.wait_for_everyone()

    def _start_fresh(self) -> None:
        """A new run never mixes its files with an earlier run's (checked on every rank)."""
        earlier = [self.out / name for name in _RUN_FILES if (self.out / name).exists()]
        if earlier and not self.config.overwrite_output_dir:
            resumable = (
                " Pass --resume true to continue it," if list_checkpoints(self.checkpoint_root) else ""
            )
            raise ValueError(
                f"{self.out} already holds an earlier run ({', '.join(p.name for p in earlier)}).{resumable} "
                "Pass --overwrite_output_dir true to replace it, or choose another --output_dir."
            )
        self.accelerator.wait_for_everyone()
        if self.is_main:
            for path in earlier:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.accelerator.wait_for_everyone()

    def _checkpoint_to_resume(self, run_config: dict[str, Any]) -> Path:
        """The last checkpoint of the interrupted run, with a warning for settings that changed since."""
        saved_config = self.out / "config.yaml"
        if saved_config.exists():
            before = yaml.safe_load(saved_config.read_text()) or {}
            changed = sorted(
                k for k in run_config if k not in _RESUME_FREE and before.get(k) != run_config[k]
            )
            if changed:
                logger.warning(
                    "Resuming with settings that differ from the interrupted run: %s. The result will "
                    "not match an uninterrupted run.",
                    ", ".join(f"{k}: {before.get(k)!r} -> {run_config[k]!r}" for k in changed),
                )
        checkpoints = list_checkpoints(self.checkpoint_root)
        if not checkpoints:
            raise ValueError(
                f"--resume: no checkpoint in {self.checkpoint_root}. Start without --resume, "
                "or point --output_dir at the interrupted run (it needs --save_steps > 0)."
            )
        return checkpoints[-1][1]

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(
            path,
            self.unwrapped,
            self.optimizer,
            self.scheduler,
            self.accelerator.process_index,
            self.accelerator.num_processes if self.sharded else None,
        )
        self.step = step = state["step"]
        self._total_tokens = state["num_tokens"]
        self._resumed_wall_seconds = state["wall_seconds"]
        self.last_record = state["last_record"]
        self.metrics.load_state_dict(state["metrics_window"])
        self.skipped_steps = state["skipped_steps"]
        self.trainer_state = state.get("trainer_state", {})
        if self.accelerator.scaler is not None and state["scaler"] is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.metrics.truncate_after(step)
        logger.info("Resumed from %s (step %d of %d).", path, step, self.total_steps)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Close the progress bar and trackers; write summary.json with wall time."""
        self._progress.close()
        self.accelerator.wait_for_everyone()
        # Not accelerator.end_training(): besides the trackers it takes the process group down while
        # this trainer's DDP model still holds it. close_processes() does that once the trainers are gone.
        for tracker in self.accelerator.trackers:
            tracker.finish()
        summary = {
            "steps": self.step,
            "wall_seconds": time.perf_counter() - self._start_time,
            "final_metrics": {k: v for k, v in self.last_record.items() if k != "step"},
            **summary,
        }
        if self.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


SAVED_CONFIG_HEADER = (
    "# The resolved settings of this run: `--config` this file with another --output_dir reruns it.\n"
    "# --resume and --overwrite_output_dir are not saved: they say how a run starts, not what it computes.\n"
)
"""The first lines of the config.yaml a run writes (engine.config.RUN_CONTROL names the flags left out)."""
# Settings that may change between an interrupted run and its resumption without changing results.
_RESUME_FREE = {
    "resume",
    "disable_tqdm",
    "report_to",
    "overwrite_output_dir",
    "save_total_limit",
    "output_dir",
}
# What a run writes into output_dir; a new run there replaces these (with --overwrite_output_dir).
_RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "summary.json", "config.yaml")


def _check_shardable(model: torch.nn.Module, shardable: bool) -> None:
    """FSDP2 only where the trainer and the model support it: an error, not an unsharded run."""
    if not shardable:
        raise ValueError(
            "The accelerate config asks for FSDP, and this trainer does not declare that it runs sharded "
            "(Engine(..., shardable=True): its evaluation and sampling in Engine.gathered(), its final save from "
            "Engine.full_state_dict()). preftune's own training commands all do. Use DDP or a single process."
        )
    if any(p.requires_grad is False for p in model.parameters()):
        raise ValueError(
            "FSDP with a partly frozen model (LoRA, --use_peft) is not supported yet: train LoRA with DDP "
            "(`accelerate launch --multi_gpu ...`) or a single process, or train all the weights under FSDP."
        )


def _num_tied(model: torch.nn.Module) -> int:
    """How many parameter names are a second name of a parameter (a tied weight)."""
    return len(list(model.named_parameters(remove_duplicate=False))) - len(list(model.named_parameters()))


def _build_optimizer(
    model: torch.nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (`optimizer_name`) with decoupled weight decay on matrices, and the warmup + decay schedule."""
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        fused=optimizer_name(config) == "adamw_torch_fused" or None,  # None: torch's default path
    )
    name = "constant_with_warmup" if config.lr_scheduler_type == "constant" else config.lr_scheduler_type
    scheduler = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms' gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters.")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scalars(run_config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run_config.items() if isinstance(v, int | float | str | bool)}
