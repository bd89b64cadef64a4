"""How large a model DPO can train in this machine's memory: preftune against TRL 1.16, with and without
gradient checkpointing and with LoRA.

A ladder of random-init Llama models with the shapes of real checkpoints (from SmolLM2-135M to
Llama-3.2-3B; --rungs) is trained by DPO for --steps optimizer steps of --batch_size HH-RLHF pairs under
four settings: full fine-tuning, full fine-tuning with gradient checkpointing, LoRA (r 16 on every
linear layer) and LoRA with gradient checkpointing. Each (framework, setting, rung) runs in its own
process under an address-space limit of --limit_gib (RLIMIT_AS), so a run that would need more memory
fails there with an allocation error instead of taking the machine down; the ladder of a (framework,
setting) stops at its first failure. Peak RSS is the worker's (getrusage); the largest rung that ran is
the answer, and the table shows every rung's peak memory side by side. The limit counts virtual memory,
which is about 1.8 GiB above resident memory once torch, transformers and TRL are imported (VmSize 2.14
GiB, VmRSS 0.46 GiB here), so a 23 GiB limit on this 24 GiB machine leaves a run about 21 GiB of RAM: a
rung that fits did train here; one that does not might still fit with a few hundred MiB more.

Held equal: float32 on CPU (bf16 with autocast on CUDA is each framework's choice, not used here), sigmoid
loss, beta 0.1, AdamW (torch's fused kernel in both by default: TRL's default `adamw_torch_fused`, and
preftune's `--optim adamw_torch_fused`, its default on CUDA; --preftune_optim adamw_torch measures its CPU
default, which allocates a temporary the size of each weight matrix), batch and sequence lengths (each
pair's prompt, chosen and rejected text are the same; both frameworks tokenize them with the same
tokenizer, a byte-level BPE of 8,192 tokens trained on the rows; the embedding is the rung's full
vocabulary). Each framework gets its lowest-memory reference for the setting: with full fine-tuning both
precompute the reference log-probs before training (`precompute_ref_log_probs`: both score the pairs with
the policy before its first step and keep no reference model), with LoRA both use the base model with the
adapter disabled (no copy). Neither saves a model (preftune's final save is skipped, TRL's run saves
nothing): the figure is training memory. Model objects are built in the worker and passed to both trainers
(no checkpoint on disk).

    python benchmarks/memory_scaling.py --out memory_scaling.json        # about an hour on 2 cores
    python benchmarks/memory_scaling.py --rungs tiny --limit_gib 4               # a smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from common import MODEL_SHAPES, environment, llama_config, peak_rss_mib
from dpo_vs_trl import write_pair_files

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"
FRAMEWORKS = ("preftune", "trl")
SETTINGS = ("full", "full_gc", "lora", "lora_gc")
VOCAB = 8192  # the BPE tokenizer's size; every rung's embedding keeps its real vocabulary
BETA = 0.1
LORA = {"r": 16, "alpha": 32}
RUNGS = MODEL_SHAPES
LADDER = (
    "smollm2-135m",
    "smollm2-360m",
    "qwen2.5-0.5b",
    "tinyllama-1.1b",
    "llama-3.2-1b",
    "smollm2-1.7b",
    "llama-3.2-3b",
)

logger = logging.getLogger("memory_scaling")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--data", default=DEFAULT_DATA, help="Pairs file (chosen/rejected); relative to the repo root.")
    add("--rungs", nargs="+", default=list(LADDER), choices=list(RUNGS), help="Model shapes, smallest first.")
    add("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="Memory settings to try.")
    add("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS, help="Trainers to compare.")
    add("--limit_gib", type=float, default=23.0, help="Address-space limit of every worker (GiB).")
    add(
        "--steps",
        type=int,
        default=1,
        help="Optimizer steps per run (the first allocates the optimizer state).",
    )
    add("--preftune_optim", default="adamw_torch_fused", choices=("adamw_torch", "adamw_torch_fused"),
        help="preftune's --optim (TRL steps adamw_torch_fused, its default).")  # fmt: skip
    add("--batch_size", type=int, default=2, help="Pairs per optimizer step.")
    add("--max_length", type=int, default=512, help="Longest prompt + response in tokens.")
    add("--workdir", default=None, help="Folder for the data files and worker logs (default: temp).")
    add("--out", default=None, help="Also write all results to this JSON file.")
    add("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_data(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    """The tokenizer and the first steps x batch_size pairs of HH that preftune keeps uncut, as texts for
    preftune (the rows' chosen/rejected transcripts) and as prompt/chosen/rejected for TRL."""
    from preftune.data import encode_dataset, load_rows, parse_pairs
    from preftune.models.tiny import texts_of_row, train_tokenizer

    data = Path(args.data) if Path(args.data).is_absolute() else (REPO / args.data).resolve()
    table = load_rows(str(data), "train[:400]")
    tokenizer = train_tokenizer((text for row in table.rows for text in texts_of_row(row)), VOCAB)
    tokenizer.save_pretrained(workdir / "tokenizer")
    parsed = parse_pairs(table, skip_invalid=True, dialogue_format="text")
    encoded, _ = encode_dataset(tokenizer, parsed, args.max_length, "left", skip_invalid=True)
    needed = args.steps * args.batch_size
    # Uncut pairs only: the frameworks cut long prompts differently, and the workload must be the same.
    pairs = [pair for pair in encoded if pair.num_truncated == 0][:needed]
    if len(pairs) < needed:
        raise ValueError(
            f"Only {len(pairs)} uncut pairs in the first 400 rows; lower --steps or --batch_size."
        )
    rows = dict(zip(table.row_numbers, table.rows, strict=True))
    examples = {example.row: example for example in parsed.examples}
    written = write_pair_files(workdir, "pairs", pairs, rows, examples)  # dpo_vs_trl's two layouts
    files = {"tokenizer": str(workdir / "tokenizer"), "preftune": written["pairs_preftune"],
             "trl": written["pairs_trl"]}  # fmt: skip
    tokens = [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs]
    files["tokens_per_pair"] = str(sum(tokens) / len(tokens))
    return files


def build_model(shape: dict[str, Any], tokenizer: Any, seed: int = 0) -> Any:
    """A random-init Llama of `shape` whose special token ids are the tokenizer's. (The embedding row of
    `pad_token_id` starts at zero; were it another token's, such as BOS, that token's hidden state would stay
    zero through every layer, and the backward pass through 60 RMSNorms at zero, each scaling by 1/sqrt(eps),
    overflows: NaN gradients at step 1 from 30 layers on, which this benchmark first ran into.)"""
    from transformers import LlamaForCausalLM

    from preftune.models.loading import token_id

    config = llama_config(shape)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        token_id(tokenizer, name) for name in ("bos", "eos", "pad")
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def run_preftune(job: dict[str, Any], model: Any, tokenizer: Any, dataset: Any) -> int:
    from preftune import DPOConfig, DPOTrainer, make_config
    from preftune.trainers import dpo

    dpo.save_final = lambda *args, **kwargs: None  # training memory only (TRL's run saves nothing either)
    lora = job["setting"].startswith("lora")
    config = make_config(
        DPOConfig, output_dir=job["output_dir"], max_steps=job["steps"], per_device_train_batch_size=job["batch_size"],
        max_length=job["max_length"], beta=BETA, loss_type=["sigmoid"], learning_rate=1e-5, bf16=False,
        gradient_checkpointing=job["setting"].endswith("_gc"), use_peft=lora, lora_r=LORA["r"],
        lora_alpha=LORA["alpha"], precompute_ref_log_probs=not lora, save_steps=0, logging_steps=1,
        disable_tqdm=True, overwrite_output_dir=True, optim=job["preftune_optim"],
    )  # fmt: skip
    trainer = DPOTrainer(args=config, model=model, processing_class=tokenizer, train_dataset=dataset)
    trainer.train()
    return trainer.engine.step


def run_trl(job: dict[str, Any], model: Any, tokenizer: Any, dataset: Any) -> int:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    warnings.filterwarnings("ignore", message="The `'keep_end'` truncation mode is deprecated")
    lora = job["setting"].startswith("lora")
    args = DPOConfig(
        output_dir=job["output_dir"], max_steps=job["steps"], per_device_train_batch_size=job["batch_size"],
        max_length=job["max_length"], truncation_mode="keep_end", beta=BETA, loss_type=["sigmoid"],
        learning_rate=1e-5, bf16=False, fp16=False, gradient_checkpointing=job["setting"].endswith("_gc"),
        precompute_ref_log_probs=not lora, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=1, disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0,
        dataloader_num_workers=0,
    )  # fmt: skip
    peft_config = (
        LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        if lora
        else None
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    return trainer.state.global_step


def worker(job_path: Path) -> None:
    """One (framework, setting, rung) run; writes steps done, seconds and peak RSS to the job's result file."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    job = json.loads(job_path.read_text())
    logging.basicConfig(level=logging.WARNING)
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    records = [json.loads(line) for line in Path(job["pairs"]).read_text().splitlines()]
    start = time.perf_counter()
    model = build_model(job["shape"], tokenizer)
    parameters = model.num_parameters()  # before LoRA adds its adapters
    built = time.perf_counter()
    run = run_preftune if job["framework"] == "preftune" else run_trl
    steps = run(job, model, tokenizer, Dataset.from_list(records))
    result = {"steps": steps, "build_seconds": built - start, "train_seconds": time.perf_counter() - built,
              "peak_rss_mib": peak_rss_mib(), "parameters": parameters}  # fmt: skip
    Path(job["result"]).write_text(json.dumps(result))


def limit_address_space(gib: float) -> None:
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_one(job: dict[str, Any], workdir: Path, limit_gib: float) -> dict[str, Any]:
    tag = f"{job['framework']}_{job['setting']}_{job['rung']}"
    job_path, result_path, log_path = (workdir / f"{kind}_{tag}.{ext}" for kind, ext in
                                       (("job", "json"), ("result", "json"), ("log", "txt")))  # fmt: skip
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps({**job, "output_dir": str(workdir / tag), "result": str(result_path)}))
    started = time.perf_counter()
    with log_path.open("w") as log:
        finished = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: limit_address_space(limit_gib),
        )  # fmt: skip
    wall = round(time.perf_counter() - started, 1)
    if finished.returncode == 0 and result_path.exists():
        return {"fits": True, "wall_seconds": wall, **json.loads(result_path.read_text())}
    lines = log_path.read_text().splitlines()
    memory = [line for line in lines if "alloc" in line.lower() or "MemoryError" in line]
    reason = (memory or lines or [f"exit {finished.returncode}"])[-1].strip()
    return {"fits": False, "wall_seconds": wall, "exit_code": finished.returncode, "reason": reason[:300]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(Path(args.worker))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="memory_scaling_"))
    workdir.mkdir(parents=True, exist_ok=True)
    files = write_data(args, workdir)
    results: dict[str, Any] = {
        "environment": environment(0), "limit_gib": args.limit_gib, "steps": args.steps,
        "batch_size": args.batch_size, "max_length": args.max_length, "preftune_optim": args.preftune_optim,
        "tokens_per_pair": float(files["tokens_per_pair"]), "rungs": {r: RUNGS[r] for r in args.rungs}, "runs": {},
    }  # fmt: skip
    for framework in args.frameworks:
        for setting in args.settings:
            for rung in args.rungs:
                job = {"framework": framework, "setting": setting, "rung": rung, "shape": RUNGS[rung],
                       "tokenizer": files["tokenizer"], "pairs": files[framework], "steps": args.steps,
                       "batch_size": args.batch_size, "max_length": args.max_length,
                       "preftune_optim": args.preftune_optim}  # fmt: skip
                logger.info("%s %s %s ...", framework, setting, rung)
                outcome = run_one(job, workdir, args.limit_gib)
                results["runs"][f"{framework}/{setting}/{rung}"] = outcome
                logger.info("  %s", json.dumps(outcome))
                if args.out:
                    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
                if not outcome["fits"]:
                    break  # larger rungs need more memory still
    print(table(results, args))


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    runs = results["runs"]
    header = (
        "| model (parameters) | "
        + " | ".join(f"{f} {s}" for s in args.settings for f in args.frameworks)
        + " |"
    )
    lines = [header, "|---|" + "---|" * (len(args.settings) * len(args.frameworks))]
    for rung in args.rungs:
        cells = []
        size = next(
            (r["parameters"] for key, r in runs.items() if key.endswith(f"/{rung}") and r["fits"]), None
        )
        for setting in args.settings:
            for framework in args.frameworks:
                run = runs.get(f"{framework}/{setting}/{rung}")
                cells.append(
                    "-" if run is None else f"{run['peak_rss_mib']:,.0f}" if run["fits"] else "does not fit"
                )
        label = f"{rung} ({size / 1e6:,.0f}M)" if size else rung
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    largest = []
    for setting in args.settings:
        for framework in args.frameworks:
            fitted = [
                rung for rung in args.rungs if runs.get(f"{framework}/{setting}/{rung}", {}).get("fits")
            ]
            largest.append(f"{framework} {setting}: {fitted[-1] if fitted else 'none'}")
    return "\n".join(
        [
            *lines,
            "",
            f"Peak RSS MiB under a {args.limit_gib} GiB limit. Largest that fits: " + "; ".join(largest),
        ]
    )


if __name__ == "__main__":
    main()
