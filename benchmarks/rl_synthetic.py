"""RL on the synthetic world: PPO, RLOO and GRPO against the gold reward, PPO against a proxy reward
model, and best-of-n, each measured on held-out prompts against the SFT policy.

Builds the synthetic world and a tiny model and runs SFT (as `preftune demo` does), trains a proxy
reward model on the panel-rated pairs (as configs/rm/synthetic.yaml does), then runs each method
from the SFT model with the recipes in configs/{ppo,rloo,grpo}/synthetic.yaml and samples every
final policy on the held-out prompts. Reported per policy: mean gold reward (95% bootstrap
interval), KL(policy || SFT) estimated from the samples (mean sequence log-ratio +- standard
error), mean length in words, the proxy reward model's mean score, and the training wall time.
Best-of-n reports its curve (judge and gold reward, measured and analytical KL) for the gold
judge and for the proxy reward model.

Run from the repository root (about 20-30 minutes on 2 CPU cores; --workdir reuses the SFT
model and the reward model of an earlier run):

    python benchmarks/rl_synthetic.py --workdir /tmp/rl_synthetic --out rl_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from common import evaluate_policy

from preftune.config import load_config
from preftune.data import DataConfig, load_rows
from preftune.engine import TrainConfig
from preftune.judges import RewardModelJudge
from preftune.models.loading import ModelConfig
from preftune.models.tiny import make_tiny, texts_of_row
from preftune.rollout.best_of_n import run_best_of_n
from preftune.rollout.config import BoNConfig
from preftune.tasks import SynthConfig, write_task
from preftune.trainers.ppo import PPOTrainer
from preftune.trainers.ppo_config import PPOConfig
from preftune.trainers.reward import RewardTrainer
from preftune.trainers.reward_config import RewardConfig
from preftune.trainers.rloo_grpo import RLOOTrainer
from preftune.trainers.rloo_grpo_config import GRPOConfig, RLOOConfig
from preftune.trainers.sft import SFTTrainer
from preftune.trainers.sft_config import SFTConfig

logger = logging.getLogger("rl_synthetic")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ppo", "rloo", "grpo", "ppo_rm", "bon"])
    parser.add_argument("--sft_steps", type=int, default=1000)
    parser.add_argument("--rl_steps", type=int, default=None, help="Override the recipes' max_steps.")
    parser.add_argument(
        "--proxy_kl_coef", type=float, default=0.1, help="PPO's kl_coef against the proxy RM."
    )
    parser.add_argument("--bon_n", type=int, default=16)
    parser.add_argument("--samples_per_prompt", type=int, default=4)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--workdir", default="/tmp/rl_synthetic")
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def prepare(work: Path, sft_steps: int) -> tuple[dict[str, Path], str, str]:
    """The world's files, the SFT model and the proxy reward model (reused when already there)."""
    files = write_task(SynthConfig(out=str(work / "data")))
    base = work / "base"
    if not (base / "config.json").exists():
        texts = (t for row in load_rows(str(files["sft"])).rows for t in texts_of_row(row))
        make_tiny(texts, base, seed=0)
    sft = work / "sft" / "final"
    if not (sft / "config.json").exists():
        train = TrainConfig(output_dir=str(work / "sft"), learning_rate=3e-3, per_device_train_batch_size=32,
                            max_steps=sft_steps, warmup_ratio=0.05, logging_steps=100, overwrite_output_dir=True,
                            disable_tqdm=True)  # fmt: skip
        SFTTrainer(SFTConfig(ModelConfig(model=str(base)), DataConfig(dataset=str(files["sft"]), max_length=128),
                             train)).train()  # fmt: skip
    rm = work / "rm" / "final"
    if not (rm / "config.json").exists():
        config = load_config(RewardConfig, CONFIGS / "rm" / "synthetic.yaml")
        config.model.model, config.data.dataset = str(base), str(files["pairs"])
        config.data.eval_dataset = str(files["eval_pairs"])
        config.train.output_dir, config.train.overwrite_output_dir = str(work / "rm"), True
        config.train.disable_tqdm = True
        RewardTrainer(config).train()
    return files, str(sft), str(rm)


