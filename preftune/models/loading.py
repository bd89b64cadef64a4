"""Load and save the four model roles: policy, reference, reward and value.

Any Hugging Face checkpoint path works for any role. Weights are read with safetensors
only and `trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from preftune.errors import UserFault, file_system_fault
from preftune.models.config import ModelConfig
from preftune.models.scalar import score_head

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
"""What a Hugging Face Hub id looks like (ORG/NAME), as opposed to a local path."""


def check_model_path(path: str, flag: str = "--model") -> None:
    """Fail early, before anything heavy loads, when a checkpoint folder is missing."""
    if not path:
        raise ValueError(
            f"No checkpoint given: pass {flag} PATH (a folder from save_pretrained or `preftune tiny`)."
        )
    p = Path(path)
    if p.suffix.lower() == ".gguf" or (
        p.is_dir() and any(p.glob("*.gguf")) and not (p / "config.json").exists()
    ):
        raise ValueError(
            f"{flag} {path} is a GGUF checkpoint, which preftune trains only after converting it once: "
            f"`preftune import-gguf {path} --out models/NAME`, then pass {flag} models/NAME."
        )
    if p.exists() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        raise ValueError(f"{flag} {path}: the folder has no config.json, so it is not a saved model.")
    if not p.exists():
        if HUB_ID.fullmatch(path):
            raise ValueError(
                f"{flag} {path}: no such folder, and preftune does not download weights at run time. If "
                f"{path!r} is a Hugging Face Hub id, download it first (`hf download {path} --local-dir "
                f"models/{path.split('/')[-1]}`) and pass that folder; a GGUF file goes through "
                "`preftune import-gguf`."
            )
        raise ValueError(
            f"{flag} {path}: no such folder. preftune never downloads weights; give a local checkpoint "
            "(make one with `preftune tiny --data FILE --out DIR`)."
        )


@contextlib.contextmanager
def reading_checkpoint(path: str, flag: str) -> Iterator[None]:
    """Name the checkpoint folder, and the damaged file, when its files cannot be read.

    A truncated or corrupt .safetensors file raises safetensors' bare "Error while deserializing
    header: ..." (no file name), and transformers raises an OSError without errno for a missing
    weights file or a config.json that is not JSON; both become a UserFault with the fix.
    """
    try:
        yield
    except SafetensorError as error:
        if file_system_fault(error) is not None:
            raise  # an OS error while reading: preftune.errors words it
        damaged = _damaged_safetensors(Path(path))
        what = f"{damaged} is damaged" if damaged else "a .safetensors file in it is damaged"
        raise UserFault(
            f"{flag} {path}: {what} (safetensors: {error}); it was probably cut short by an interrupted "
            "save, copy or download. Re-save or re-download the model, or use an earlier checkpoint."
        ) from error
    except OSError as error:
        if error.errno is not None:
            raise  # a file-system fault (full disk, permissions, ...): preftune.errors words it
        raise UserFault(
            f"{flag} {path}: {error} The folder is incomplete or damaged: re-save or re-download the model, "
            "or use an earlier checkpoint."
        ) from error


def _damaged_safetensors(folder: Path) -> Path | None:
    """The first .safetensors file of `folder` that safetensors cannot open (only its header is read)."""
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError:
            return file
    return None


def _torch_dtype(dtype: str) -> torch.dtype | str:
    return "auto" if dtype == "auto" else DTYPES[dtype]


def load_tokenizer(
    path: str, trust_remote_code: bool = False, flag: str = "--model"
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, with a pad token (eos is used, with a warning, if it has none)."""
    with reading_checkpoint(path, flag):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"The tokenizer at {path} has neither a pad nor an eos token; add a pad token.")
        logger.warning(
            "Tokenizer at %s has no pad token; using eos %r for padding.", path, tokenizer.eos_token
        )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_id(tokenizer: PreTrainedTokenizerBase, which: Literal["bos", "eos", "pad"]) -> int:
    """The id of the tokenizer's bos/eos/pad token, or a ValueError saying it has none."""
    value = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}[
        which
    ]
    if not isinstance(value, int):
        raise ValueError(f"The tokenizer has no {which} token (got {value!r}); set tokenizer.{which}_token.")
    return value


def attention_implementation(model: PreTrainedModel | PeftModel) -> str:
    """The attention kernel transformers chose for `model` (sdpa, eager, flash_attention_2, ...)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    assert isinstance(base, PreTrainedModel)
    return str(base.config._attn_implementation)


def packed_attention(model: PreTrainedModel | PeftModel, prefix_sharing: bool) -> tuple[bool, torch.dtype]:
    """(prefix sharing, mask dtype) that `model`'s attention kernel can run: flash attention takes no custom
    masks, so it gets padded batches (with one warning when --prefix_sharing asked for more); sdpa takes
    boolean 4D masks (4x smaller than additive float ones), eager needs float ones."""
    attention = attention_implementation(model)
    sharing = prefix_sharing and not attention.startswith("flash")
    if prefix_sharing and not sharing:
        logger.warning(
            "Attention %r takes no custom masks: using padded batches, not prefix sharing.", attention
        )
    return sharing, torch.bool if attention == "sdpa" else torch.float32


def disable_dropout(model: torch.nn.Module) -> None:
    """Set p=0 in every Dropout module so log-probs do not depend on the RNG."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_policy(config: ModelConfig) -> PreTrainedModel | PeftModel:
    """The trainable causal LM, wrapped in a fresh LoRA adapter when `use_peft`."""
    check_model_path(config.model)
    with reading_checkpoint(config.model, "--model"):
        model = AutoModelForCausalLM.from_pretrained(
            config.model,
            dtype=_torch_dtype(config.dtype),
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
            use_safetensors=True,
        )
    disable_dropout(model)
    if config.use_peft:
        return add_lora(model, config, "CAUSAL_LM")
    return model


