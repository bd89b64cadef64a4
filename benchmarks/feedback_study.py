"""Feedback quality on the synthetic world: does the audit find what was injected, does Dawid-Skene
aggregation train better models than majority labels, and how does a biased panel compound over rounds?

(a) **Audit recovery.** The world's 2,000 pairs are each rated by 3 of 12 simulated annotators with no
    random flips, then every rating of annotator i is flipped with a known rate (0.02 to 0.40). A second
    panel adds a fatigued annotator and a rater group that likes long answers. `preftune audit` on each:
    estimated vs injected flip rates, and its flags.
(b) **Aggregation.** From the first panel's ratings: all ratings as pairs ("raw"), one majority-vote pair
    per item (hard label), the Dawid-Skene winner per item as a hard label, and the Dawid-Skene posterior
    as a soft label + weight. Reported: each dataset's label accuracy against gold; a reward model and a
    DPO policy trained on each (the recipes of configs/rm and the demo's DPO): the reward model's
    agreement with the gold reward on held-out pairs, and the DPO policy's held-out gold reward and KL.
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
from preftune.data.io import write_jsonl
from preftune.engine import TrainConfig
from preftune.feedback.aggregate import aggregate_ratings, write_aggregated
from preftune.feedback.audit import run_audit
from preftune.feedback.config import AuditConfig
from preftune.judges import RewardModelJudge
from preftune.models.loading import ModelConfig
from preftune.pipelines.config import LoopConfig
from preftune.pipelines.loop import run_loop
from preftune.tasks import PanelConfig, SynthConfig, get_task, write_task
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.reward import RewardTrainer
from preftune.trainers.reward_config import RewardConfig

logger = logging.getLogger("feedback_study")
FLIP_RATES = [0.02, 0.05, 0.05, 0.1, 0.1, 0.15, 0.2, 0.2, 0.25, 0.3, 0.35, 0.4]
"""Injected flip rate of annotators a00 .. a11."""


def flipped_world(work: Path, seed: int) -> tuple[dict[str, Path], Path]:
    """The world's pairs rated by 3 annotators each, who follow the gold reward (a near-deterministic panel:
    temperature 0.05, no length, position or fatigue effects), then each rating of annotator i flipped with
    probability FLIP_RATES[i]. Pairs the gold reward ties are left out (no true winner; 174 of 2,000 in
    the run reported): every remaining disagreement with gold is an injected flip."""
    panel = PanelConfig(temperature=0.05, flip_rate=0.0, fatigue=0.0, length_bias=0.0, position_bias=0.0,
                        overlap=1.0, ratings_per_pair=3)  # fmt: skip
    files = write_task(SynthConfig(out=str(work / "data-panel"), panel=panel, seed=0))
    rng = np.random.default_rng(seed)
    task = get_task("kindness")
    rows = [
        r for r in load_rows(str(files["pairs"])).rows
        if task.gold_reward(r["prompt"], r["chosen"]) != task.gold_reward(r["prompt"], r["rejected"])
    ]  # fmt: skip
    for row in rows:
        if rng.random() < FLIP_RATES[int(row["annotator"][1:])]:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["shown_first"] = "rejected" if row["shown_first"] == "chosen" else "chosen"
    path = work / "data-panel" / "pairs-flipped.jsonl"
    write_jsonl(path, rows)
    return files, path


def biased_world(work: Path) -> Path:
    """Each pair rated by 5 annotators of a near-deterministic panel (temperature 0.05, 5% careless flips,
    position bias 0.3), with a fatigued annotator (a03: flips grow from 0 to 45% over the session) and a
    group "L" that likes long answers (its length weight is -1.5: each adjective beyond 3 adds utility
    instead of costing it)."""
    gold = {"sentiment": 1.0, "relevance": 0.5, "length": 1.0, "repetition": 1.0, "format": 1.0}
    panel = PanelConfig(temperature=0.05, flip_rate=0.05, fatigue=0.0, length_bias=0.0, overlap=1.0, ratings_per_pair=5,
                        groups={"A": gold, "L": {**gold, "length": -1.5}}, group_shares={"A": 0.5, "L": 0.5})  # fmt: skip
    files = write_task(SynthConfig(out=str(work / "data-biased"), panel=panel, seed=0))
    rows = load_rows(str(files["pairs"])).rows
    sessions = {a: sum(r["annotator"] == a for r in rows) for a in {r["annotator"] for r in rows}}
    rng = np.random.default_rng(1)
    for row in rows:  # annotator a03 tires: flip probability grows from 0 to 0.45 over the session
        if row["annotator"] == "a03" and rng.random() < 0.45 * row["order"] / sessions["a03"]:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            row["shown_first"] = "rejected" if row["shown_first"] == "chosen" else "chosen"
    path = work / "data-biased" / "pairs-fatigued.jsonl"
    write_jsonl(path, rows)
    return path


def realized_flip_rates(path: Path) -> dict[str, float]:
    """Each annotator's share of ratings that disagree with the gold reward (no gold ties in the file)."""
    task = get_task("kindness")
    wrong: dict[str, list[bool]] = {}
    for r in load_rows(str(path)).rows:
        is_wrong = task.gold_reward(r["prompt"], r["chosen"]) < task.gold_reward(r["prompt"], r["rejected"])
        wrong.setdefault(r["annotator"], []).append(is_wrong)
    return {a: float(np.mean(w)) for a, w in sorted(wrong.items())}


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """feedback_flip_rates.png (injected, realized and estimated flip rates) and feedback_rounds.png (gold
    reward by round of the biased and the corrected loop), from the parts that ran."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "a_flip_rates" in results:
        names = list(results["injected_flip_rates"])
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        x = np.arange(len(names))
        series = (("injected", results["injected_flip_rates"]), ("realized (vs gold)", results["a_realized_flip_rates"]),
                  ("audit (Dawid-Skene)", results["a_flip_rates"]))  # fmt: skip
        for offset, (label, values) in zip((-0.25, 0, 0.25), series, strict=True):
            axes.bar(x + offset, [values[n] or 0.0 for n in names], width=0.25, label=label)
        axes.set_xticks(x, names, rotation=45)
        axes.set_ylabel("flip rate")
        axes.legend()
        figure.savefig(out_dir / "feedback_flip_rates.png", dpi=110, bbox_inches="tight")
        written.append(out_dir / "feedback_flip_rates.png")
    if "c" in results:
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for name, rounds in results["c"].items():
            means = [r["gold_reward"] for r in rounds]
            lows = [r["gold_reward"] - r["gold_reward_ci"][0] for r in rounds]
            highs = [r["gold_reward_ci"][1] - r["gold_reward"] for r in rounds]
            axes.errorbar(
                [r["round"] for r in rounds], means, yerr=[lows, highs], marker="o", capsize=3, label=name
            )
        axes.set_xlabel("round of preftune loop")
        axes.set_ylabel("held-out gold reward (95% CI)")
        axes.set_xticks(range(len(next(iter(results["c"].values())))))
        axes.legend()
        figure.savefig(out_dir / "feedback_rounds.png", dpi=110, bbox_inches="tight")
        written.append(out_dir / "feedback_rounds.png")
    return written


def audit(path: Path, out: Path) -> dict[str, Any]:
    result = run_audit(AuditConfig(dataset=str(path), output_dir=str(out)))
    return result


def label_accuracy(path: Path) -> float:
    """Share of a dataset's rows whose chosen response has the higher gold reward (no gold ties here)."""
    task = get_task("kindness")
    rows = load_rows(str(path)).rows
    return float(np.mean([task.gold_reward(r["prompt"], r["chosen"]) > task.gold_reward(r["prompt"], r["rejected"])
                          for r in rows]))  # fmt: skip


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
    name: str, data: Path, files: dict[str, Path], work: Path, base: str, sft: str, beta: float, steps: int
) -> dict[str, Any]:
    """A reward model (2 x `steps` optimizer steps) and a DPO policy (`steps`) on one version of the ratings:
    the same number of steps for every version (the raw ratings have 3 rows per item)."""
    rm_config = load_config(RewardConfig, CONFIGS / "rm" / "synthetic.yaml")
    rm_config.model.model, rm_config.data.dataset, rm_config.data.eval_dataset = base, str(data), None
    rm_config.train.output_dir, rm_config.train.overwrite_output_dir = str(work / f"rm-{name}"), True
    rm_config.train.disable_tqdm, rm_config.train.max_steps = True, 2 * steps
    RewardTrainer(rm_config).train()
    train = TrainConfig(output_dir=str(work / f"dpo-{name}"), learning_rate=5e-4, per_device_train_batch_size=32, max_steps=steps,
                        warmup_ratio=0.1, logging_steps=20, overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
    DPOTrainer(DPOConfig(model=ModelConfig(model=sft), data=DataConfig(dataset=str(data), max_length=128),
                         train=train, beta=beta)).train()  # fmt: skip
    prompts = [row["prompt"] for row in load_rows(str(files["eval_prompts"])).rows][:128]
    policy = evaluate_policy(str(work / f"dpo-{name}" / "final"), sft, prompts, samples_per_prompt=2)
    return {"rm_gold_agreement": gold_agreement(str(work / f"rm-{name}" / "final"), files), "dpo": policy}


def compounding(work: Path, files: dict[str, Path], sft: str) -> dict[str, Any]:
    gold = {"sentiment": 1.0, "relevance": 0.5, "length": 1.0, "repetition": 1.0, "format": 1.0}
    groups = {"A": gold, "L": {**gold, "length": -1.5}}  # no per-word length bias: group A is unbiased
    results = {}
    for name, shares in (
        ("biased panel (A + L)", {"A": 0.5, "L": 0.5}),
        ("group A only", {"A": 1.0, "L": 0.0}),
    ):
        config = load_config(LoopConfig, CONFIGS / "loop" / "synthetic.yaml")
        config.model.model, config.data.dataset = sft, str(files["prompts"])
        config.data.eval_dataset = str(files["eval_prompts"])
        config.judge = "panel"
        config.judge_options = {
            "panel_config": {"groups": groups, "group_shares": shares, "length_bias": 0.0}
        }
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
    parser.add_argument(
        "--figures", default=str(Path(__file__).parent / "figures"), help="Folder for the PNGs."
    )
    parser.add_argument("--dpo_beta", type=float, default=0.5, help="DPO's beta in part (b).")
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
        results["a_realized_flip_rates"] = realized_flip_rates(flipped)
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
            results[f"b_counts_{method}"] = counts
            hard = [
                {k: v for k, v in row.items() if k not in ("chosen_probability", "weight")} for row in rows
            ]
            if method == "majority":  # majority labels as they are usually used: hard, unweighted
                versions["majority"] = write_aggregated(study / "pairs-majority.jsonl", hard)
            else:  # the posterior's winner as a hard label, and the posterior as a soft label + weight
                versions["dawid_skene_hard"] = write_aggregated(study / "pairs-dawid_skene_hard.jsonl", hard)
                versions["dawid_skene"] = write_aggregated(study / "pairs-dawid_skene.jsonl", rows)
        results["b_label_accuracy"] = {name: label_accuracy(path) for name, path in versions.items()}
        base = str(work / "base")
        steps = -(
            -results["b_counts_majority"]["rows"] // 32
        )  # one epoch of the aggregated data, for every version
        results["b_steps_per_epoch"] = steps
        results["b"] = {
            name: train_on(name, path, world, study, base, sft, args.dpo_beta, steps)
            for name, path in versions.items()
        }
    if "c" in args.parts:
        results["c"] = compounding(study, world, sft)
    print(json.dumps(results, indent=2, default=str))
    plot(results, Path(args.figures))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
