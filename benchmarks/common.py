"""Measurements shared by the side-by-side benchmarks (preftune vs TRL): memory, environment, padding."""

from __future__ import annotations

import os
import platform
import random
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import torch


def timed_command(command: list[str], log: Path, cwd: Path) -> tuple[int, float, float | None]:
    """Run `command` under /usr/bin/time with its output in `log`: (exit code, wall seconds, peak RSS in MiB of
    the whole command, None when /usr/bin/time reported nothing)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *command], cwd=cwd, stdout=handle,
                              stderr=subprocess.STDOUT).returncode  # fmt: skip
    wall = time.perf_counter() - start
    last = [line for line in log.read_text().splitlines() if line.startswith("TIME ")]
    return code, wall, int(last[-1].split()[2]) / 1024 if last else None


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


@torch.no_grad()
def response_logps(
    path: str, prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> torch.Tensor:
    """(N,) summed log-probs of each response after its prompt under the checkpoint at `path`."""
    from preftune.data import EncodedExample
    from preftune.data.pairs import collate_responses
    from preftune.models.loading import ModelConfig, load_policy
    from preftune.models.logps import ResponseLogps, sequence_sums

    model = ResponseLogps(load_policy(ModelConfig(model=path))).eval()
    examples = [
        EncodedExample(p + r, [False] * len(p) + [True] * len(r), len(p), 0, i)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]
    result = []
    for start in range(0, len(examples), 64):
        batch = collate_responses(examples[start : start + 64], pad_id)
        tokens = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                       batch["response_logit_index"], batch["response_target"])  # fmt: skip
        result.append(sequence_sums(tokens, batch["response_seq"], batch["input_ids"].shape[0]))
    return torch.cat(result)


def evaluate_policy(
    path: str,
    reference: str,
    prompts: list[str],
    samples_per_prompt: int,
    max_new_tokens: int = 24,
    proxy: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Samples of the checkpoint at `path` on the synthetic world's held-out `prompts`: mean gold
    reward (95% bootstrap interval), KL(policy || reference) estimated from the samples (mean of the
    sequence log-ratio, with its standard error), length in words, and the proxy judge's mean score."""
    import math

    from preftune.data import encode_prompt
    from preftune.eval.stats import bootstrap_mean_ci
    from preftune.models.loading import ModelConfig, load_policy, load_tokenizer, token_id
    from preftune.rollout.config import SamplingConfig
    from preftune.rollout.generate import sample_responses
    from preftune.tasks import get_task

    tokenizer = load_tokenizer(path)
    encoded = [encode_prompt(tokenizer, p) for p in prompts for _ in range(samples_per_prompt)]
    texts = [p for p in prompts for _ in range(samples_per_prompt)]
    ids = sample_responses(
        load_policy(ModelConfig(model=path)),
        tokenizer,
        encoded,
        SamplingConfig(max_new_tokens=max_new_tokens),
        seed,
    )
    responses = [str(tokenizer.decode(r, skip_special_tokens=True)) for r in ids]
    task = get_task("kindness")
    gold, low, high = bootstrap_mean_ci(
        [task.gold_reward(p, r) for p, r in zip(texts, responses, strict=True)]
    )
    pad = token_id(tokenizer, "pad")
    logratio = response_logps(path, encoded, ids, pad) - response_logps(reference, encoded, ids, pad)  # (N,)
    result = {
        "gold_reward": gold,
        "gold_reward_ci": [low, high],
        "kl": logratio.mean().item(),
        "kl_se": (logratio.std() / math.sqrt(len(logratio))).item(),
        "length": sum(len(r.split()) for r in responses) / len(responses),
        "example": responses[0],
    }
    if proxy is not None:
        result["proxy_reward"] = proxy.score(texts, responses).mean().item()
    return result


# Llama-architecture shapes of real checkpoints (their config.json): hidden size, layers, attention heads,
# key/value heads, intermediate size, vocabulary, tied embeddings. Qwen2.5's without its query/key/value
# biases. "tiny" is a smoke-test shape.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=176, vocab=8192, tied=True),
    "smollm2-135m": dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152, tied=True),
    "smollm2-360m": dict(hidden=960, layers=32, heads=15, kv_heads=5, intermediate=2560, vocab=49152, tied=True),
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tied=True),
    "tinyllama-1.1b": dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000, tied=False),
    "llama-3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256, tied=True),
    "smollm2-1.7b": dict(hidden=2048, layers=24, heads=32, kv_heads=32, intermediate=8192, vocab=49152, tied=True),
    "llama-3.2-3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256, tied=True),
}  # fmt: skip


def llama_config(shape: dict[str, Any], vocab_size: int | None = None, max_positions: int = 2048) -> Any:
    """A transformers LlamaConfig of one of MODEL_SHAPES (vocabulary `vocab_size`, default the shape's)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size or shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], tie_word_embeddings=shape["tied"],
        max_position_embeddings=max_positions,
    )  # fmt: skip
