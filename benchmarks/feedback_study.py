"""Feedback quality on the synthetic world: does the audit find what was injected, does Dawid-Skene
aggregation train better models than majority labels, and how does a biased panel compound over rounds?

(a) **Audit recovery.** The world's 2,000 pairs are each rated by 3 of 12 simulated annotators with no
    random flips, then every rating of annotator i is flipped with a known rate (0.02 to 0.40). A second
    panel adds a fatigued annotator and a rater group that likes long answers. `preftune audit` on each:
    estimated vs injected flip rates, and its flags.
(b) **Aggregation.** From the first panel's ratings: all ratings as pairs ("raw"), one majority-vote pair
    per item, and one Dawid-Skene pair per item (soft label + weight). A reward model and a DPO policy
    are trained on each (the recipes of configs/rm and configs/dpo); reported: the reward model's
    agreement with the gold reward on held-out pairs, and the DPO policy's held-out gold reward.
(c) **Compounding over rounds.** `preftune loop` for 3 rounds judged by a panel in which half of the
    raters (group "L") like long answers (their utility rewards extra adjectives), against the same loop
    judged only by the unbiased group "A" (what dropping the group the audit flags gives).

    PYTHONPATH=benchmarks python benchmarks/feedback_study.py --workdir /tmp/rl_synthetic --out feedback.json

Reuses the SFT model of benchmarks/rl_synthetic.py in --workdir (built when missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import evaluate_policy
from rl_synthetic import CONFIGS, prepare

from preftune.config import load_config
from preftune.data import DataConfig, load_rows
from preftune.engine import TrainConfig
from preftune.feedback.aggregate import aggregate_ratings, write_aggregated
from preftune.feedback.audit import AuditConfig, run_audit
from preftune.judges import RewardModelJudge
from preftune.models.loading import ModelConfig
from preftune.pipelines.loop import LoopConfig, run_loop
from preftune.tasks import PanelConfig, SynthConfig, get_task, write_task
from preftune.tasks.synth import write_jsonl
from preftune.trainers.dpo import DPOConfig, DPOTrainer
from preftune.trainers.reward import RewardConfig, RewardTrainer

logger = logging.getLogger("feedback_study")
FLIP_RATES = [0.02, 0.05, 0.05, 0.1, 0.1, 0.15, 0.2, 0.2, 0.25, 0.3, 0.35, 0.4]
"""Injected flip rate of annotators a00 .. a11."""


def flipped_world(work: Path, seed: int) -> tuple[dict[str, Path], Path]:
    """The world's pairs rated by 3 annotators each without random flips, then flipped per annotator."""
    panel = PanelConfig(flip_rate=0.0, fatigue=0.0, overlap=1.0, ratings_per_pair=3, position_bias=0.0)
    files = write_task(SynthConfig(out=str(work / "data-panel"), panel=panel, seed=0))
    rng = np.random.default_rng(seed)
    rows = load_rows(str(files["pairs"])).rows
    for row in rows:
        if rng.random() < FLIP_RATES[int(row["annotator"][1:])]:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["shown_first"] = "rejected" if row["shown_first"] == "chosen" else "chosen"
    path = work / "data-panel" / "pairs-flipped.jsonl"
    write_jsonl(path, rows)
    return files, path


def biased_world(work: Path) -> Path:
    """A panel with a fatigued annotator and a group that likes long answers (length weight -1.5)."""
    gold = {"sentiment": 1.0, "relevance": 0.5, "length": 1.0, "repetition": 1.0, "format": 1.0}
    panel = PanelConfig(
        fatigue=0.0,
        overlap=1.0,
        ratings_per_pair=3,
        groups={"A": gold, "L": {**gold, "length": -1.5}},
        group_shares={"A": 0.5, "L": 0.5},
    )
    files = write_task(SynthConfig(out=str(work / "data-biased"), panel=panel, seed=0))
    rows = load_rows(str(files["pairs"])).rows
    rng = np.random.default_rng(1)
    for row in rows:  # annotator a03 tires: flip probability grows from 0 to 0.45 over the session
        if row["annotator"] == "a03" and rng.random() < 0.45 * row["order"] / 500:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    path = work / "data-biased" / "pairs-fatigued.jsonl"
    write_jsonl(path, rows)
    return path


def audit(path: Path, out: Path) -> dict[str, Any]:
    result = run_audit(AuditConfig(dataset=str(path), output_dir=str(out)))
    return result


