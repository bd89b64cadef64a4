"""Several optimizer updates on one batch: epochs over shuffled mini-batches (PPO, RLOO, GRPO).

The trainer gives the loss of a micro-batch of rows; this loop owns the shuffling, the
micro-batching with DDP sync only on the last micro-batch, the global token counts that each
mini-batch's loss is divided by, and the optimizer update after each mini-batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor

from preftune.engine.loop import Engine

MicroLoss = Callable[[Tensor, float, bool], tuple[Tensor, dict[str, Tensor]]]
"""(rows (n,), global tokens of the mini-batch, first mini-batch?) -> (loss, metric sums with "tokens")."""


def minibatch_updates(
    engine: Engine, mask: Tensor, epochs: int, num_mini_batches: int, micro_loss: MicroLoss
) -> tuple[float, dict[str, float], float]:
    """`epochs` passes over this process's N rows, each cut into `num_mini_batches` shuffled
    mini-batches; one optimizer update per mini-batch.

    Args:
        mask: (N, T) bool, the rows' counted tokens (a mini-batch's loss is divided by their
            global number, so the update does not depend on how the batch is split).
        micro_loss: the loss of the rows of one micro-batch (per_device_train_batch_size rows),
            already divided by the mini-batch's global token count, and its metric sums (with the
            number of tokens under "tokens"); its third argument is True in the first mini-batch
            of the first epoch, before any update.

    Returns:
        The mean loss over updates, the metric sums over all updates divided by their tokens
        (`train/grad_norm`: the mean over updates), and the tokens of one epoch.

    Each process shuffles its own rows. With one mini-batch the update is the same however the
    global batch is split over processes (tested); with several, a mini-batch holds other rows
    under N processes than under 1, so runs agree in distribution but not step for step.
    """
    N, size = mask.shape[0], engine.config.per_device_train_batch_size
    mini = N // num_mini_batches
    sums: defaultdict[str, Tensor | float] = defaultdict(float)
    losses: list[float] = []
    for epoch in range(epochs):
        # the same permutation on every process (seeded by step and epoch), of its own rows
        generator = torch.Generator().manual_seed(engine.config.seed * 7919 + engine.step * 101 + epoch)
        order = torch.randperm(N, generator=generator)
        for m in range(num_mini_batches):
            rows = order[m * mini : (m + 1) * mini]
            num_tokens = engine.global_sum(mask[rows].sum()).item()
            micros = [rows[i : i + size] for i in range(0, mini, size)]
            loss = torch.zeros((), device=engine.accelerator.device)
            for i, micro in enumerate(micros):
                with engine.sync_context(i, len(micros)):
                    micro_value, metrics = micro_loss(micro, num_tokens, epoch == 0 and m == 0)
                    engine.backward(micro_value)
                loss += micro_value.detach()
                for name, value in metrics.items():
                    sums[name] += value
            losses.append(engine.global_sum(loss).item())
            sums["train/grad_norm"] += engine.update(losses[-1])
    totals = engine.global_sums(sums)
    tokens = totals.pop("tokens")
    metrics = {name: value / tokens for name, value in totals.items()}
    metrics["train/grad_norm"] = totals["train/grad_norm"] / len(losses) / engine.accelerator.num_processes
    return sum(losses) / len(losses), metrics, tokens / epochs