def _lora_targets(names: list[str], model: torch.nn.Module, by_layer: bool = False) -> str | list[str]:
    """peft's target_modules; 'all-linear' is spelled out as the linear layers' names when adapters go on
    some layers only (peft takes layers_to_transform only with a list of names)."""
    if names != ["all-linear"]:
        return names
    if not by_layer:
        return "all-linear"
    heads = ("lm_head", "score")
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in heads
        }
    )


def load_reference(
    path: str,
    dtype: str = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    flag: str = "--ref_model",
) -> PreTrainedModel:
    """A frozen causal LM in eval mode (the KL anchor), on `device` when given."""
    check_model_path(path, flag)
    with reading_checkpoint(path, flag):
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True
        )
    if device is not None:
        cast(torch.nn.Module, model).to(torch.device(device))
    return freeze(model)


def load_scalar_model(
    path: str,
    dtype: str = "float32",
    device: str | None = None,
    trust_remote_code: bool = False,
    flag: str = "--reward_model",
    num_labels: int | None = None,
    pad_token_id: int | None = None,
    require_classifier: bool = False,
    average_heads: bool = False,
) -> PreTrainedModel:
    """A sequence classifier with `num_labels` scalar heads (reward or value model), on `device`.

    A causal-LM checkpoint gets freshly initialised heads (1 unless `num_labels` says more);
    a sequence-classifier checkpoint keeps its heads, and `num_labels`, when given, must
    match them, except that with `average_heads` and `num_labels=1` the K heads of an ensemble
    reward model (`preftune rm --num_heads K`) become one, the mean of the K (its score is the
    ensemble's mean score, the reward the judge gives). `pad_token_id` fills in a config that has
    none. With `require_classifier`, a causal-LM checkpoint is an error (its heads would be
    random). Dropout is off.
    """
    check_model_path(path, flag)
    with reading_checkpoint(path, flag):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    is_classifier = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
    if require_classifier and not is_classifier:
        raise ValueError(
            f"{flag} {path} is not a reward model (its architecture is {config.architectures}), so its score head "
            f"would be random. Train one first: preftune rm --model {path} --dataset PAIRS --output_dir OUT."
        )
    merge = average_heads and num_labels == 1
    if is_classifier and num_labels is not None and num_labels != config.num_labels and not merge:
        raise ValueError(
            f"{flag} {path} is a reward model with {config.num_labels} head(s), but {num_labels} were asked "
            f"for. Pass --num_heads {config.num_labels}, or start from a causal-LM checkpoint to get new heads."
        )
    with _plain_load_report(), reading_checkpoint(path, flag):
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=config.num_labels if is_classifier else (num_labels or 1),
            dtype=_torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            output_loading_info=True,
        )
    _report_missing_weights(path, info)
    if merge and model.config.num_labels > 1:
        _average_score_heads(model)
        logger.info("%s: its %d score heads averaged into one.", path, config.num_labels)
    if model.config.pad_token_id is None:
        if pad_token_id is None:
            raise ValueError(f"{flag} {path}: config.pad_token_id is unset; set it so batches can be padded.")
        model.config.pad_token_id = pad_token_id
    disable_dropout(model)
    if device is not None:
        cast(torch.nn.Module, model).to(torch.device(device))
    return model


def _average_score_heads(model: PreTrainedModel) -> None:
    """Replace the (K, H) score layer by a (1, H) one holding the mean of the K rows (and biases): a linear
    head, so its score is the mean of the K scores."""
    head = score_head(model)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__}'s score head is {type(head).__name__}, not a linear layer, so its heads cannot "
            "be averaged into one value head; pass --value_model with a causal-LM checkpoint (a new value head)."
        )
    merged = torch.nn.Linear(
        head.in_features, 1, bias=head.bias is not None, device=head.weight.device, dtype=head.weight.dtype
    )
    with torch.no_grad():
        merged.weight.copy_(head.weight.mean(dim=0, keepdim=True))  # (1, H)
        if head.bias is not None:
            merged.bias.copy_(head.bias.mean(dim=0, keepdim=True))  # (1,)
    model.add_module("score", merged)  # replaces the child of that name
    model.config.num_labels = 1


