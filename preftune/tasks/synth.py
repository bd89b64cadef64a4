"""Write a synthetic task's data sets to disk (the `preftune synth` command).

Files written into `SynthConfig.out`:

- ``sft.jsonl``           ``{"prompt", "completion"}``: corpus responses to training prompts,
                          mixed (shuffled) with critique and revise instruction rows (20%);
- ``pairs.jsonl``         pairwise ratings by the simulated panel: ``{"prompt", "chosen",
                          "rejected", "annotator", "annotator_group", "order", "shown_first",
                          "pair_id"}``; both responses of a pair are distinct corpus samples for
                          the same training prompt, and an overlap share of pairs is rated several times;
- ``prompts.jsonl``       ``{"prompt"}``: training prompts (for PPO/RLOO/GRPO/BoN);
- ``eval_prompts.jsonl``  ``{"prompt"}``: held-out prompts, none of which is a training prompt;
- ``eval_pairs.jsonl``    held-out ratings by the same panel, in the format of pairs.jsonl: two
                          distinct corpus responses to a held-out prompt, so a reward model's
                          agreement with the gold reward can be measured on prompts it never saw;
- ``task.json``           task name, seed, counts, the panel config, corpus statistics and the
                          panel's agreement with gold on the training and held-out ratings.

Everything is drawn from independent streams of one seed, so the same config gives
byte-identical files, and changing one count does not change the other files. The held-out
ratings have their own panel noise (seeded with [panel_seed, 1]), so they do not change the
training ratings either.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from preftune.data.io import write_jsonl
from preftune.tasks.panel import PanelConfig, rate_pairs
from preftune.tasks.registry import Task, get_task

logger = logging.getLogger(__name__)

MAX_DRAWS_FOR_DISTINCT = 100
"""Attempts to draw a second response that differs from the first one of a pair."""


@dataclass
class SynthConfig:
    """What `write_task` writes. Defaults let the tiny model learn the task in about a minute."""

    task: str = "kindness"
    """Name of a built-in task (see preftune.tasks.TASKS)."""
    out: str = "synth"
    """Directory the files are written into (created if missing; existing files are overwritten)."""
    seed: int = 0
    """Seed of prompts, responses and instruction rows (the panel's noise has its own --panel_seed)."""
    num_sft: int = 3000
    """Rows of sft.jsonl, instruction rows included."""
    instruction_fraction: float = 0.2
    """Share of SFT rows that are critique or revise instructions (the constitutional AI skill)."""
    critique_share: float = 1 / 3
    """Of the instruction rows, the share that are critiques; the rest are revisions, the harder
    copy-and-edit skill, which the tiny model learns in a minute only with about 400 examples."""
    num_pairs: int = 2000
    """Distinct response pairs rated by the panel; pairs.jsonl has more rows when panel.overlap > 0."""
    num_eval_pairs: int = 500
    """Pairs for held-out prompts in eval_pairs.jsonl, rated by the same panel (more rows when
    panel.overlap > 0); held-out prompts repeat beyond the 192 of kindness."""
    num_prompts: int = 512
    """Training prompts in prompts.jsonl (distinct up to the 768 training prompts of kindness)."""
    num_eval_prompts: int = 128
    """Held-out prompts in eval_prompts.jsonl (distinct up to the 192 held-out prompts of kindness;
    beyond that the held-out pool is walked again, so prompts repeat)."""
    panel: PanelConfig = field(default_factory=PanelConfig)
    """The simulated annotator panel that rates the pairs."""

    def __post_init__(self) -> None:
        get_task(self.task)  # raises with the available names
        for name, value in (
            ("num_sft", self.num_sft),
            ("num_pairs", self.num_pairs),
            ("num_eval_pairs", self.num_eval_pairs),
            ("num_prompts", self.num_prompts),
            ("num_eval_prompts", self.num_eval_prompts),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if not 0.0 <= self.instruction_fraction < 1.0:
            raise ValueError(
                f"instruction_fraction must be in [0, 1), got {self.instruction_fraction}. "
                "Use 0 for no critique/revise rows."
            )
        if not 0.0 <= self.critique_share <= 1.0:
            raise ValueError(f"critique_share must be in [0, 1], got {self.critique_share}.")


def build_sft_rows(
    task: Task, num_rows: int, instruction_fraction: float, critique_share: float, rng: np.random.Generator
) -> list[dict[str, str]]:
    """SFT rows in random order: corpus responses to training prompts, plus a share
    `instruction_fraction` of critique and revise instructions on corpus replies (a share
    `critique_share` of them critiques, the rest revisions)."""
    num_instructions = round(num_rows * instruction_fraction)
    num_critiques = round(num_instructions * critique_share)
    rows = [
        {"prompt": prompt, "completion": task.sample_response(prompt, rng)}
        for prompt in task.sample_prompts(num_rows - num_instructions, rng)
    ]
    for i, prompt in enumerate(task.sample_prompts(num_instructions, rng)):
        reply = task.sample_response(prompt, rng)
        if i < num_critiques:
            rows.append({"prompt": task.critique_prompt(reply), "completion": task.critique(reply)})
        else:
            rows.append({"prompt": task.revise_prompt(reply), "completion": task.revise(reply)})
    return [rows[i] for i in rng.permutation(len(rows))]


def build_pairs(
    task: Task, num_pairs: int, rng: np.random.Generator, split: Literal["train", "eval"] = "train"
) -> tuple[list[str], list[tuple[str, str]]]:
    """Prompts of `split` and, for each, two distinct corpus responses."""
    prompts = task.sample_prompts(num_pairs, rng, split=split)
    pairs = []
    for prompt in prompts:
        first = task.sample_response(prompt, rng)
        for _ in range(MAX_DRAWS_FOR_DISTINCT):
            second = task.sample_response(prompt, rng)
            if second != first:
                break
        else:
            raise RuntimeError(
                f"Could not draw two distinct responses for {prompt!r}; the corpus is degenerate."
            )
        pairs.append((first, second))
    return prompts, pairs


def panel_gold_agreement(task: Task, ratings: Iterable[dict[str, Any]]) -> float | None:
    """Share of ratings whose chosen response has the higher gold reward (gold ties left out);
    None when every rated pair is a gold tie."""
    gold_margins = [
        task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"])
        for r in ratings
    ]
    agreement = [margin > 0 for margin in gold_margins if margin != 0]
    return round(statistics.fmean(agreement), 6) if agreement else None


def write_task(config: SynthConfig) -> dict[str, Path]:
    """Write the task's data sets into config.out; returns their paths by name
    ("sft", "pairs", "prompts", "eval_prompts", "eval_pairs", "task")."""
    task = get_task(config.task)
    # spawn(5) gives the same first 4 children as spawn(4) did, so adding the eval-pairs
    # stream left the other files unchanged.
    sft_rng, pairs_rng, prompts_rng, eval_rng, eval_pairs_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)
    )
    sft_rows = build_sft_rows(
        task, config.num_sft, config.instruction_fraction, config.critique_share, sft_rng
    )
    pair_prompts, response_pairs = build_pairs(task, config.num_pairs, pairs_rng, split="train")
    ratings = rate_pairs(task, pair_prompts, response_pairs, config.panel)
    prompts = task.sample_prompts(config.num_prompts, prompts_rng, split="train")
    eval_prompts = task.sample_prompts(config.num_eval_prompts, eval_rng, split="eval")
    eval_pair_prompts, eval_response_pairs = build_pairs(
        task, config.num_eval_pairs, eval_pairs_rng, split="eval"
    )
    # Held-out rating noise of its own, so the training ratings stay as they were.
    eval_panel_rng = np.random.default_rng([config.panel.panel_seed, 1])
    eval_ratings = rate_pairs(task, eval_pair_prompts, eval_response_pairs, config.panel, rng=eval_panel_rng)

    gold = [
        task.gold_reward(r["prompt"], r["completion"]) for r in sft_rows if task.is_task_prompt(r["prompt"])
    ]
    meta = {
        "task": task.name,
        "seed": config.seed,
        "num_sft": len(sft_rows),
        "num_sft_instructions": len(sft_rows) - len(gold),
        "instruction_fraction": config.instruction_fraction,
        "critique_share": config.critique_share,
        "num_pairs": config.num_pairs,
        "num_ratings": len(ratings),
        "num_prompts": len(prompts),
        "num_eval_prompts": len(eval_prompts),
        "num_distinct_eval_prompts": len(set(eval_prompts)),
        "num_eval_pairs": config.num_eval_pairs,
        "num_eval_ratings": len(eval_ratings),
        "panel": asdict(config.panel),
        "corpus_gold_mean": round(statistics.fmean(gold), 6) if gold else None,
        "corpus_gold_std": round(statistics.pstdev(gold), 6) if gold else None,
        "corpus_gold_max": max(gold) if gold else None,
        "panel_gold_agreement": panel_gold_agreement(task, ratings),
        "eval_panel_gold_agreement": panel_gold_agreement(task, eval_ratings),
    }

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ("sft", "pairs", "prompts", "eval_prompts", "eval_pairs")
    paths = {name: out / f"{name}.jsonl" for name in names}
    paths["task"] = out / "task.json"
    write_jsonl(paths["sft"], sft_rows)
    write_jsonl(paths["pairs"], ratings)
    write_jsonl(paths["prompts"], ({"prompt": p} for p in prompts))
    write_jsonl(paths["eval_prompts"], ({"prompt": p} for p in eval_prompts))
    write_jsonl(paths["eval_pairs"], eval_ratings)
    paths["task"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "Wrote task %r into %s: %d SFT rows (corpus gold %.3f +- %.3f), %d ratings of %d pairs "
        "(%.0f%% agree with gold), %d prompts, %d eval prompts, %d held-out ratings of %d eval pairs "
        "(%.0f%% agree with gold).",
        task.name,
        out,
        len(sft_rows),
        meta["corpus_gold_mean"] or 0.0,
        meta["corpus_gold_std"] or 0.0,
        len(ratings),
        config.num_pairs,
        100 * (meta["panel_gold_agreement"] or 0.0),
        len(prompts),
        len(eval_prompts),
        len(eval_ratings),
        config.num_eval_pairs,
        100 * (meta["eval_panel_gold_agreement"] or 0.0),
    )
    return paths