def recipe(
    config_cls: type, name: str, work: Path, files: dict[str, Path], sft: str, args: argparse.Namespace
) -> Any:
    """configs/<name>/synthetic.yaml pointed at this run's files."""
    config = load_config(config_cls, CONFIGS / name / "synthetic.yaml")
    config.model.model, config.data.dataset = sft, str(files["prompts"])
    config.data.eval_dataset = str(files["eval_prompts"])
    config.train.overwrite_output_dir, config.train.disable_tqdm = True, True
    if args.rl_steps:
        config.train.max_steps = args.rl_steps
    return config


def run_method(
    method: str, work: Path, files: dict[str, Path], sft: str, rm: str, args: argparse.Namespace
) -> str:
    """Train one method; returns the final policy's folder."""
    out = work / method
    if method == "ppo_rm":
        config = recipe(PPOConfig, "ppo", work, files, sft, args)
        config.scoring.judge, config.kl_coef = f"rm:{rm}", args.proxy_kl_coef
    elif method == "ppo":
        config = recipe(PPOConfig, "ppo", work, files, sft, args)
    else:
        config = recipe(RLOOConfig if method == "rloo" else GRPOConfig, method, work, files, sft, args)
    config.train.output_dir = str(out)
    (PPOTrainer if method.startswith("ppo") else RLOOTrainer)(config).train()
    return str(out / "final")


def run_bon(
    judge: str, name: str, work: Path, files: dict[str, Path], sft: str, args: argparse.Namespace
) -> dict:
    config = BoNConfig(
        model=ModelConfig(model=sft), data=DataConfig(dataset=str(files["eval_prompts"]), max_length=128),
        judge=judge, n=args.bon_n, max_new_tokens=24, output_dir=str(work / name), max_prompts=args.num_prompts,
        disable_tqdm=True,
    )  # fmt: skip
    return run_best_of_n(config)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.workdir)
    files, sft, rm = prepare(work, args.sft_steps)
    proxy = RewardModelJudge(rm)
    prompts = [r["prompt"] for r in load_rows(str(files["eval_prompts"])).rows][: args.num_prompts]
    results: dict[str, Any] = {
        "sft": evaluate_policy(sft, sft, prompts, args.samples_per_prompt, proxy=proxy)
    }
    curves = {}
    for method in args.methods:
        start = time.perf_counter()
        if method == "bon":
            curves["gold"] = run_bon("gold", "bon-gold", work, files, sft, args)
            curves["proxy_rm"] = run_bon(f"rm:{rm}", "bon-rm", work, files, sft, args)
            continue
        final = run_method(method, work, files, sft, rm, args)
        seconds = time.perf_counter() - start
        results[method] = evaluate_policy(final, sft, prompts, args.samples_per_prompt, proxy=proxy)
        results[method]["train_seconds"] = seconds
    header = f"{'policy':<10}{'gold reward':>12}{'95% CI':>18}{'KL to SFT':>16}{'length':>8}{'proxy RM':>10}{'train s':>9}"
    print(header)  # noqa: T201
    for name, r in results.items():
        ci = f"[{r['gold_reward_ci'][0]:.3f}, {r['gold_reward_ci'][1]:.3f}]"
        kl = f"{r['kl']:.2f} +- {r['kl_se']:.2f}"
        seconds = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-"
        print(f"{name:<10}{r['gold_reward']:>12.3f}{ci:>18}{kl:>16}{r['length']:>8.1f}"  # noqa: T201
              f"{r['proxy_reward']:>10.3f}{seconds:>9}")  # fmt: skip
    for judge, report in curves.items():
        print(f"\nbest-of-n with the {judge} judge")  # noqa: T201
        for point in report["curve"]:
            print(f"  n={point['n']:<3} judge {point['judge_reward']:.3f}  gold {point.get('gold_reward', float('nan')):.3f}"  # noqa: T201
                  f"  KL measured {point['kl_measured']:.3f}  bound {point['kl_bound']:.3f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "results": results, "best_of_n": curves}, indent=2)
        )


if __name__ == "__main__":
    main()
