"""DPO on the synthetic world: gold reward and KL to the SFT reference for several beta.

Builds the synthetic world and a tiny model, runs SFT (as `preftune demo` does), then DPO
from the SFT model on the panel-rated pairs for each beta, samples every policy on the
held-out prompts and reports, per policy:
- the mean gold reward (95% bootstrap interval) of the samples;
- KL(policy || SFT) estimated from the samples: the mean over sampled responses y ~ pi of
  log pi(y|x) - log pi_sft(y|x) (sequence level), with its standard error;
- the mean response length in words.

Run from the repository root (a few minutes on 2 CPU cores):

    python benchmarks/dpo_beta_sweep.py --out dpo_beta_sweep.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from common import evaluate_policy

from preftune.data import DataConfig, load_rows
from preftune.engine import TrainConfig
from preftune.models.loading import ModelConfig
from preftune.models.tiny import make_tiny, texts_of_row
from preftune.tasks import SynthConfig, write_task
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.sft import SFTTrainer
from preftune.trainers.sft_config import SFTConfig

logger = logging.getLogger("dpo_beta_sweep")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    parser.add_argument("--sft_steps", type=int, default=1000)
    parser.add_argument("--dpo_epochs", type=float, default=1.0)
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="DPO learning rate.")
    parser.add_argument("--samples_per_prompt", type=int, default=4)
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dpo_beta_"))
    files = write_task(SynthConfig(out=str(work / "data")))
    texts = (t for row in load_rows(str(files["sft"])).rows for t in texts_of_row(row))
    base = make_tiny(texts, work / "base", seed=0)
    sft_train = TrainConfig(output_dir=str(work / "sft"), learning_rate=3e-3, per_device_train_batch_size=32,
                            max_steps=args.sft_steps, warmup_ratio=0.05, logging_steps=100, overwrite_output_dir=True,
                            disable_tqdm=True)  # fmt: skip
    SFTTrainer(SFTConfig(ModelConfig(model=str(base)), DataConfig(dataset=str(files["sft"]), max_length=128),
                         sft_train)).train()  # fmt: skip
    sft = str(work / "sft" / "final")
    prompts = [r["prompt"] for r in load_rows(str(files["eval_prompts"])).rows][: args.num_prompts]
    results = {"sft": evaluate_policy(sft, sft, prompts, args.samples_per_prompt)}
    for beta in args.betas:
        out = work / f"dpo-{beta}"
        train = TrainConfig(output_dir=str(out), learning_rate=args.learning_rate, per_device_train_batch_size=32,
                            num_train_epochs=args.dpo_epochs, warmup_ratio=0.1, logging_steps=20,
                            overwrite_output_dir=True, disable_tqdm=True)  # fmt: skip
        data = DataConfig(dataset=str(files["pairs"]), eval_dataset=str(files["eval_pairs"]), max_length=128)
        DPOTrainer(DPOConfig(ModelConfig(model=sft), data, train, beta=beta)).train()
        results[f"dpo beta={beta}"] = evaluate_policy(
            str(out / "final"), sft, prompts, args.samples_per_prompt
        )
    print(f"{'policy':<16}{'gold reward':>12}{'95% CI':>20}{'KL to SFT':>18}{'length':>8}")  # noqa: T201
    for name, r in results.items():
        ci = f"[{r['gold_reward_ci'][0]:.3f}, {r['gold_reward_ci'][1]:.3f}]"
        kl = f"{r['kl']:.2f} +- {r['kl_se']:.2f}"
        print(f"{name:<16}{r['gold_reward']:>12.3f}{ci:>20}{kl:>18}{r['length']:>8.1f}")  # noqa: T201
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
