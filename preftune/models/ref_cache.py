"""Reference log-probs computed once and cached on disk, keyed by the model's and the data's hashes.

A DPO-style run with `--precompute_ref_log_probs` scores every pair with the reference
before training and then never loads the reference again; a later run with the same
reference checkpoint and the same tokenized pairs (another beta, another loss) reads the
file instead of recomputing. Files live in `$PREFTUNE_CACHE/ref_logps/` (default
`~/.cache/preftune/ref_logps/`), one safetensors file per (model, data) key, written
atomically; the metadata records what the key was computed from.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from preftune.data.io import atomic_path

_WEIGHT_SUFFIXES = (".safetensors", ".json")
_CHUNK = 1 << 20


def cache_root() -> Path:
    """$PREFTUNE_CACHE, or ~/.cache/preftune."""
    return Path(os.environ.get("PREFTUNE_CACHE", Path.home() / ".cache" / "preftune"))


def checkpoint_fingerprint(path: str) -> str:
    """sha256 over the names and bytes of a checkpoint folder's weight and config files."""
    folder = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(
            f"{path} has no .safetensors weights to fingerprint for the reference log-prob cache."
        )
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(sequences: Iterable[list[int]], settings: str) -> str:
    """sha256 over token-id sequences (in order) and a string of the settings the log-probs depend on."""
    digest = hashlib.sha256(settings.encode())
    for ids in sequences:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_path(model_key: str, data_key: str) -> Path:
    return cache_root() / "ref_logps" / f"{model_key[:16]}-{data_key[:16]}.safetensors"


def read_cached(path: Path) -> torch.Tensor | None:
    """The cached (N, 2) log-probs, or None when there is no file."""
    return load_file(path)["ref_logps"] if path.is_file() else None


def write_cached(path: Path, ref_logps: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write (N, 2) chosen/rejected log-probs atomically (`atomic_path`: temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file({"ref_logps": ref_logps.contiguous().cpu()}, str(temporary), metadata=metadata)
