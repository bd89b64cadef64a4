"""The practice loop, online DPO and constitutional AI on the synthetic world, from the SFT model.

Builds (or reuses, with the same --workdir) the world, the SFT model and the panel-trained proxy reward
model exactly as benchmarks/rl_synthetic.py does, then runs the recipes in configs/ pointed at them:
- `loop_rm`: configs/loop/synthetic.yaml, 3 rounds rated by the proxy reward model (seeds 0 and 1);
- `loop_rm_beta0.1`: the same with --beta 0.1 (over-optimisation of the proxy in round 3);
- `loop_panel`: the same rated by the simulated human panel (a pairwise judge);
- `online_dpo`: configs/online-dpo/synthetic.yaml (gold judge);
- `cai`: configs/cai/synthetic.yaml (critique-labelled pairs), and with --preference revision with
  DPO + NLL and with DPO alone.
Every number is on the 128 held-out prompts of the world (gold reward with a 95% bootstrap interval,
KL to the SFT model from the policy's samples). Writes --out (JSON) and prints markdown tables.

    python benchmarks/practice_loop.py --workdir /tmp/rl_synthetic --out practice_loop.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from rl_synthetic import CONFIGS, prepare

from preftune.config import load_config
from preftune.engine import read_metrics
from preftune.pipelines.cai import run_cai
from preftune.pipelines.config import CAIConfig, LoopConfig
from preftune.pipelines.loop import run_loop
from preftune.trainers.online_dpo import OnlineDPOTrainer
from preftune.trainers.online_dpo_config import OnlineDPOConfig

logger = logging.getLogger("practice_loop")
RUNS = ("loop_rm", "loop_rm_seed1", "loop_rm_beta0.1", "loop_panel", "online_dpo", "cai", "cai_revision",
        "cai_revision_dpo_only")  # fmt: skip


def _recipe(cls: type, name: str, files: dict[str, Path], sft: str, out: Path) -> Any:
    config = load_config(cls, CONFIGS / name / "synthetic.yaml")
    config.model.model, config.data.dataset = sft, str(files["prompts"])
    config.data.eval_dataset = str(files["eval_prompts"])
    config.train.output_dir = str(out)
    config.train.overwrite_output_dir, config.train.disable_tqdm = True, True
    return config


def run(name: str, work: Path, files: dict[str, Path], sft: str, rm: str) -> dict[str, Any]:
    out = work / "practice" / name
    start = time.perf_counter()
    if name.startswith("loop"):
        config = _recipe(LoopConfig, "loop", files, sft, out)
        config.judge = f"rm:{rm}" if name != "loop_panel" else "panel"
        if name == "loop_rm_seed1":
            config.train.seed = 1
        if name == "loop_rm_beta0.1":
            config.dpo.beta = 0.1
        summary = run_loop(config)
        result = {"rounds": summary["rounds"], "trend": summary["trend"], "hacking": summary["hacking"]}
    elif name == "online_dpo":
        config = _recipe(OnlineDPOConfig, "online-dpo", files, sft, out)
        summary = OnlineDPOTrainer(config).train()
        evals = [row for row in read_metrics(out / "metrics.jsonl") if "eval/gold_reward" in row]
        result = {"evaluations": [{k: row[k] for k in ("step", "eval/gold_reward", "eval/kl", "eval/length")}
                                  for row in evals], "hacking": summary["hacking"]}  # fmt: skip
    else:
        config = _recipe(CAIConfig, "cai", files, sft, out)
        if name != "cai":
            config = dataclasses.replace(config, preference="revision")
            if name.endswith("dpo_only"):
                config.dpo.loss_type = ["sigmoid"]
        result = run_cai(config)
    return {**result, "wall_seconds": time.perf_counter() - start}


def tables(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results.items():
        if "rounds" in r:
            lines += [f"\n{name} ({r['wall_seconds']:.0f} s): {r['trend']}; hacking flagged: {r['hacking']['flagged']}",
                      "", "| round | gold reward (95% CI) | judge reward | win rate vs round 0 | KL to SFT | length |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for x in r["rounds"]:
                lo, hi = x["gold_reward_ci"]
                lines.append(f"| {x['round']} | {x['gold_reward']:.3f} ({lo:.3f}, {hi:.3f}) | {x['judge_reward']:.3f} | "
                             f"{x['win_rate']:.3f} | {x['kl']:.2f} | {x['length']:.1f} |")  # fmt: skip
        elif "evaluations" in r:
            lines += [f"\n{name} ({r['wall_seconds']:.0f} s)", "", "| step | gold reward | KL to SFT | length |",
                      "|---|---|---|---|"]  # fmt: skip
            lines += [f"| {e['step']} | {e['eval/gold_reward']:.3f} | {e['eval/kl']:.2f} | {e['eval/length']:.1f} |"
                      for e in r["evaluations"]]  # fmt: skip
        else:
            lines += [f"\n{name} ({r['wall_seconds']:.0f} s): {r['pairs']} pairs ({r['preference']}), "
                      f"{r['revisions_changed']} of {r['prompts']} revisions changed the answer", "",
                      "| stage | gold reward (95% CI) | win rate vs SFT | KL to SFT | length |", "|---|---|---|---|---|"]  # fmt: skip
            for stage in ("before", "after_sft", "after"):
                x = r[stage]
                lo, hi = x["gold_reward_ci"]
                lines.append(f"| {stage} | {x['gold_reward']:.3f} ({lo:.3f}, {hi:.3f}) | {x['win_rate']:.3f} | "
                             f"{x['kl']:.2f} | {x['length']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--workdir", default="/tmp/rl_synthetic")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.workdir)
    files, sft, rm = prepare(work, sft_steps=1000)
    results = {name: run(name, work, files, sft, rm) for name in args.runs}
    print(tables(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