QUIET_LOADING_LOGGERS = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
"""transformers' coloured LOAD REPORT table (raw ANSI codes in log files) and its tensor-parallel
plan check ("layers were not sharded"; preftune does not use tensor parallelism)."""


@contextlib.contextmanager
def _plain_load_report() -> Iterator[None]:
    """Silence `QUIET_LOADING_LOGGERS` below ERROR while a model loads; the caller reports what
    matters in one plain line (`_report_missing_weights`)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOADING_LOGGERS]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for one, level in zip(loggers, levels, strict=True):
            one.setLevel(level)


def _report_missing_weights(path: str, info: dict[str, Any]) -> None:
    """One plain log line for freshly initialised weights: INFO for the score head a causal-LM
    checkpoint lacks by design, WARNING for anything else (and for unexpected checkpoint keys)."""
    missing = sorted(info.get("missing_keys") or [])
    heads = [key for key in missing if key.split(".")[0] == "score"]
    others = [key for key in missing if key not in heads]
    if heads:
        logger.info("%s: new score head %s, randomly initialised (the checkpoint has none).", path, heads)
    if others:
        logger.warning(
            "%s: %d weights missing from the checkpoint were randomly initialised: %s",
            path,
            len(others),
            others[:10],
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        logger.warning("%s: %d checkpoint weights were not used: %s", path, len(unexpected), unexpected[:10])


def add_lora(
    model: PreTrainedModel, config: ModelConfig, task_type: Literal["CAUSAL_LM", "SEQ_CLS"]
) -> PeftModel:
    """Wrap `model` in a fresh LoRA adapter (for SEQ_CLS the score head is trained in full)."""
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_lora_targets(
            config.lora_target_modules, model, bool(config.lora_layers_to_transform)
        ),
        layers_to_transform=config.lora_layers_to_transform or None,
        task_type=task_type,
    )
    num_layers = model.config.num_hidden_layers
    beyond = [index for index in config.lora_layers_to_transform if index >= num_layers]
    if beyond:
        raise ValueError(
            f"--lora_layers_to_transform {beyond}: the model has {num_layers} layers (indices 0 to {num_layers - 1})."
        )
    return cast(PeftModel, get_peft_model(model, lora))


def enable_gradient_checkpointing(module: torch.nn.Module) -> list[str]:
    """Turn on transformers' non-reentrant activation checkpointing in every trained model inside `module`
    (the outermost transformers model of each; frozen ones are skipped). Returns their class names; raises
    ValueError when one cannot checkpoint or none is found, rather than training without it."""
    names: list[str] = []
    inside: set[int] = set()
    for child in module.modules():
        if id(child) in inside or not isinstance(child, PreTrainedModel):
            continue
        inside.update(id(grandchild) for grandchild in child.modules())
        if not any(p.requires_grad for p in child.parameters()):
            continue
        if not child.supports_gradient_checkpointing:
            raise ValueError(
                f"--gradient_checkpointing: {type(child).__name__} does not support gradient checkpointing in "
                "transformers; train without the flag."
            )
        if hasattr(
            child, "activation_checkpointing_enable"
        ):  # its name since transformers 5.x; older 5.x lack it
            child.activation_checkpointing_enable({"use_reentrant": False})
        else:
            child.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        names.append(type(child).__name__)
    if not names:
        raise ValueError("--gradient_checkpointing: the run trains no transformers model to checkpoint.")
    logger.info("Gradient checkpointing on in %s.", ", ".join(names))
    return names


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode, no gradients, dropout off."""
    model.eval()
    model.requires_grad_(False)
    disable_dropout(model)
    return model


ADAPTER_FOLDER = "adapter"
"""The LoRA adapter alone, inside a final/ folder whose main files are the merged model."""


def save_final(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a folder plain transformers can load (safetensors). A LoRA policy is saved twice: its adapter
    alone in `out_dir/adapter/` (peft's adapter_model.safetensors and adapter_config.json, a few MB, for
    `PeftModel.from_pretrained(base, out_dir / "adapter")`), then merged into the full model in `out_dir`.
    `state_dict`: the weights to write instead of the model's own (a sharded model's, gathered).

    Written into a temp folder beside `out_dir`, then renamed: a failed write (a full disk) leaves no
    half-written model that looks like a finished one.
    """
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if isinstance(model, PeftModel):
            assert state_dict is None, "LoRA is not sharded (engine.loop._check_shardable)"
            model.save_pretrained(tmp / ADAPTER_FOLDER)
            model = model.merge_and_unload()
        assert isinstance(model, PreTrainedModel)
        model.save_pretrained(tmp, state_dict=state_dict)  # transformers 5 always writes safetensors
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException as error:  # Ctrl-C too: no temp folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        fault = file_system_fault(error) if isinstance(error, Exception) else None
        if fault is None:
            raise
        fix = "free space on that disk" if fault.no_room else "make it writable"
        raise UserFault(
            f"Could not write the final model to {out_dir}: {fault.words}. {fix.capitalize()}, then run the "
            "same command with --resume true if the run saved checkpoints (--save_steps; nothing is "
            "retrained), or else with --overwrite_output_dir true."
        ) from error