def gold_agreement(rm: str, files: dict[str, Path]) -> float:
    """Share of held-out pairs (gold ties left out) the reward model orders as the gold reward does."""
    task = get_task("kindness")
    rows = load_rows(str(files["eval_pairs"])).rows
    rows = [
        r
        for r in rows
        if task.gold_reward(r["prompt"], r["chosen"]) != task.gold_reward(r["prompt"], r["rejected"])
    ]
    judge = RewardModelJudge(rm)
    chosen = judge.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = judge.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    gold = [
        task.gold_reward(r["prompt"], r["chosen"]) > task.gold_reward(r["prompt"], r["rejected"])
        for r in rows
    ]
    return float(
        np.mean([(c > r) == g for c, r, g in zip(chosen.tolist(), rejected.tolist(), gold, strict=True)])
    )


def train_on(
    name: str, data: Path, files: dict[str, Path], work: Path, base: str, sft: str
) -> dict[str, Any]:
    """A reward model and a DPO policy on one version of the ratings."""
    rm_config = load_config(RewardConfig, CONFIGS / "rm" / "synthetic.yaml")
    rm_config.model.model, rm_config.data.dataset, rm_config.data.eval_dataset = base, str(data), None
    rm_config.train.output_dir, rm_config.train.overwrite_output_dir = str(work / f"rm-{name}"), True
    rm_config.train.disable_tqdm = True
    RewardTrainer(rm_config).train()
    train = TrainConfig(output_dir=str(work / f"dpo-{name}"), learning_rate=5e-4, per_device_train_batch_size=32,
                        warmup_ratio=0.1, logging_steps=20, overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
    DPOTrainer(DPOConfig(model=ModelConfig(model=sft), data=DataConfig(dataset=str(data), max_length=128),
                         train=train, beta=0.1)).train()  # fmt: skip
    prompts = [row["prompt"] for row in load_rows(str(files["eval_prompts"])).rows][:128]
    policy = evaluate_policy(str(work / f"dpo-{name}" / "final"), sft, prompts, samples_per_prompt=2)
    return {"rm_gold_agreement": gold_agreement(str(work / f"rm-{name}" / "final"), files), "dpo": policy}


def compounding(work: Path, files: dict[str, Path], sft: str) -> dict[str, Any]:
    gold = {"sentiment": 1.0, "relevance": 0.5, "length": 1.0, "repetition": 1.0, "format": 1.0}
    groups = {"A": gold, "L": {**gold, "length": -1.5}}
    results = {}
    for name, shares in (
        ("biased panel (A + L)", {"A": 0.5, "L": 0.5}),
        ("group A only", {"A": 1.0, "L": 0.0}),
    ):
        config = load_config(LoopConfig, CONFIGS / "loop" / "synthetic.yaml")
        config.model.model, config.data.dataset = sft, str(files["prompts"])
        config.data.eval_dataset = str(files["eval_prompts"])
        config.judge = "panel"
        config.judge_options = {"panel_config": {"groups": groups, "group_shares": shares}}
        config.train.output_dir = str(work / ("loop-" + name.split()[0]))
        config.train.overwrite_output_dir, config.train.disable_tqdm = True, True
        summary = run_loop(config)
        results[name] = [{k: r[k] for k in ("round", "gold_reward", "gold_reward_ci", "kl", "length")}
                         for r in summary["rounds"]]  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/rl_synthetic")
    parser.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.workdir)
    world, sft, _ = prepare(work, sft_steps=1000)
    study = work / "feedback"
    study.mkdir(parents=True, exist_ok=True)
    files, flipped = flipped_world(study, seed=0)
    results: dict[str, Any] = {
        "injected_flip_rates": dict(zip([f"a{i:02d}" for i in range(12)], FLIP_RATES, strict=True))
    }
    start = time.perf_counter()
    if "a" in args.parts:
        found = audit(flipped, study / "audit-flipped")
        results["a_flip_rates"] = {
            a: found.get(f"annotators/{a}/flip_rate") for a in results["injected_flip_rates"]
        }
        results["a_flags_flipped"] = found["flags"]
        biased = audit(biased_world(study), study / "audit-biased")
        results["a_flags_biased"] = biased["flags"]
        results["a_seconds"] = time.perf_counter() - start
    if "b" in args.parts:
        from preftune.data import parse_pairs

        examples = parse_pairs(load_rows(str(flipped))).examples
        versions = {"raw": flipped}
        for method in ("majority", "dawid_skene"):
            rows, counts = aggregate_ratings(examples, method)
            versions[method] = write_aggregated(study / f"pairs-{method}.jsonl", rows)
            results[f"b_counts_{method}"] = counts
        base = str(work / "base")
        results["b"] = {
            name: train_on(name, path, world, study, base, sft) for name, path in versions.items()
        }
    if "c" in args.parts:
        results["c"] = compounding(study, world, sft)
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
