"""The reward-KL frontier on the synthetic world, and reward over-optimisation made visible.

From the SFT policy of `benchmarks/rl_synthetic.py` (same world, same workdir):
- a *proxy* reward model trained on a limited number of the panel's noisy labels (--rm_pairs);
- DPO for several beta on the panel's pairs, PPO against the proxy for several kl_coef, and
  best-of-n with the proxy up to --bon_n;
- every policy's gold reward against its KL to SFT (the shape of the DPO paper's
  controlled-sentiment figure): `frontier.png`;
- gold and proxy reward against d = sqrt(KL) for best-of-n (its analytical KL) and along the PPO
  runs (held-out evaluations every 5 steps), with the functional forms of Gao et al. 2022
  (arXiv 2210.10760): best-of-n R(d) = d (a - b d), RL R(d) = d (a - b log d), fitted by least
  squares (they are linear in a and b): `overoptimisation.png` and the coefficients.

    python benchmarks/frontier.py --workdir /tmp/rl_synthetic --out frontier.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from common import evaluate_policy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rl_synthetic import prepare

from preftune.data import DataConfig, load_rows
from preftune.engine import TrainConfig, read_metrics
from preftune.judges import RewardModelJudge
from preftune.models.loading import ModelConfig
from preftune.rollout.best_of_n import run_best_of_n
from preftune.rollout.config import BoNConfig, SamplingConfig, ScoringConfig
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.ppo import PPOTrainer
from preftune.trainers.ppo_config import PPOConfig
from preftune.trainers.reward import RewardTrainer
from preftune.trainers.reward_config import RewardConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/rl_synthetic")
    parser.add_argument(
        "--rm_pairs", type=int, default=500, help="Panel-rated pairs the proxy is trained on."
    )
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    parser.add_argument("--kl_coefs", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    parser.add_argument("--ppo_steps", type=int, default=60)
    parser.add_argument("--bon_n", type=int, default=32)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--samples_per_prompt", type=int, default=2)
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def fit(d: np.ndarray, reward: np.ndarray, form: str) -> tuple[float, float]:
    """Least-squares (a, b) of R = d (a - b d) ("bon") or R = d (a - b log d) ("rl"), with R(0) = 0 built in:
    rewards are measured from the SFT policy's (d = 0)."""
    second = d**2 if form == "bon" else d * np.log(np.maximum(d, 1e-12))
    design = np.stack([d, -second], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, reward, rcond=None)
    return float(a), float(b)


