"""Measurements shared by the side-by-side benchmarks (preftune vs TRL): memory, environment, padding."""

from __future__ import annotations

import os
import platform
import random
import resource
from pathlib import Path
from typing import Any

import torch


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux /proc)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def environment(threads: int) -> dict[str, Any]:
    """Versions, device and thread count, printed with every benchmark table."""
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
    }


def padding_share(lengths: list[tuple[int, int]], batch_size: int, seed: int) -> float:
    """Share of padding in batches padded to their longest sequence (TRL's collator), for the
    pairs in one seeded random order: 1 - real tokens / (2 x pairs x longest), summed."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        real += sum(c + r for c, r in batch)
        padded += 2 * len(batch) * max(max(c, r) for c, r in batch)
    return 1.0 - real / padded
