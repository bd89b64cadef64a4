"""What a trainer is given: objects (a model, a tokenizer, datasets, an accelerator) from Python, or the
config's paths from the command line. The trainers turn either into what they use here, in one place,
and share one constructor (`Trainer`).

    trainer = DPOTrainer(args=config, model=model, ref_model=ref, processing_class=tokenizer,
                         train_dataset=dataset, eval_dataset=held_out)

- A dataset is a path (as --dataset takes), a `datasets.Dataset`, a `datasets.DatasetDict` (the
  split flag picks the split) or a list of dicts; preftune.data.io.load_rows reads each of them.
- A model is a path or a `transformers` model object; a tokenizer object comes with a model object.
- A model path given as a string is the config's --model; an object is used as it is (dropout off, and
  wrapped in a fresh LoRA adapter when --use_peft, unless it is a peft model already).
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, fields
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from preftune.engine import build_accelerator
from preftune.engine.config import require_run_inputs
from preftune.engine.loop import check_accelerator
from preftune.models.config import ModelConfig
from preftune.models.loading import (
    add_lora,
    check_model_path,
    disable_dropout,
    freeze,
    load_policy,
    load_tokenizer,
)
from preftune.models.logps import ResponseLogps, load_frozen_reference

ModelInput = str | PreTrainedModel | PeftModel | None


@dataclass
class Given:
    """The objects a trainer was given besides its config; None: built from the config's paths."""

    model: ModelInput = None
    ref_model: ModelInput = None
    processing_class: PreTrainedTokenizerBase | None = None
    train_dataset: Any = None
    eval_dataset: Any = None
    accelerator: Accelerator | None = None
    judge: Any = None
    heldout_judge: Any = None


class Trainer:
    """Base of the trainers: the constructor, written once, with TRL's keyword names.

    `SomeTrainer(config).train()` runs the whole job from the config's paths (what the CLI does); from
    Python, objects given by keyword stand in for them (the module docstring says how). A subclass lists
    the objects it takes in `takes` (another one given is a TypeError, not an object quietly left unused)
    and builds itself in `_build`, with `self.config` set and the model given in `given.model`."""

    takes: tuple[str, ...] = ("model", "processing_class", "train_dataset", "eval_dataset", "accelerator")
    config: Any

    def __init__(
        self,
        args: Any = None,
        *,
        model: ModelInput = None,
        ref_model: ModelInput = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        accelerator: Accelerator | None = None,
        judge: Any = None,
        heldout_judge: Any = None,
    ) -> None:
        given = Given(
            model, ref_model, processing_class, train_dataset, eval_dataset, accelerator, judge, heldout_judge
        )
        name = type(self).__name__
        unused = [
            f.name for f in fields(given) if getattr(given, f.name) is not None and f.name not in self.takes
        ]
        if unused:
            raise TypeError(f"{name} takes no {', '.join(unused)}; it takes {', '.join(self.takes)}.")
        self.config, given.model = take_inputs(
            name, args, given.model, given.train_dataset, given.eval_dataset
        )
        self._build(given)

    def _build(self, given: Given) -> None:
        raise NotImplementedError


def take_inputs(
    trainer: str, config: Any, model: ModelInput, train_dataset: Any = None, eval_dataset: Any = None
) -> tuple[Any, ModelInput]:
    """The config (given positionally or as `args=`) and the model object given (None for a path), after
    seeding (before anything random: LoRA initialisation, data order), putting a model path and the
    datasets into the config (data in memory stays an object there: load_rows reads it, config.yaml names
    it) and checking that the run has a model, a training dataset and an output folder."""
    if config is None:
        raise TypeError(f"{trainer} needs its config: {trainer}(args=...Config(...), ...).")
    set_seed(config.train.seed)
    if isinstance(model, str):
        config.model.model = model
        model = None
    if train_dataset is not None:
        config.data.dataset = train_dataset
    if eval_dataset is not None:
        config.data.eval_dataset = eval_dataset
    require_run_inputs(model if model is not None else config.model.model, config.data.dataset, config.train)
    if model is None:
        check_model_path(config.model.model)
    elif not isinstance(model, PreTrainedModel | PeftModel):
        raise TypeError(
            f"model must be a path or a transformers model (e.g. AutoModelForCausalLM.from_pretrained(path)), "
            f"got {type(model).__name__}."
        )
    return config, model


def tokenizer_for(
    config: ModelConfig, model: ModelInput, processing_class: PreTrainedTokenizerBase | None
) -> PreTrainedTokenizerBase:
    """The tokenizer given, or the one saved with --model (also beside a model object, when --model names its
    folder); a model object without --model needs its tokenizer given."""
    if processing_class is not None:
        return processing_class
    if model is not None and not config.model:
        raise ValueError(
            "A model object needs its tokenizer: pass processing_class=AutoTokenizer.from_pretrained(path)."
        )
    return load_tokenizer(config.model, config.trust_remote_code)


def policy_for(config: ModelConfig, model: ModelInput) -> PreTrainedModel | PeftModel:
    """The trainable causal LM: loaded from --model, or the object given, with LoRA added when --use_peft."""
    if model is None:
        return load_policy(config)
    disable_dropout(model)
    if config.use_peft and not isinstance(model, PeftModel):
        return add_lora(model, config, "CAUSAL_LM")
    return model


def take_reference(config: Any, ref_model: ModelInput) -> ModelInput:
    """The reference object given (None for a path, which becomes --ref_model), after checking --ref_model."""
    if isinstance(ref_model, str):
        config.ref_model, ref_model = ref_model, None
    if config.ref_model:
        check_model_path(config.ref_model, "--ref_model")
    return ref_model


def reference_for(
    config: ModelConfig,
    ref_path: str | None,
    model: ModelInput,
    ref_model: ModelInput,
    device: Any,
    temperature: float = 1.0,
) -> ResponseLogps | None:
    """The frozen reference: the object given, a copy of the model object given (taken before training), or
    `ref_path` (default --model) from disk; None when it is the policy with its LoRA adapter disabled. Its
    log-probs use `temperature`, which must be the policy's (RL: the sampling temperature)."""
    if ref_model is not None:
        return ResponseLogps(frozen(ref_model, device, copy=ref_model is model), temperature).eval()
    if model is not None and not config.use_peft and not ref_path:
        return ResponseLogps(frozen(model, device, copy=True), temperature).eval()
    return load_frozen_reference(config, ref_path, str(device), temperature)


def frozen(model: PreTrainedModel | PeftModel, device: Any, copy: bool) -> PreTrainedModel:
    """`model` frozen on `device` (eval mode, no gradients, dropout off) as a reference; with `copy`, a frozen
    copy taken now, so that training the object given leaves the reference as it was."""
    return freeze((deepcopy(model) if copy else model).to(device))


def accelerator_for(train: Any, accelerator: Accelerator | None) -> Accelerator:
    """The accelerator given (its mixed precision must be the config's), or a new one built from the config."""
    return check_accelerator(accelerator, train) if accelerator is not None else build_accelerator(train)
