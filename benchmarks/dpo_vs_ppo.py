"""DPO against PPO on the synthetic world: the same SFT model, the same panel-rated pairs, cost and quality.

Both start from the SFT model of benchmarks/rl_synthetic.py and learn from the same 2,000 panel-rated pairs:
- DPO directly on the pairs (configs/dpo/synthetic.yaml);
- RLHF: a reward model on the pairs (configs/rm/synthetic.yaml), then PPO against it
  (configs/ppo/synthetic.yaml with `--judge rm:...`); its cost is the reward model's plus PPO's;
- PPO cut to DPO's budget: its steps scaled to what is left of DPO's wall time after the reward model
  (at least one step; the table shows the time it really took);
- DPO given RLHF's budget: as many epochs over the pairs as fit in the reward model's and PPO's time.
Every step is a `preftune` command under /usr/bin/time (wall seconds and peak RSS of the whole command,
loading included). The policies are then measured on the 128 held-out prompts by `preftune eval --policy`
against the SFT model: gold reward (95% bootstrap interval), the proxy's reward, win rate, KL and length.

    PYTHONPATH=benchmarks python benchmarks/dpo_vs_ppo.py --workdir /tmp/rl_synthetic --out dpo_vs_ppo.json

The workdir's world, SFT model and reward model are reused when they are there (the reward model step is
always timed in its own folder, `rm-timed/`).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from common import timed_command
from rl_synthetic import prepare

REPO = Path(__file__).resolve().parents[1]
NAMES = ("dpo", "ppo", "ppo_budget", "dpo_budget")


def timed(name: str, argv: list[str], work: Path) -> dict[str, float]:
    """Run `preftune *argv` under /usr/bin/time; its wall seconds and peak RSS (MiB)."""
    print(f"[{name}] {shlex.join(argv)}", flush=True)
    log = work / f"{name}.log"
    code, wall, peak = timed_command([sys.executable, "-m", "preftune.cli", *argv], log, REPO)
    if code != 0 or peak is None:
        sys.exit(f"[{name}] failed with exit code {code}; see {log}")
    print(f"[{name}] {wall:.1f} s, peak RSS {peak:.0f} MiB", flush=True)
    return {"wall_seconds": round(wall, 1), "peak_rss_mib": round(peak)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default="/tmp/rl_synthetic", help="Folder of the world, SFT model and runs."
    )
    parser.add_argument("--out", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--sft_steps", type=int, default=1000, help="SFT steps when the SFT model is built.")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    runs = work / "dpo_vs_ppo"
    runs.mkdir(parents=True, exist_ok=True)
    files, sft, _ = prepare(work, args.sft_steps)
    base, pairs = str(work / "base"), str(files["pairs"])
    common = ["--overwrite_output_dir", "true", "--disable_tqdm", "true"]
    cost: dict[str, dict[str, float]] = {}
    cost["dpo"] = timed("dpo", ["dpo", "--config", "configs/dpo/synthetic.yaml", "--model", sft, "--dataset", pairs,
                                "--eval_dataset", str(files["eval_pairs"]), "--output_dir", str(runs / "dpo"),
                                *common], runs)  # fmt: skip
    rm = runs / "rm-timed"
    cost["rm"] = timed("rm", ["rm", "--config", "configs/rm/synthetic.yaml", "--model", base, "--dataset", pairs,
                              "--eval_dataset", str(files["eval_pairs"]), "--output_dir", str(rm), *common], runs)  # fmt: skip
    ppo = ["ppo", "--config", "configs/ppo/synthetic.yaml", "--model", sft, "--dataset", str(files["prompts"]),
           "--eval_dataset", str(files["eval_prompts"]), "--judge", f"rm:{rm / 'final'}", *common]  # fmt: skip
    cost["ppo"] = timed("ppo", [*ppo, "--output_dir", str(runs / "ppo")], runs)
    # PPO's steps scaled to what is left of DPO's wall time after the reward model (whole commands: loading
    # and evaluations count against the budget too, so the cut run stays within it); at least one step
    steps = 40  # configs/ppo/synthetic.yaml
    left = cost["dpo"]["wall_seconds"] - cost["rm"]["wall_seconds"]
    budget_steps = max(1, min(steps, math.floor(steps * left / cost["ppo"]["wall_seconds"])))
    cost["ppo_budget"] = timed("ppo_budget", [*ppo, "--max_steps", str(budget_steps), "--output_dir",
                                              str(runs / "ppo_budget")], runs)  # fmt: skip
    # DPO given what RLHF spent (reward model + PPO): as many epochs over the pairs as fit in that time
    epochs = max(
        1,
        math.floor((cost["rm"]["wall_seconds"] + cost["ppo"]["wall_seconds"]) / cost["dpo"]["wall_seconds"]),
    )
    cost["dpo_budget"] = timed("dpo_budget", ["dpo", "--config", "configs/dpo/synthetic.yaml", "--model", sft,
                                              "--dataset", pairs, "--eval_dataset", str(files["eval_pairs"]),
                                              "--num_train_epochs", str(epochs), "--output_dir",
                                              str(runs / "dpo_budget"), *common], runs)  # fmt: skip
    policies = [f"{name}={runs / name / 'final'}" for name in NAMES]
    cost["eval"] = timed("eval", ["eval", "--policy", *policies, "--reference", sft, "--prompts",
                                  str(files["eval_prompts"]), "--judge", f"rm:{rm / 'final'}", "--samples_per_prompt",
                                  "2", "--max_new_tokens", "24", "--output_dir", str(runs / "eval")], runs)  # fmt: skip
    evaluation = json.loads((runs / "eval" / "eval.json").read_text())
    results: dict[str, Any] = {"cost": cost, "ppo_budget_steps": budget_steps, "dpo_budget_epochs": epochs,
                               "policies": {}}  # fmt: skip
    for name in ("reference", *NAMES):
        prefix = f"policy/{name}/"
        results["policies"][name] = {
            k[len(prefix) :]: v for k, v in evaluation.items() if k.startswith(prefix)
        }
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    cost, policies = results["cost"], results["policies"]
    spent = {
        "dpo": cost["dpo"],
        "dpo_budget": cost["dpo_budget"],
        "ppo": {"wall_seconds": cost["rm"]["wall_seconds"] + cost["ppo"]["wall_seconds"],
                "peak_rss_mib": max(cost["rm"]["peak_rss_mib"], cost["ppo"]["peak_rss_mib"])},
        "ppo_budget": {"wall_seconds": cost["rm"]["wall_seconds"] + cost["ppo_budget"]["wall_seconds"],
                       "peak_rss_mib": max(cost["rm"]["peak_rss_mib"], cost["ppo_budget"]["peak_rss_mib"])},
    }  # fmt: skip
    lines = ["| policy | gold reward | 95% CI | proxy reward | win rate vs SFT (proxy) | KL to SFT | length | "
             "wall s (RM + PPO) | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in ("reference", *NAMES):
        p = policies[name]
        ci = p["gold_reward_ci"]
        wall = f"{spent[name]['wall_seconds']:.1f}" if name in spent else "-"
        peak = spent.get(name, {}).get("peak_rss_mib", "-")
        lines.append(f"| {name} | {p['gold_reward']:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {p['judge_reward']:.3f} | "
                     f"{p['win_rate']:.3f} | {p['kl']:.2f} | {p['length']:.1f} | {wall} | {peak} |")  # fmt: skip
    lines.append(f"\nPPO within DPO's budget: {results['ppo_budget_steps']} steps; DPO within RLHF's: "
                 f"{results['dpo_budget_epochs']} epochs. Steps: "
                 + ", ".join(f"{k} {v['wall_seconds']} s / {v['peak_rss_mib']} MiB" for k, v in cost.items()))  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
