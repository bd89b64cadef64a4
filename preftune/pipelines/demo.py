"""`preftune demo`: the embedded default, end to end on the synthetic world.

At this stage: synthesise the task -> build a tiny model -> SFT -> sample from the base
and SFT policies on held-out prompts and score them with the gold reward.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from preftune.data import encode_prompt, load_rows
from preftune.data.config import DataConfig
from preftune.engine import TrainConfig
from preftune.eval.stats import bootstrap_mean_ci
from preftune.models.loading import ModelConfig, load_policy, load_tokenizer
from preftune.models.tiny import make_tiny, texts_of_row
from preftune.rollout.generate import SamplingConfig, sample_responses
from preftune.tasks import SynthConfig, get_task, write_task
from preftune.trainers.sft import SFTConfig, SFTTrainer

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    output_dir: str = "preftune-demo"
    """Folder for the data, models, report.md and summary.json."""
    task: str = "kindness"
    """Synthetic task (see `preftune synth --help`)."""
    size: Literal["tiny", "small"] = "tiny"
    """Model shape for the tiny-model factory."""
    sft_steps: int = 1000
    """SFT optimizer steps."""
    sft_learning_rate: float = 3e-3
    """SFT learning rate (tiny random-init models need a large one)."""
    sft_batch_size: int = 32
    """SFT examples per step."""
    num_eval_prompts: int = 128
    """Held-out prompts sampled from each policy."""
    max_new_tokens: int = 24
    """Longest sampled response."""
    seed: int = 0
    """Seed of data, model initialisation, training and sampling."""

    def __post_init__(self) -> None:
        for name, value in (("sft_steps", self.sft_steps), ("num_eval_prompts", self.num_eval_prompts)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")


def gold_scores(task_name: str, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """Mean gold reward with a 95% bootstrap interval, and mean length in words."""
    task = get_task(task_name)
    rewards = [task.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    mean, low, high = bootstrap_mean_ci(rewards)
    length = sum(len(r.split()) for r in responses) / len(responses)
    return {"gold_reward": mean, "gold_reward_ci": [low, high], "length": length, "n": len(rewards)}


def sample_policy(path: str, prompts: list[str], config: DemoConfig) -> list[str]:
    """Decoded responses of the checkpoint at `path` (EOS and pads removed)."""
    tokenizer = load_tokenizer(path)
    model = load_policy(ModelConfig(model=path))
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
    ids = sample_responses(model, tokenizer, encoded, sampling, seed=config.seed)
    return [str(tokenizer.decode(r, skip_special_tokens=True)) for r in ids]


def run_demo(config: DemoConfig) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(config.output_dir)
    data_dir = out / "data"
    files = write_task(SynthConfig(task=config.task, out=str(data_dir), seed=config.seed))
    texts = (text for row in load_rows(str(files["sft"])).rows for text in texts_of_row(row))
    base = make_tiny(texts, out / "base", size=config.size, seed=config.seed)

    sft_config = SFTConfig(
        model=ModelConfig(model=str(base)),
        data=DataConfig(dataset=str(files["sft"]), max_length=128),
        train=TrainConfig(
            output_dir=str(out / "sft"),
            learning_rate=config.sft_learning_rate,
            per_device_train_batch_size=config.sft_batch_size,
            max_steps=config.sft_steps,
            warmup_ratio=0.05,
            logging_steps=25,
            seed=config.seed,
            overwrite_output_dir=True,  # the demo owns its folder: a rerun replaces it
        ),
    )
    SFTTrainer(sft_config).train()

    prompts = [row["prompt"] for row in load_rows(str(files["eval_prompts"])).rows][: config.num_eval_prompts]
    task = get_task(config.task)
    corpus = [row for row in load_rows(str(files["sft"])).rows if task.is_task_prompt(row["prompt"])]
    methods = {
        "base": gold_scores(config.task, prompts, sample_policy(str(base), prompts, config)),
        "sft": gold_scores(config.task, prompts, sample_policy(str(out / "sft" / "final"), prompts, config)),
    }
    corpus_scores = gold_scores(config.task, [r["prompt"] for r in corpus], [r["completion"] for r in corpus])
    summary = {"methods": methods, "sft_corpus": corpus_scores, "wall_seconds": time.perf_counter() - start}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(render_markdown(summary))
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """The gold-reward table of the demo as Markdown."""
    rows = [("base (random init)", summary["methods"]["base"]), ("sft", summary["methods"]["sft"])]
    rows.append(("SFT corpus (demonstrations)", summary["sft_corpus"]))
    lines = [
        "# preftune demo",
        "",
        "| policy | gold reward | 95% CI | mean length (words) |",
        "|---|---|---|---|",
    ]
    for name, scores in rows:
        low, high = scores["gold_reward_ci"]
        lines.append(
            f"| {name} | {scores['gold_reward']:.3f} | [{low:.3f}, {high:.3f}] | {scores['length']:.1f} |"
        )
    lines += ["", f"Wall time: {summary['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