def proxy_rm(work: Path, files: dict[str, Path], base: str, pairs: int) -> str:
    out = work / f"rm-{pairs}"
    if not (out / "final" / "config.json").exists():
        data = DataConfig(dataset=str(files["pairs"]), dataset_split=f"train[:{pairs}]",
                          eval_dataset=str(files["eval_pairs"]), max_length=128)  # fmt: skip
        train = TrainConfig(output_dir=str(out), learning_rate=3e-3, per_device_train_batch_size=32, num_train_epochs=2,
                            overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
        RewardTrainer(RewardConfig(model=ModelConfig(model=base), data=data, train=train)).train()
    return str(out / "final")


def ppo_run(work: Path, files: dict[str, Path], sft: str, rm: str, kl_coef: float, steps: int) -> Path:
    out = work / f"ppo-proxy-{kl_coef}"
    data = DataConfig(dataset=str(files["prompts"]), eval_dataset=str(files["eval_prompts"]), max_length=128)
    train = TrainConfig(output_dir=str(out), learning_rate=2e-4, lr_scheduler_type="constant", max_steps=steps,
                        per_device_train_batch_size=32, eval_steps=5, overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
    PPOTrainer(PPOConfig(model=ModelConfig(model=sft), data=data, train=train, sampling=SamplingConfig(max_new_tokens=24),
                         scoring=ScoringConfig(judge=f"rm:{rm}"), value_model=sft, num_mini_batches=2,
                         kl_coef=kl_coef)).train()  # fmt: skip
    return out


def plots(
    points: dict[str, list[dict]], bon: list[dict], trajectory: list[dict], fits: dict, out: Path
) -> None:
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    for name, marker in (("dpo", "s"), ("ppo", "o")):
        rows = points[name]
        axes.plot(
            [r["kl"] for r in rows],
            [r["gold_reward"] for r in rows],
            marker=marker,
            label=f"{name} (final policies)",
        )
    axes.plot(
        [r["kl_bound"] for r in bon], [r["gold_reward"] for r in bon], marker="^", label="best-of-n (proxy)"
    )
    axes.set_xlabel("KL to SFT (nats)")
    axes.set_ylabel("gold reward")
    axes.legend()
    FigureCanvasAgg(figure)
    figure.savefig(out / "frontier.png", dpi=110, bbox_inches="tight")

    figure = Figure(figsize=(11, 4.2))
    for k, (name, rows, kl_key, form) in enumerate((("best-of-n", bon, "kl_bound", "bon"),
                                                    ("PPO", trajectory, "kl", "rl"))):  # fmt: skip
        axes = figure.add_subplot(1, 2, k + 1)
        d = np.sqrt(np.maximum([r[kl_key] for r in rows], 0.0))
        grid = np.linspace(1e-3, d.max() * 1.05, 100)
        for metric, color in (("gold", "#dd8452"), ("proxy", "#4c72b0")):
            values = np.array([r[f"{metric}_reward"] for r in rows])
            axes.scatter(d, values, color=color, s=14, label=f"{metric} reward (measured)")
            a, b = fits[name][metric]["a"], fits[name][metric]["b"]
            base = fits[name][metric]["at_sft"]
            curve = grid * (a - b * (grid if form == "bon" else np.log(grid)))
            axes.plot(grid, base + curve, color=color, label=f"{metric}: fit a={a:.2f}, b={b:.2f}")
        axes.set_xlabel("sqrt(KL to SFT)")
        axes.set_ylabel("reward")
        axes.set_title(name)
        axes.legend(fontsize=7)
    FigureCanvasAgg(figure)
    figure.savefig(out / "overoptimisation.png", dpi=110, bbox_inches="tight")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.workdir)
    files, sft, _ = prepare(work, 1000)
    rm = proxy_rm(work, files, str(work / "base"), args.rm_pairs)
    proxy = RewardModelJudge(rm)
    prompts = [r["prompt"] for r in load_rows(str(files["eval_prompts"])).rows][: args.num_prompts]
    sft_point = evaluate_policy(sft, sft, prompts, args.samples_per_prompt, proxy=proxy)
    points: dict[str, list[dict[str, Any]]] = {"dpo": [sft_point], "ppo": [sft_point]}
    for beta in args.betas:
        out = work / f"dpo-{beta}"
        data = DataConfig(dataset=str(files["pairs"]), eval_dataset=str(files["eval_pairs"]), max_length=128)
        train = TrainConfig(output_dir=str(out), learning_rate=5e-4, per_device_train_batch_size=32, warmup_ratio=0.1,
                            overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
        DPOTrainer(DPOConfig(ModelConfig(model=sft), data, train, beta=beta)).train()
        points["dpo"].append({"beta": beta, **evaluate_policy(str(out / "final"), sft, prompts, args.samples_per_prompt,
                                                              proxy=proxy)})  # fmt: skip
    trajectory = [
        {"kl": 0.0, "gold_reward": sft_point["gold_reward"], "proxy_reward": sft_point["proxy_reward"]}
    ]
    for kl_coef in args.kl_coefs:
        out = ppo_run(work, files, sft, rm, kl_coef, args.ppo_steps)
        points["ppo"].append({"kl_coef": kl_coef, **evaluate_policy(str(out / "final"), sft, prompts,
                                                                    args.samples_per_prompt, proxy=proxy)})  # fmt: skip
        trajectory += [{"kl": max(r["eval/kl"], 0.0), "gold_reward": r["eval/gold_reward"], "proxy_reward": r["eval/reward"],
                        "kl_coef": kl_coef, "step": r["step"]}
                       for r in read_metrics(out / "metrics.jsonl") if "eval/gold_reward" in r]  # fmt: skip
    report = run_best_of_n(BoNConfig(model=ModelConfig(model=sft), data=DataConfig(dataset=str(files["eval_prompts"]),
                                     max_length=128), judge=f"rm:{rm}", n=args.bon_n, max_new_tokens=24,
                                     output_dir=str(work / "bon-frontier"), max_prompts=args.num_prompts,
                                     disable_tqdm=True))  # fmt: skip
    bon = [{"n": p["n"], "kl_bound": p["kl_bound"], "gold_reward": p["gold_reward"], "proxy_reward": p["judge_reward"]}
           for p in report["curve"]]  # fmt: skip
    fits: dict[str, dict[str, dict[str, float]]] = {}
    for name, rows, kl_key, form in (("best-of-n", bon, "kl_bound", "bon"), ("PPO", trajectory, "kl", "rl")):
        d = np.sqrt(np.array([r[kl_key] for r in rows]))
        fits[name] = {}
        for metric in ("gold", "proxy"):
            values = np.array([r[f"{metric}_reward"] for r in rows])
            at_sft = float(values[0])  # rows start at the SFT policy (d = 0)
            a, b = fit(d, values - at_sft, form)
            fits[name][metric] = {"a": a, "b": b, "at_sft": at_sft,
                                  "argmax_sqrt_kl": a / (2 * b) if form == "bon" and b > 0 else
                                  (math.exp(a / b - 1) if b > 0 else None)}  # fmt: skip
    plots(points, bon, trajectory, fits, work)
    for name, rows in points.items():
        for r in rows:
            print(f"{name:<5} {r.get('beta', r.get('kl_coef', 'sft'))!s:<6} gold {r['gold_reward']:.3f} "  # noqa: T201
                  f"proxy {r['proxy_reward']:.3f} KL {r['kl']:.2f}")  # fmt: skip
    for p in bon:
        print(
            f"bon   n={p['n']:<4} gold {p['gold_reward']:.3f} proxy {p['proxy_reward']:.3f} KL bound {p['kl_bound']:.2f}"
        )  # noqa: T201
    print(json.dumps(fits, indent=2))  # noqa: T201
    print(f"plots: {work / 'frontier.png'}, {work / 'overoptimisation.png'}")  # noqa: T201
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "points": points, "best_of_n": bon,
                                              "ppo_trajectory": trajectory, "fits": fits}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
