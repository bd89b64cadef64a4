"""Reward-model training, side by side: preftune's RewardTrainer against TRL's RewardTrainer.

One run builds a tiny random-init Llama once (or reads a pretrained checkpoint, --model), trains
a Bradley-Terry reward model from it with each framework (each in its own subprocess, so imports
and memory do not mix), scores both final models with the same evaluator on the same held-out
pairs, and prints a table:

- held-out pairwise accuracy with its 95% Wilson interval, and the length probe (accuracy of
  "prefer the longer response" on the same pairs, score-length correlation);
- pairs/s and real tokens/s of the `train()` call (real tokens: the chosen plus rejected
  sequence of every pair seen, padding excluded, the same count for both frameworks);
- train wall seconds, peak RSS of the worker process, the RSS increase during `train()`
  (peak after minus current before) and, on CUDA, the peak allocated GPU memory;
- the ratio preftune / TRL for each, and the issue's targets (pairs/s >= 2x, peak memory
  no higher, accuracy at or above the lower end of TRL's interval);
- with --model, the first-step loss of each framework (and its |difference|, target 1e-4): one
  optimizer step, in a separate untimed run, on one batch of exactly the first --batch_size
  training pairs whose prompt was not cut (all of them in one batch if fewer), so the data order
  cannot differ; the score heads start equal (their checksums are printed).

Run from the repository root (a full run is minutes on a GPU, much longer on 2 CPU cores):

    python benchmarks/rm_vs_trl.py --out results.json
    python benchmarks/rm_vs_trl.py --max_pairs 120 --train_pairs 100 --size tiny \\
        --vocab_size 600 --max_length 256 --batch_size 8          # a quick check
    python benchmarks/rm_vs_trl.py --model /tmp/models/smollm2 --train_pairs 16 --max_pairs 24 \\
        --batch_size 4 --max_length 256 --learning_rate 1e-5      # SmolLM2-135M-Instruct: a smoke test

With --model PATH (a local Hugging Face causal-LM folder, read in place; --size and --vocab_size are
then errors) both frameworks start from that checkpoint and its tokenizer, and the rows go through
its chat template: preftune reads the HH transcripts with dialogue_format "hh" (message lists,
preftune/data/dialogues.py) for training and for the held-out evaluation; TRL gets preftune's token
ids of those conversations (--trl_input ids, the default: identical sequences, so the comparison is
of the training code alone) or, with --trl_input text, the full chosen and rejected conversations
as message lists, to which it applies the chat template itself (the same ids for every pair that
fits; it drops the others). With ChatML each sequence ends "<|im_end|>\\n", so TRL's "rightmost
token that is not the pad token" (pad = <|im_end|>) is the last token, where preftune reads its
score too. The default --learning_rate suits the random-init model; a pretrained one wants ~1e-5.

Held equal: the base checkpoint, loaded as a sequence classifier whose new score head is
initialised under the same seed (the table prints a checksum of it for each); the training
pairs and their token sequences, from preftune's parser and encoder (implicit prompt split,
rows with an empty response skipped, prompt cut from the left to fit --max_length) - TRL gets
the same token ids (--trl_input ids, the default) or the same rows' full texts (--trl_input
text: TRL tokenizes them itself and drops pairs longer than --max_length instead of cutting
them); torch AdamW (non-fused) with the same learning rate and betas, linear decay without
warmup, no weight decay, gradient clipping at 1.0, batch size, epochs, seed 0, float32, no
gradient checkpointing, no dropout, no evaluation or checkpoints during training.
Not equal, by design: the data order (each framework's own seeded shuffle) and the batching
(TRL pads chosen and rejected to the longest sequence of the batch; preftune packs each pair
as one [prompt][chosen][rejected] block). With several epochs preftune's step count is
ceil(epochs x pairs / batch), TRL's epochs x ceil(pairs / batch). preftune's `train()` ends by
scoring the training pairs once (reward statistics) and saving the final model; that stays in
its timed region, while TRL's `save_model` runs after the timer stops.
Memory is read from /proc and getrusage, so the RSS numbers need Linux. A worker's getrusage peak
starts at the parent's peak RSS when it spawns the worker (Linux carries ru_maxrss across exec):
the parent's peak at each spawn is recorded and printed as a floor under both peaks (the parent
scores preftune's model before it starts TRL's worker).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from common import current_rss_mib, environment, padding_share, peak_rss_mib
from transformers import PreTrainedModel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"
FRAMEWORKS = ("preftune", "trl")
MODES = ("train", "check")
SEED = 0
LOSS_TOLERANCE = 1e-4
TINY_DEFAULTS = {"size": "small", "vocab_size": 4096}  # the random-init base model
# The first-step check's metrics: preftune's logged name -> TRL's.
FIRST_STEP_KEYS = {"loss": "loss", "rewards/accuracies": "accuracy", "rewards/margins": "margin"}

logger = logging.getLogger("rm_vs_trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reward-model training: preftune vs TRL, side by side.")
    add = parser.add_argument
    add(
        "--data",
        default=DEFAULT_DATA,
        help="Pairs file (chosen/rejected); relative paths start at the repo root.",
    )
    add(
        "--model",
        default=None,
        help="Local causal-LM checkpoint (Hugging Face folder) to start from instead of the random-init "
        "Llama; its tokenizer and chat template are used (HH transcripts as messages).",
    )
    add(
        "--train_pairs", type=int, default=1500, help="The first this many rows train; the rest are held out."
    )
    add("--max_pairs", type=int, default=None, help="Read at most this many rows in all (for quick checks).")
    add(
        "--size",
        choices=("tiny", "small"),
        default=None,
        help="Shape of the tiny Llama (preftune.models.tiny; default small; not with --model).",
    )
    add(
        "--vocab_size",
        type=int,
        default=None,
        help="BPE vocabulary size of the tokenizer trained on the rows (default 4096; not with --model).",
    )
    add("--max_length", type=int, default=512, help="Longest prompt + response in tokens.")
    add("--batch_size", type=int, default=16, help="Pairs per optimizer step.")
    add("--learning_rate", type=float, default=3e-4, help="Peak AdamW learning rate.")
    add("--epochs", type=int, default=1, help="Passes over the training pairs.")
    add(
        "--trl_input",
        choices=("ids", "text"),
        default="ids",
        help="Give TRL preftune's token ids or the texts (with --model: the conversations as messages).",
    )
    add("--threads", type=int, default=0, help="torch CPU threads in every process; 0 keeps torch's default.")
    add(
        "--workdir",
        default=None,
        help="Folder for the base model, both runs and their results (default: temp).",
    )
    add("--out", default=None, help="Also write all results to this JSON file.")
    add("--only", choices=FRAMEWORKS, default=None, help="Run one framework only (debugging).")
    add("--worker", choices=FRAMEWORKS, default=None, help=argparse.SUPPRESS)
    add("--mode", choices=MODES, default="train", help=argparse.SUPPRESS)
    add("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_pairs < 1:
        parser.error(f"--train_pairs must be >= 1, got {args.train_pairs}.")
    if args.max_pairs is not None and args.max_pairs <= args.train_pairs:
        parser.error(
            f"--max_pairs ({args.max_pairs}) must exceed --train_pairs ({args.train_pairs}) to leave held-out rows."
        )
    if args.epochs < 1 or args.batch_size < 1 or args.learning_rate <= 0:
        parser.error("--epochs and --batch_size must be >= 1 and --learning_rate > 0.")
    options = vars(args)
    if args.model is not None:
        given = [f"--{name}" for name in TINY_DEFAULTS if options[name] is not None]
        if given:
            parser.error(f"{', '.join(given)} shape the random-init model; --model {args.model} has its own.")
        if not (Path(args.model) / "config.json").is_file():
            parser.error(f"--model {args.model} is not a Hugging Face folder (no config.json there).")
        args.model = str(Path(args.model).resolve())
    else:
        options.update({name: value for name, value in TINY_DEFAULTS.items() if options[name] is None})
    return args


# ---------------------------------------------------------------- parent: data, base model, children


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build (or read) the base model, write TRL's training data (and, with --model, the first-step
    check's pairs for both), and return the shared job settings."""
    from preftune.data import encode_dataset, load_rows, parse_pairs
    from preftune.models.loading import load_tokenizer
    from preftune.models.tiny import make_tiny, texts_of_row

    data = Path(args.data) if Path(args.data).is_absolute() else (REPO / args.data).resolve()
    end = "" if args.max_pairs is None else str(args.max_pairs)
    train_split, eval_split = f"train[:{args.train_pairs}]", f"train[{args.train_pairs}:{end}]"
    table = load_rows(str(data), train_split)
    if args.model is None:
        texts = (
            text for row in table.rows for text in texts_of_row(row)
        )  # the tokenizer sees training rows only
        base = make_tiny(texts, workdir / "base", size=args.size, vocab_size=args.vocab_size, seed=SEED)
    else:
        base = Path(args.model)  # read in place, never written
    # The same parse and encode as preftune's RewardTrainer, to know which pairs it trains on.
    dialogue_format = "text" if args.model is None else "hh"
    parsed = parse_pairs(table, skip_invalid=True, dialogue_format=dialogue_format)
    pairs, report = encode_dataset(
        load_tokenizer(str(base)), parsed, args.max_length, "left", skip_invalid=True
    )
    logger.info("Training pairs: %s", report.summary())
    rows = dict(zip(table.row_numbers, table.rows, strict=True))
    examples = {example.row: example for example in parsed.examples}
    trl_data = workdir / "trl_train.jsonl"
    write_jsonl(trl_data, trl_records(pairs, rows, examples, args.trl_input))
    lengths = [(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs]
    job = {
        "base": str(base), "data": str(data), "train_split": train_split, "eval_split": eval_split,
        "max_length": args.max_length, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "epochs": args.epochs, "threads": args.threads, "trl_data": str(trl_data), "trl_input": args.trl_input,
        "dialogue_format": dialogue_format,
    }  # fmt: skip
    if args.model is not None:
        # The first-step check: one batch of exactly the first --batch_size uncut pairs (TRL, given
        # texts, would drop a pair that preftune cuts), so the data order cannot differ.
        check = [pair for pair in pairs if pair.num_truncated == 0][: args.batch_size]
        if len(check) < args.batch_size:
            logger.warning(
                "Only %d uncut pairs for the first-step check (batch %d).", len(check), args.batch_size
            )
        job["check_preftune"] = str(workdir / "check_rows.jsonl")
        job["check_trl"] = str(workdir / "trl_check.jsonl")
        write_jsonl(
            Path(job["check_preftune"]),
            [{"chosen": rows[p.row]["chosen"], "rejected": rows[p.row]["rejected"]} for p in check],
        )
        write_jsonl(Path(job["check_trl"]), trl_records(check, rows, examples, args.trl_input))
        job["check_pairs"] = len(check)  # the check's batch size (preftune would fill a short batch)
    summary = {
        "rows_read": len(table), "pairs_kept": len(pairs), "rows_skipped": len(report.skipped),
        "pairs_truncated": report.num_truncated_examples,
        "tokens_per_pair": mean(c + r for c, r in lengths),
        "padded_batch_padding_share": padding_share(lengths, args.batch_size, SEED),
    }  # fmt: skip
    return {"job": job, "data": summary, "setup": {**vars(args), **job, "workdir": str(workdir)}}


def trl_records(
    pairs: list[Any], rows: dict[int, Any], examples: dict[int, Any], trl_input: str
) -> list[dict[str, Any]]:
    """TRL's rows for `pairs`: preftune's token ids; or the rows' texts (TRL tokenizes them); or,
    for conversations (--model), the full chosen and rejected message lists (TRL applies the chat
    template to each)."""
    if trl_input == "ids":
        return [{"chosen_ids": p.chosen.input_ids, "rejected_ids": p.rejected.input_ids} for p in pairs]
    if isinstance(examples[pairs[0].row].prompt, list):
        return [
            {"chosen": ex.prompt + ex.chosen, "rejected": ex.prompt + ex.rejected}
            for ex in (examples[p.row] for p in pairs)
        ]
    return [{"chosen": rows[p.row]["chosen"], "rejected": rows[p.row]["rejected"]} for p in pairs]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def run_child(name: str, job: dict[str, Any], workdir: Path, mode: str = "train") -> dict[str, Any]:
    """Train with one framework in a fresh Python process; return its measurements, with this
    process's peak RSS when it started the worker: Linux starts a child's ru_maxrss there (it carries
    the peak across exec), so it is a floor under the worker's peak RSS."""
    tag = name if mode == "train" else f"{name}_{mode}"
    job_path, result_path = workdir / f"job_{tag}.json", workdir / f"result_{tag}.json"
    result_path.unlink(missing_ok=True)
    job_path.write_text(
        json.dumps({**job, "output_dir": str(workdir / tag), "result": str(result_path)}, indent=2)
    )
    logger.info("%s with %s ...", "Training" if mode == "train" else "First-step check", name)
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", name, "--mode", mode, "--job", str(job_path)]
    parent_peak = peak_rss_mib()
    subprocess.run(command, check=True)
    return {**json.loads(result_path.read_text()), "parent_peak_rss_mib": parent_peak}


def evaluate(final_dir: str, job: dict[str, Any]) -> dict[str, Any]:
    """Held-out metrics of one final model, with preftune's evaluator (the same for both)."""
    from preftune.eval.config import RewardEvalConfig
    from preftune.eval.reward_model import evaluate_reward_model
    from preftune.judges import RewardModelJudge

    options = RewardEvalConfig(
        reward_model=final_dir,
        dataset=job["data"],
        output_dir=str(Path(final_dir).parent / "eval"),
        dataset_split=job["eval_split"],
        max_length=job["max_length"],
        skip_invalid=True,
        dialogue_format=job["dialogue_format"],
        task="none",
    )
    judge = RewardModelJudge(final_dir, max_length=job["max_length"])
    result = evaluate_reward_model(judge, job["data"], options)
    return {
        "accuracy": result["rm/accuracy"],
        "accuracy_ci": result["rm/accuracy_ci"],
        "eval_pairs": result["rm/num_pairs"],
        "prefer_longer_accuracy": result["length/prefer_longer_accuracy"],
        "length_correlation": result["length/length_correlation"],
    }


# ---------------------------------------------------------------- workers (one framework per process)


def run_worker(name: str, mode: str, job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    logging.basicConfig(level=logging.WARNING, format=f"[{name}] %(levelname)s %(name)s: %(message)s")
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(SEED)
    check = mode == "check"
    result = train_preftune(job, check) if name == "preftune" else train_trl(job, check)
    Path(job["result"]).write_text(json.dumps(result, indent=2))


def train_preftune(job: dict[str, Any], check: bool) -> dict[str, Any]:
    """Train (timed), or with `check` take one step on the check pairs and return its logged metrics."""
    from preftune.data import DataConfig
    from preftune.engine import TrainConfig
    from preftune.engine.metrics import read_metrics
    from preftune.models.loading import ModelConfig
    from preftune.models.scalar import PooledScorer
    from preftune.trainers.reward import RewardTrainer
    from preftune.trainers.reward_config import RewardConfig

    data = DataConfig(
        dataset=job["check_preftune"] if check else job["data"],
        dataset_split="train" if check else job["train_split"],
        max_length=job["max_length"],
        skip_invalid=True,
        dialogue_format=job["dialogue_format"],
    )
    train = TrainConfig(
        output_dir=job["output_dir"],
        learning_rate=job["learning_rate"],
        per_device_train_batch_size=job["check_pairs"] if check else job["batch_size"],
        num_train_epochs=job["epochs"],
        max_steps=1 if check else -1,
        lr_scheduler_type="linear",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1 if check else 10,
        seed=SEED,
        disable_tqdm=True,
        overwrite_output_dir=True,
    )
    trainer = RewardTrainer(RewardConfig(model=ModelConfig(model=job["base"]), data=data, train=train))
    scorer = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(scorer, PooledScorer), "RewardTrainer trains a PooledScorer"
    initial = describe_model(scorer.classifier)
    summary, measured = timed(trainer.train)
    pairs = trainer.train_pairs
    if check:
        first = next(r for r in read_metrics(Path(job["output_dir"]) / "metrics.jsonl") if r["step"] == 1)
        return {
            "check_pairs": len(pairs),
            "first_step": {key: first[key] for key in FIRST_STEP_KEYS},
            **initial,
        }
    return {
        "num_train_pairs": len(pairs),
        "tokens_per_pair": mean(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs),
        "steps": summary["steps"],
        "pairs_seen": summary["steps"]
        * job["batch_size"],  # the last step tops up from the next epoch's order
        "final_dir": str(Path(job["output_dir"]) / "final"),
        **initial,
        **measured,
    }


def trl_arguments(job: dict[str, Any]) -> dict[str, Any]:
    """TRL RewardConfig fields; the comments name TRL's defaults that differ from preftune's."""
    return {
        "output_dir": job["output_dir"],
        "learning_rate": job["learning_rate"],
        "per_device_train_batch_size": job["batch_size"],
        "num_train_epochs": job["epochs"],
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "optim": "adamw_torch",  # default adamw_torch_fused; preftune steps torch.optim.AdamW
        "seed": SEED,  # default 42
        "bf16": False,  # default True (mixed precision) unless fp16 is set
        "fp16": False,
        "activation_checkpointing": False,  # TRL defaults gradient_checkpointing (its old name) to True
        "model_init_kwargs": {"dtype": "float32"},
        "max_length": job["max_length"],  # default 1024; TRL drops longer pairs, preftune cuts the prompt
        "pad_to_multiple_of": None,  # default "auto": None off Neuron
        "center_rewards_coefficient": None,  # no centering term, as preftune's default 0.0
        "disable_dropout": True,
        "dataset_num_proc": None,
        "logging_steps": 10,
        "save_strategy": "no",  # default "steps"
        "eval_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def train_trl(job: dict[str, Any], check: bool) -> dict[str, Any]:
    """Train (timed), or with `check` take one step on the check pairs and return its logged metrics."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.trainer.reward_config import RewardConfig
    from trl.trainer.reward_trainer import RewardTrainer

    data_path = Path(job["check_trl"] if check else job["trl_data"])
    records = [json.loads(line) for line in data_path.read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(job["base"])
    arguments = trl_arguments(job)
    if check:
        arguments.update(max_steps=1, logging_steps=1, per_device_train_batch_size=job["check_pairs"])
    trainer = RewardTrainer(
        model=job["base"],
        args=RewardConfig(**arguments),
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    model, dataset = trainer.model, trainer.train_dataset
    assert isinstance(model, PreTrainedModel) and isinstance(dataset, Dataset), (
        "one process, a map-style dataset"
    )
    initial = describe_model(model)
    _, measured = timed(trainer.train)
    if check:
        first = next(entry for entry in trainer.state.log_history if "loss" in entry)
        logged = {key: first[trl_key] for key, trl_key in FIRST_STEP_KEYS.items()}
        return {"check_pairs": len(dataset), "first_step": logged, **initial}
    final = Path(job["output_dir"]) / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(final)
    pair_tokens = [
        len(c) + len(r) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
    ]
    return {
        "num_train_pairs": len(dataset),
        "tokens_per_pair": mean(pair_tokens),
        "steps": trainer.state.global_step,
        "pairs_seen": len(dataset) * job["epochs"],  # every epoch ends with a partial batch
        "final_dir": str(final),
        **initial,
        **measured,
    }


def describe_model(classifier: PreTrainedModel) -> dict[str, Any]:
    """Parameter count and a checksum of the fresh score head (equal when the inits match)."""
    from preftune.models.scalar import score_head

    head = score_head(classifier)
    return {
        "num_parameters": sum(p.numel() for p in classifier.parameters()),
        "score_head_checksum": float(sum(p.detach().double().sum() for p in head.parameters())),
    }


def timed(train: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run `train`, returning its output with wall time and memory (RSS in MiB, Linux)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before, peak_before = current_rss_mib(), peak_rss_mib()
    start = time.perf_counter()
    output = train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return output, {
        "train_seconds": seconds,
        "rss_before_train_mib": rss_before,
        "peak_rss_before_train_mib": peak_before,
        "peak_rss_mib": peak,
        "train_rss_increase_mib": peak - rss_before,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


# ---------------------------------------------------------------- report


def add_rates(result: dict[str, Any]) -> None:
    seconds = result["train_seconds"]
    result["pairs_per_second"] = result["pairs_seen"] / seconds
    result["real_tokens"] = result["pairs_seen"] * result["tokens_per_pair"]
    result["real_tokens_per_second"] = result["real_tokens"] / seconds


RATIO_KEYS = (
    "accuracy", "pairs_per_second", "real_tokens_per_second", "train_seconds", "peak_rss_mib",
    "train_rss_increase_mib", "cuda_peak_mib",
)  # fmt: skip


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), theirs.get(key)
        out[key] = a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    return out


def targets(ours: dict[str, Any], theirs: dict[str, Any], ratio: dict[str, float | None]) -> dict[str, bool]:
    """The issue's goals: >= 2x TRL's pairs/s, peak memory no higher, accuracy within TRL's CI or better."""
    memory = "cuda_peak_mib" if ratio.get("cuda_peak_mib") is not None else "peak_rss_mib"
    goals = {
        "pairs_per_second >= 2x TRL": (ratio["pairs_per_second"] or 0.0) >= 2.0,
        f"{memory} <= TRL": ours[memory] <= theirs[memory],
        "accuracy >= TRL's CI low": ours["accuracy"] >= theirs["accuracy_ci"][0],
    }
    if "loss_difference" in theirs:  # --model: the first-step check ran
        goals[f"first-step losses equal within {LOSS_TOLERANCE:g}"] = (
            theirs["loss_difference"] <= LOSS_TOLERANCE
        )
    return goals


def format_value(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, list):  # an interval
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    if isinstance(value, int):
        return f"{value:,}"
    if key in ("accuracy", "prefer_longer_accuracy", "length_correlation"):
        return f"{value:.3f}"
    if key in ("score_head_checksum", "check_score_head_checksum", "first_step_loss"):
        return f"{value:.6f}"
    if key == "loss_difference":
        return f"{value:.2e}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"


ROWS = (
    ("held-out accuracy", "accuracy"), ("  95% interval", "accuracy_ci"), ("  held-out pairs", "eval_pairs"),
    ("prefer-longer accuracy (same pairs)", "prefer_longer_accuracy"),
    ("score-length correlation", "length_correlation"), ("training pairs", "num_train_pairs"),
    ("optimizer steps", "steps"), ("pairs seen", "pairs_seen"), ("pairs / s", "pairs_per_second"),
    ("real tokens / s", "real_tokens_per_second"), ("train wall s", "train_seconds"),
    ("peak RSS MiB", "peak_rss_mib"), ("RSS before train MiB", "rss_before_train_mib"),
    ("RSS increase during train MiB", "train_rss_increase_mib"), ("CUDA peak MiB", "cuda_peak_mib"),
    ("parameters", "num_parameters"), ("score-head init checksum", "score_head_checksum"),
)  # fmt: skip
CHECK_ROWS = (  # --model only
    ("first-step loss (one batch)", "first_step_loss"), ("  |difference| to preftune", "loss_difference"),
    ("  pairs in the batch", "check_pairs"), ("  score-head init checksum", "check_score_head_checksum"),
)  # fmt: skip


def format_table(results: dict[str, Any]) -> str:
    names = [name for name in FRAMEWORKS if name in results]
    header = f"{'':38}" + "".join(f"{name:>16}" for name in names)
    if "ratios" in results:
        header += f"{'preftune / TRL':>16}"
    lines = [header, "-" * len(header)]
    checked = any("first_step_loss" in results[n] for n in names)
    for label, key in ROWS + CHECK_ROWS if checked else ROWS:
        line = f"{label:38}" + "".join(f"{format_value(key, results[n].get(key)):>16}" for n in names)
        if "ratios" in results and key in RATIO_KEYS:
            line += f"{format_value('ratio', results['ratios'][key]):>16}"
        lines.append(line)
    data, env = results["data"], results["environment"]
    lines += [
        "",
        f"data: {data['pairs_kept']} training pairs kept of {data['rows_read']} rows "
        f"({data['pairs_truncated']} prompts cut), {data['tokens_per_pair']:.1f} real tokens per pair; "
        f"padded batches of {results['setup']['batch_size']} would be "
        f"{100 * data['padded_batch_padding_share']:.1f}% padding; TRL input: {results['setup']['trl_input']}",
        "environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
    ]
    floor = max(results[n]["parent_peak_rss_mib"] for n in names)
    lines.insert(
        -1,
        "peak RSS is each worker's ru_maxrss, which Linux starts at the parent's peak when it spawns the "
        f"worker ({floor:,.0f} MiB at most here): a floor under both figures",
    )
    if results["setup"]["model"] is not None:
        lines.insert(
            -1,
            f"base: {results['setup']['model']} (pretrained; its chat template over the HH transcripts); "
            "first-step check: one step on one batch of the first uncut pairs, each framework",
        )
    for goal, met in results.get("targets", {}).items():
        lines.append(f"target {goal}: {'met' if met else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        if not args.job:
            raise ValueError("--worker needs --job FILE (the parent process writes it).")
        run_worker(args.worker, args.mode, Path(args.job))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rm_vs_trl_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args, workdir)
    job = prepared["job"]
    results: dict[str, Any] = {
        "setup": prepared["setup"], "environment": environment(args.threads), "data": prepared["data"]
    }  # fmt: skip
    for name in (args.only,) if args.only else FRAMEWORKS:
        results[name] = run_child(name, job, workdir)
        add_rates(results[name])
        results[name].update(evaluate(results[name]["final_dir"], job))
        if "check_trl" in job:
            check = run_child(name, job, workdir, mode="check")
            results[name]["first_step"] = check["first_step"]
            results[name]["first_step_loss"] = check["first_step"]["loss"]
            results[name]["check_pairs"] = check["check_pairs"]
            results[name]["check_score_head_checksum"] = check["score_head_checksum"]
    if not args.only:
        if "check_trl" in job:
            difference = abs(results["trl"]["first_step_loss"] - results["preftune"]["first_step_loss"])
            results["trl"]["loss_difference"] = difference
        results["ratios"] = ratios(results["preftune"], results["trl"])
        results["targets"] = targets(results["preftune"], results["trl"], results["ratios"])
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
