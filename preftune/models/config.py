"""The model flags of every command (ModelConfig) and of `preftune tiny` (TinyConfig).

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

    def __post_init__(self) -> None:
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be > 0, got {self.lora_r}. Typical values: 8 to 64.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")


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
