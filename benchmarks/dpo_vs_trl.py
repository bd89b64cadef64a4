"""DPO training speed, side by side: preftune's DPOTrainer against TRL 1.16's DPOTrainer.

One run builds a tiny random-init Llama once (or reads a pretrained checkpoint, --model) and
trains it for one pass over the same fixed pairs with three setups, each in its own subprocess
(imports and memory do not mix): preftune's defaults (frozen copy of the policy as reference;
each pair one [prompt][chosen][rejected] block, prompt computed once, no padding), TRL's
defaults (a reference copy run every step on padded chosen/rejected batches) and TRL with
`precompute_ref_log_probs=True` (one reference pass in the constructor). It prints pairs/s,
real tokens/s, model-FLOP utilisation (MFU), peak RSS and the first-step loss against a
reference *different* from the policy for each, the ratios preftune / TRL's fastest setup, and
the issue's targets (>= 3x TRL's best pairs/s, peak memory no higher, first-step losses equal
within 1e-4). Worker output goes to --workdir/log_*.txt.

    python benchmarks/dpo_vs_trl.py --out dpo_vs_trl.json --profile      # minutes on a GPU
    python benchmarks/dpo_vs_trl.py --num_pairs 32 --vocab_size 1024 --hidden 64 --layers 2
    python benchmarks/dpo_vs_trl.py --model /tmp/models/smollm2 --num_pairs 16 --batch_size 4 \
        --max_length 256 --learning_rate 1e-6                 # SmolLM2-135M-Instruct: a smoke test

Workload: the first --num_pairs pairs that preftune's data layer keeps of the first --num_rows
rows of HH-RLHF harmless (implicit prompts; rows with an empty response, or one that alone fills
--max_length, are skipped; long prompts are cut from the left). preftune reads the rows' texts;
TRL gets the same rows split into prompt/chosen/rejected texts and tokenizes them itself with
`truncation_mode="keep_end"`, its one mode that keeps the response (it cuts each sequence from
the left, BOS included, where preftune keeps BOS and cuts the shared prompt once), so it trains
on every pair (the count is printed). Tokenizer: preftune's byte-level BPE trained on the rows.
Model: Llama, --hidden, --layers, 4 heads (4 key/value heads), intermediate 11/4 x hidden,
tied embeddings, torch.manual_seed(0). A second model (seed 1) is the reference of the
first-step check only (reference == policy gives log 2 whatever the code does): one step of
each setup on one batch of exactly the first --batch_size uncut pairs (all of them, in one
batch, if fewer are uncut), so order cannot differ.

With --model PATH (a local Hugging Face causal-LM folder, read in place; --vocab_size, --hidden
and --layers are then errors): the tokenizer and the policy are the checkpoint's, and the data
goes through its chat template. preftune reads the rows' transcripts with dialogue_format "hh"
(preftune/data/dialogues.py: message lists, the implicit prompt being the leading messages both
sides share); TRL gets the same conversations, split by preftune's parser into prompt, chosen and
rejected message lists, and applies the chat template itself (conversational data: the prompt
rendered with the generation prompt, prompt + response rendered whole, no EOS appended: the
template ends the turn). Messages rather than token ids because this script lets TRL tokenize,
as a TRL user would; fairness is checked, not assumed: the table counts the pairs on which TRL's
ids equal preftune's (every uncut pair should). The rest is as above (keep_end; preftune keeps the
template's first token, <|im_start|> for ChatML, when it cuts a prompt). The first-step check's
reference is the checkpoint with N(0, (0.02 rms(W))^2) noise added to every weight tensor W (a
tied embedding once), drawn from a torch.Generator seeded 1 and saved to --workdir/reference
with the tokenizer: deterministic, different from the policy (on four HH pairs of <= 256 tokens
it moves the first-step loss from log 2 = 0.693 to about 0.745), and still a language model.
The default --learning_rate suits the random-init model; a pretrained one wants ~1e-6 (neither
the timing nor the first-step loss depends on it).

Held equal: float32, sigmoid loss, beta 0.1, learning rate, linear decay without warmup, no
weight decay, clipping at 1.0, batch size, one epoch, seed 0, no dropout, logging every step.
TRL defaults overridden: bf16 True -> False, gradient (activation) checkpointing True -> False,
seed 42 -> 0, logging_steps 10 -> 1, save_strategy "steps" -> "no", report_to -> "none",
max_length 1024 -> --max_length, truncation_mode "keep_start" -> "keep_end". Kept: its optimizer
(adamw_torch_fused; preftune steps torch.optim.AdamW), padding_free False (TRL 1.16 turns True
back to False with a warning: "temporarily unavailable"), dataset_num_proc None,
pad_to_multiple_of "auto" (None off Neuron), disable_dropout True.

Timed, "from trainer start to finish": reading the pairs file, the trainer's constructor
(tokenization; TRL's precompute) and `train()`, minus model loading (the time inside preftune's
`load_policy`/`load_reference` and TRL's `create_model_from_path`, wrapped and measured). Both
load the tokenizer before the timer. preftune's `train()` ends by saving the final model (its
time is printed); TRL's run saves nothing.

Tokens: "real" = prompt + chosen plus prompt + rejected, no padding (after each framework's
own cut); "computed" = what a framework runs: the same for TRL (padding not counted), prompt +
chosen + rejected for preftune.

MFU = model FLOPs / timed seconds / peak; the peak is this machine's fp32 matmul rate (bf16 with --bf16), measured
in the parent with the workers' thread count: the best rate of square torch.mm (2 n^3 FLOPs)
over n = 256..2048 on CPU, 1024..8192 on CUDA, each the best of 10 timings. Training the policy
(forward + backward = 3 forwards) plus one reference forward:

    FLOPs = 8 N tokens + 8 d V response_tokens + 16 L d attention_pairs

N: non-embedding parameters (2N per token per forward: the usual 6N, plus 2N for the
reference); the LM head (2 d V per forward) only at the response tokens the loss needs;
attention 4 L d per forward per (query, key) pair causal attention scores (T (T + 1) / 2 per
sequence: the 12 L d T term of 6N + 12 L d T, counted causally). "MFU, real tokens" counts the
real tokens (the same work for every setup, so its ratio is the pairs/s ratio); "MFU, computed
tokens" counts what each runs (preftune's attention pairs causal(P + C) + causal(P + R) -
causal(P)): how close its kernels get to the peak. N, L, d and V are read from the policy's
config: with --model the checkpoint's (SmolLM2-135M: N = 106.2M, L = 30, d = 576, V = 49,152;
with grouped-query attention d = heads x head_dim still gives the attention term, and the smaller
key/value projections are in N). A footnote gives the LM head's share of these FLOPs, and what it
would be were the head run at every position (as TRL's setups run it; the formula counts the
same work for every setup). --profile adds an untimed preftune run
under torch.profiler: the top 15 ops by self time and the FLOP rate inside its matmuls.
RSS is read from /proc and getrusage (Linux). A worker's getrusage peak starts at the parent's
peak RSS when it spawns the worker (Linux carries ru_maxrss across exec), so the parent's peak at
each spawn is recorded and printed as a floor under every peak (with --model the parent has held
one copy of the checkpoint, to perturb it); a figure at that floor says little about the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from common import MODEL_SHAPES, current_rss_mib, environment, llama_config, padding_share, peak_rss_mib
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "../shared/data/hh-rlhf-harmless/train.jsonl.gz"
RUNS = ("preftune", "preftune_padded", "trl_default", "trl_precompute")
TRL_RUNS = RUNS[2:]
LABELS = {"preftune": "preftune", "preftune_padded": "preftune padded", "trl_default": "TRL default",
          "trl_precompute": "TRL precompute"}  # fmt: skip
MODES = ("timed", "check", "profile")
SEED = 0
REFERENCE_SEED = 1
REFERENCE_NOISE = 0.02  # --model: the check's reference adds N(0, (0.02 rms(W))^2) noise to every weight W
NUM_HEADS = 4
TINY_DEFAULTS = {"vocab_size": 8192, "hidden": 256, "layers": 4}  # the random-init model's shape
BETA = 0.1
LOSS_TOLERANCE = 1e-4
LOSS_TOLERANCE_BF16 = 1e-2  # bf16 autocast rounds each matmul's inputs to 8 bits of mantissa
TARGET_SPEEDUP = 3.0
# The matmul ops torch.profiler counts FLOPs for.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
FIRST_STEP_KEYS = ("loss", "logps/chosen", "logps/rejected", "rewards/margins")  # logged by both frameworks

logger = logging.getLogger("dpo_vs_trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DPO training speed: preftune vs TRL, side by side.")
    add = parser.add_argument
    add("--data", default=DEFAULT_DATA, help="Pairs file (chosen/rejected); relative to the repo root.")
    add(
        "--model",
        default=None,
        help="Local causal-LM checkpoint (Hugging Face folder) to train instead "
        "of the random-init Llama; its tokenizer and chat template are used (HH transcripts as messages).",
    )
    add("--num_rows", type=int, default=600, help="Rows read: they give the pairs (and train the tokenizer).")
    add("--num_pairs", type=int, default=480, help="Pairs trained on: the first that preftune keeps.")
    add("--batch_size", type=int, default=8, help="Pairs per optimizer step.")
    add("--max_length", type=int, default=512, help="Longest prompt + response in tokens.")
    add("--learning_rate", type=float, default=5e-5, help="Peak AdamW learning rate (both frameworks).")
    add(
        "--vocab_size",
        type=int,
        default=None,
        help="BPE vocabulary size of the tokenizer (default 8192; not with --model).",
    )
    add(
        "--hidden",
        type=int,
        default=None,
        help="Model width (4 heads; intermediate 11/4 x hidden; default 256; not with --model).",
    )
    add("--layers", type=int, default=None, help="Decoder layers (default 4; not with --model).")
    add(
        "--shape",
        choices=list(MODEL_SHAPES),
        default=None,
        help="Random-init model with a real checkpoint's shape (benchmarks/common.py MODEL_SHAPES: layers, "
        "heads, widths, its vocabulary size); not with --model, --hidden or --layers.",
    )
    add("--bf16", action="store_true", help="bf16 mixed precision in both frameworks (default float32).")
    add(
        "--padded",
        action="store_true",
        help="Also time preftune with --prefix_sharing false (padded chosen/rejected rows, as TRL).",
    )
    add("--threads", type=int, default=0, help="torch CPU threads in every process; 0 keeps torch's default.")
    add("--workdir", default=None, help="Folder for models, data files, runs and results (default: temp).")
    add("--out", default=None, help="Also write all results to this JSON file.")
    add("--only", choices=RUNS, default=None, help="Run one setup only (debugging).")
    add("--profile", action="store_true", help="Also profile a preftune run (torch.profiler, not timed).")
    add("--worker", choices=RUNS, default=None, help=argparse.SUPPRESS)
    add("--mode", choices=MODES, default="timed", help=argparse.SUPPRESS)
    add("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.num_pairs < args.batch_size or args.batch_size < 1:
        parser.error(f"--num_pairs ({args.num_pairs}) must be >= --batch_size ({args.batch_size}) >= 1.")
    if args.num_rows < args.num_pairs:
        parser.error(f"--num_rows ({args.num_rows}) must be >= --num_pairs ({args.num_pairs}).")
    options = vars(args)
    if args.padded and args.only not in (None, "preftune_padded"):
        parser.error(f"--padded adds preftune's padded run, which --only {args.only} leaves out; drop one.")
    if args.shape is not None and (args.model or args.hidden or args.layers):
        parser.error("--shape gives the model's shape; drop --model, --hidden and --layers.")
    if args.model is not None:
        given = [f"--{name}" for name in TINY_DEFAULTS if options[name] is not None]
        if given:
            parser.error(f"{', '.join(given)} shape the random-init model; --model {args.model} has its own.")
        if not (Path(args.model) / "config.json").is_file():
            parser.error(f"--model {args.model} is not a Hugging Face folder (no config.json there).")
        args.model = str(Path(args.model).resolve())
    else:
        options.update({name: value for name, value in TINY_DEFAULTS.items() if options[name] is None})
    if args.learning_rate <= 0 or (not args.model and (args.hidden % NUM_HEADS or args.layers < 1)):
        parser.error(f"--learning_rate must be > 0, --hidden a multiple of {NUM_HEADS}, --layers >= 1.")
    return args


# ---------------------------------------------------------------- parent: data, models, children


def build_model(tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, seed: int) -> LlamaForCausalLM:
    """The benchmark's random-init Llama, sized for `tokenizer` (or with --shape a real checkpoint's shape,
    whose vocabulary covers the tokenizer's ids), initialised under `seed`."""
    from preftune.models.loading import token_id

    if args.shape is not None:
        shape = MODEL_SHAPES[args.shape]
        config = llama_config(shape, max(shape["vocab"], len(tokenizer)), max(1024, 2 * args.max_length))
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden,
            intermediate_size=11 * args.hidden // 4,
            num_hidden_layers=args.layers,
            num_attention_heads=NUM_HEADS,
            num_key_value_heads=NUM_HEADS,
            max_position_embeddings=max(1024, 2 * args.max_length),
            tie_word_embeddings=True,
        )
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        token_id(tokenizer, name) for name in ("bos", "eos", "pad")
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@torch.no_grad()
def perturb_(model: PreTrainedModel, seed: int, noise: float) -> None:
    """Add N(0, (noise x rms(W))^2) to every weight W of `model` in place (a tied one once), drawn
    from a generator seeded with `seed`: a reference that differs from the policy, deterministically."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():  # deduplicated: a tied embedding is perturbed once
        scale = noise * parameter.pow(2).mean().sqrt()
        parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)


def save_models(
    args: argparse.Namespace, table: Any, workdir: Path
) -> tuple[Path, Path, PreTrainedModel, PreTrainedTokenizerBase]:
    """Policy and check-reference folders, a model of the policy's shape and the tokenizer. Random
    init: a BPE tokenizer trained on the rows, the policy under seed 0 and the reference under seed 1,
    both saved in `workdir`. --model: the checkpoint is the policy (read in place) and the reference
    is the checkpoint after `perturb_` (seed 1), saved in `workdir` with the checkpoint's tokenizer
    (one copy in memory: this process's peak RSS is a floor under the workers', see `run_child`)."""
    from preftune.models.loading import load_tokenizer
    from preftune.models.tiny import texts_of_row, train_tokenizer

    reference_dir = workdir / "reference"
    if args.model is None:
        trained = train_tokenizer((text for row in table.rows for text in texts_of_row(row)), args.vocab_size)
        policy_dir = workdir / "policy"
        policy = build_model(trained, args, SEED)
        for path, model in (
            (policy_dir, policy),
            (reference_dir, build_model(trained, args, REFERENCE_SEED)),
        ):
            model.save_pretrained(path)
            trained.save_pretrained(path)
        return policy_dir, reference_dir, policy, load_tokenizer(str(policy_dir))
    policy_dir = Path(args.model)
    reference = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    perturb_(reference, REFERENCE_SEED, REFERENCE_NOISE)
    reference.save_pretrained(reference_dir)
    tokenizer = load_tokenizer(str(policy_dir))
    tokenizer.save_pretrained(reference_dir)
    return policy_dir, reference_dir, reference, tokenizer


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Save (or read) policy and reference, write each framework's data files."""
    from preftune.data import encode_dataset, load_rows, parse_pairs

    data = Path(args.data) if Path(args.data).is_absolute() else (REPO / args.data).resolve()
    table = load_rows(str(data), f"train[:{args.num_rows}]")
    policy_dir, reference_dir, policy, tokenizer = save_models(args, table, workdir)
    # The same parse and encode as preftune's DPOTrainer, to know which pairs it keeps.
    dialogue_format = "text" if args.model is None else "hh"
    parsed = parse_pairs(table, skip_invalid=True, dialogue_format=dialogue_format)
    encoded, report = encode_dataset(tokenizer, parsed, args.max_length, "left", skip_invalid=True)
    logger.info("Pairs: %s", report.summary())
    if len(encoded) < args.num_pairs:
        raise ValueError(
            f"Only {len(encoded)} of the first {args.num_rows} rows give a pair; "
            "raise --num_rows or lower --num_pairs."
        )
    pairs = encoded[: args.num_pairs]
    # The first-step check: one batch of pairs whose prompt was not cut (the frameworks cut differently).
    check = [pair for pair in pairs if pair.num_truncated == 0][: args.batch_size]
    if len(check) < args.batch_size:
        logger.warning(
            "Only %d uncut pairs for the first-step check (batch %d).", len(check), args.batch_size
        )
    rows = dict(zip(table.row_numbers, table.rows, strict=True))
    examples = {example.row: example for example in parsed.examples}
    files = {
        **write_pair_files(workdir, "train", pairs, rows, examples),
        **write_pair_files(workdir, "check", check, rows, examples),
    }
    lengths = [(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs]
    real_tokens = sum(c + r for c, r in lengths)
    job = {
        "policy": str(policy_dir), "reference": str(reference_dir), **files,
        "dialogue_format": dialogue_format, "num_pairs": args.num_pairs, "check_pairs": len(check),
        "batch_size": args.batch_size, "max_length": args.max_length, "learning_rate": args.learning_rate,
        "threads": args.threads, "bf16": args.bf16,
    }  # fmt: skip
    config = policy.config
    shape = {
        "hidden": config.hidden_size, "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads, "vocab": config.vocab_size,
        "intermediate": config.intermediate_size, "tied_embeddings": config.tie_word_embeddings,
        "parameters": policy.num_parameters(),
        "non_embedding_parameters": policy.num_parameters(exclude_embeddings=True),
    }  # fmt: skip
    summary = {
        "rows_read": len(table), "pairs_kept_of_rows": len(encoded), "pairs": len(pairs),
        "rows_skipped": len(report.skipped), "check_pairs": len(check),
        "prompts_cut": sum(1 for p in pairs if p.num_truncated), "tokenizer_vocab": len(tokenizer),
        "real_tokens_per_pair": real_tokens / len(pairs),
        "prompt_share_of_real_tokens": sum(2 * p.chosen.num_prompt_tokens for p in pairs) / real_tokens,
        "padded_batch_padding_share": padding_share(lengths, args.batch_size, SEED),
    }  # fmt: skip
    return {"job": job, "shape": shape, "data": summary}


def write_pair_files(
    workdir: Path, name: str, pairs: list[Any], rows: dict[int, Any], examples: dict[int, Any]
) -> dict[str, str]:
    """The pairs three ways: the rows' chosen/rejected texts (preftune splits the prompt itself),
    the split prompt/chosen/rejected texts (TRL), and preftune's token ids (to compare TRL's)."""
    records = {
        "preftune": [{"chosen": rows[p.row]["chosen"], "rejected": rows[p.row]["rejected"]} for p in pairs],
        "trl": [
            {"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}
            for ex in (examples[p.row] for p in pairs)
        ],
        "ids": [[p.chosen.input_ids, p.rejected.input_ids] for p in pairs],
    }
    files = {}
    for kind, lines in records.items():
        path = workdir / f"{name}_{kind}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        files[f"{name}_{kind}"] = str(path)
    return files


def measure_matmul_peak(dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """This machine's matmul peak in `dtype`: the highest rate of square torch.mm (2 n^3 FLOPs) over a
    few sizes, each the best of 10 timings (on a shared machine the best is the uncontended one)."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sizes = (1024, 2048, 4096, 8192) if cuda else (256, 512, 1024, 2048)
    rates: dict[str, float] = {}
    for size in sizes:
        a, b, out = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(3))
        per_timing = max(1, round((1e11 if cuda else 2e9) / (2 * size**3)))  # about 10 ms or more a timing
        best = math.inf
        for attempt in range(13):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(per_timing):
                torch.mm(a, b, out=out)
            if cuda:
                torch.cuda.synchronize()
            if attempt >= 3:  # the first ones warm up
                best = min(best, (time.perf_counter() - start) / per_timing)
        rates[str(size)] = 2 * size**3 / best
    size = max(rates, key=lambda key: rates[key])
    return {"matmul_size": int(size), "peak_flop_per_second": rates[size], "flop_per_second_by_size": rates,
            "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip


def run_child(run: str, mode: str, job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One setup in a fresh Python process; returns its measurements, with this process's peak RSS
    when it started the worker: Linux starts a child's ru_maxrss there (it carries the peak across
    exec), so it is a floor under the worker's peak RSS."""
    tag = f"{run}_{mode}"
    job_path, result_path = workdir / f"job_{tag}.json", workdir / f"result_{tag}.json"
    result_path.unlink(missing_ok=True)
    job_path.write_text(
        json.dumps({**job, "output_dir": str(workdir / tag), "result": str(result_path)}, indent=2)
    )
    logger.info("%s (%s) ...", LABELS[run], mode)
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--worker", run, "--mode", mode, "--job", str(job_path)]
    log_path = workdir / f"log_{tag}.txt"  # TRL prints a line per logged step; keep the table readable
    parent_peak = peak_rss_mib()
    with log_path.open("w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise RuntimeError(
            f"{LABELS[run]} ({mode}) failed (exit {finished.returncode}); the end of {log_path}:\n{tail}"
        )
    return {**json.loads(result_path.read_text()), "parent_peak_rss_mib": parent_peak}


# ---------------------------------------------------------------- workers (one setup per process)


def run_worker(run: str, mode: str, job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    logging.basicConfig(level=logging.WARNING, format=f"[{run}] %(levelname)s %(name)s: %(message)s")
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(SEED)
    result = (
        run_trl(job, run, mode)
        if run in TRL_RUNS
        else run_preftune(job, mode, padded=run == "preftune_padded")
    )
    Path(job["result"]).write_text(json.dumps(result, indent=2))


def timing(function: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """`function`, appending the wall time of every call to `seconds`."""

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    return timed_call


class Sequences(NamedTuple):
    """Token counts of one pair's two sequences, prompt included."""

    chosen_prompt: int
    chosen: int
    rejected_prompt: int
    rejected: int


def causal_pairs(length: int) -> int:
    """(query, key) pairs that causal attention scores in a sequence of `length` tokens."""
    return length * (length + 1) // 2


def token_counts(pairs: list[Sequences], prompt_once: bool) -> dict[str, int]:
    """Real and computed token counts (and attention pairs) of the pairs trained on.

    Real: prompt + chosen and prompt + rejected (the TRL layout). Computed: what the framework
    runs; with `prompt_once` the shared prompt is run once per pair and both responses attend to it.
    """
    real = sum(p.chosen + p.rejected for p in pairs)
    real_attention = sum(causal_pairs(p.chosen) + causal_pairs(p.rejected) for p in pairs)
    counts = {
        "real_tokens": real,
        "response_tokens": sum(p.chosen - p.chosen_prompt + p.rejected - p.rejected_prompt for p in pairs),
        "real_attention_pairs": real_attention,
        "computed_tokens": real,
        "computed_attention_pairs": real_attention,
    }
    if prompt_once:
        assert all(p.chosen_prompt == p.rejected_prompt for p in pairs), "one prompt, cut once, per pair"
        counts["computed_tokens"] = real - sum(p.chosen_prompt for p in pairs)
        counts["computed_attention_pairs"] = real_attention - sum(
            causal_pairs(p.chosen_prompt) for p in pairs
        )
    return counts


def check_batch_size(job: dict[str, Any], mode: str) -> int:
    """--batch_size, or in the check all its pairs when fewer are uncut: preftune fills a short last
    batch from the next epoch's order and TRL does not, so the check would compare different batches."""
    return min(job["batch_size"], job["check_pairs"]) if mode == "check" else job["batch_size"]


def preftune_config(job: dict[str, Any], mode: str, padded: bool = False) -> Any:
    """preftune's DPOConfig: its defaults, with the settings held equal."""
    from preftune.data import DataConfig
    from preftune.engine import TrainConfig
    from preftune.models.loading import ModelConfig
    from preftune.trainers.dpo_config import DPOConfig

    check = mode == "check"
    train = TrainConfig(
        output_dir=job["output_dir"],
        learning_rate=job["learning_rate"],
        per_device_train_batch_size=check_batch_size(job, mode),
        num_train_epochs=1,
        max_steps=1 if check else -1,
        lr_scheduler_type="linear",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        seed=SEED,
        disable_tqdm=True,
        overwrite_output_dir=True,
        save_steps=0,
        bf16=job.get("bf16", False),
    )
    data = DataConfig(
        dataset=job["check_preftune" if check else "train_preftune"],
        max_length=job["max_length"],
        dialogue_format=job["dialogue_format"],
    )
    return DPOConfig(
        model=ModelConfig(model=job["policy"]),
        data=data,
        train=train,
        ref_model=job["reference"] if check else None,  # None: a frozen copy of --model
        beta=BETA,
        loss_type=["sigmoid"],
        prefix_sharing=not padded,
    )


def run_preftune(job: dict[str, Any], mode: str, padded: bool = False) -> dict[str, Any]:
    from preftune.engine.metrics import read_metrics
    from preftune.models import logps
    from preftune.models.loading import load_tokenizer
    from preftune.trainers import dpo, inputs

    loads: list[float] = []
    saves: list[float] = []
    # The policy is loaded by trainers.inputs.policy_for (shared by the trainers that take model objects).
    inputs.load_policy = timing(inputs.load_policy, loads)
    # The reference is loaded by models.logps.load_frozen_reference (shared with KTO) since 604ea0f.
    logps.load_reference = timing(logps.load_reference, loads)
    dpo.save_final = timing(dpo.save_final, saves)
    config = preftune_config(job, mode, padded)
    tokenizer = load_tokenizer(job["policy"])

    def start() -> tuple[Any, float]:
        trainer = dpo.DPOTrainer(config, processing_class=tokenizer)
        constructed = time.perf_counter()
        trainer.train()
        return trainer, constructed

    trainer, measured = measure(start, loads, profile=mode == "profile")
    pairs = trainer.train_pairs
    expected = job["check_pairs" if mode == "check" else "num_pairs"]
    if len(pairs) != expected:
        raise RuntimeError(
            f"preftune kept {len(pairs)} of the {expected} pairs written; did the data layer change?"
        )
    sequences = [
        Sequences(p.chosen.num_prompt_tokens, len(p.chosen), p.rejected.num_prompt_tokens, len(p.rejected))
        for p in pairs
    ]
    result = {
        "num_pairs": len(pairs),
        "steps": trainer.engine.step,
        "final_save_seconds": sum(saves),
        **token_counts(sequences, prompt_once=True),
        **measured,
    }
    if mode == "check":
        records = read_metrics(Path(job["output_dir"]) / "metrics.jsonl")
        first = next(record for record in records if record["step"] == 1)
        result["first_step"] = {key: first.get(key) for key in FIRST_STEP_KEYS}
    return result


def trl_arguments(job: dict[str, Any], run: str, mode: str) -> dict[str, Any]:
    """TRL DPOConfig fields; the comments name TRL's defaults that differ from preftune's or the issue's."""
    return {
        "output_dir": job["output_dir"],
        "learning_rate": job["learning_rate"],
        "per_device_train_batch_size": check_batch_size(job, mode),
        "num_train_epochs": 1,
        "max_steps": 1 if mode == "check" else -1,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": SEED,  # default 42
        "bf16": job.get("bf16", False),  # default True (mixed precision) unless fp16 is set
        "fp16": False,
        "activation_checkpointing": False,  # TRL defaults gradient_checkpointing (its old name) to True
        "model_init_kwargs": {"dtype": "float32"},
        "max_length": job["max_length"],  # default 1024
        # Default keep_start cuts responses (and drops pairs whose prompt fills max_length).
        "truncation_mode": "keep_end",
        "beta": BETA,
        "loss_type": ["sigmoid"],
        "precompute_ref_log_probs": run == "trl_precompute",  # default False
        "logging_steps": 1,  # default 10
        "save_strategy": "no",  # default "steps"
        "eval_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def run_trl(job: dict[str, Any], run: str, mode: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer import dpo_trainer
    from trl.trainer.dpo_config import DPOConfig

    # keep_end is deprecated in TRL 1.16 (removal planned for 2.0) but is its only left-cutting mode.
    warnings.filterwarnings("ignore", message="The `'keep_end'` truncation mode is deprecated")
    check = mode == "check"
    loads: list[float] = []
    dpo_trainer.create_model_from_path = timing(dpo_trainer.create_model_from_path, loads)
    tokenizer = AutoTokenizer.from_pretrained(job["policy"])
    # The check passes the second model as reference; the timed runs use TRL's default.
    reference = AutoModelForCausalLM.from_pretrained(job["reference"], dtype=torch.float32) if check else None
    data_path = Path(job["check_trl" if check else "train_trl"])
    args = DPOConfig(**trl_arguments(job, run, mode))

    def start() -> tuple[Any, float]:
        records = [json.loads(line) for line in data_path.read_text().splitlines()]
        trainer = dpo_trainer.DPOTrainer(
            model=job["policy"],
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
        )
        constructed = time.perf_counter()
        trainer.train()
        return trainer, constructed

    trainer, measured = measure(start, loads, profile=False)
    dataset = trainer.train_dataset
    assert isinstance(dataset, Dataset), "a map-style dataset in, a map-style dataset out"
    sequences, same_ids = trl_sequences(
        dataset, job["max_length"], Path(job["check_ids" if check else "train_ids"])
    )
    result = {
        "num_pairs": len(dataset),
        "steps": trainer.state.global_step,
        "pairs_with_preftune_token_ids": same_ids,
        **token_counts(sequences, prompt_once=False),
        **measured,
    }
    if check:
        first = next(entry for entry in trainer.state.log_history if "loss" in entry)
        result["first_step"] = {key: first.get(key) for key in FIRST_STEP_KEYS}
    return result


def trl_sequences(dataset: Any, max_length: int, ids_path: Path) -> tuple[list[Sequences], int]:
    """The token counts of each pair as TRL's collator cuts it (keep_end: the last max_length
    tokens of each sequence), and how many pairs have exactly preftune's token ids."""
    preftune_ids = [json.loads(line) for line in ids_path.read_text().splitlines()]
    sequences, same = [], 0
    for row, (chosen_ref, rejected_ref) in zip(dataset, preftune_ids, strict=True):
        chosen = (row["prompt_ids"] + row["chosen_ids"])[-max_length:]
        rejected = (row["prompt_ids"] + row["rejected_ids"])[-max_length:]
        same += chosen == chosen_ref and rejected == rejected_ref
        # Each response is shorter than max_length (preftune skipped the others), so keep_end cuts
        # only prompt tokens, on each side separately.
        chosen_prompt = len(chosen) - len(row["chosen_ids"])
        rejected_prompt = len(rejected) - len(row["rejected_ids"])
        sequences.append(Sequences(chosen_prompt, len(chosen), rejected_prompt, len(rejected)))
    return sequences, same


def measure(
    start: Callable[[], tuple[Any, float]], loads: list[float], profile: bool
) -> tuple[Any, dict[str, Any]]:
    """Run `start` (construct the trainer, then train); return the trainer and wall time
    (model loading subtracted), the constructor/train split and memory (RSS in MiB, Linux)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    activities = [
        torch.profiler.ProfilerActivity.CPU,
        *([torch.profiler.ProfilerActivity.CUDA] if cuda else []),
    ]
    profiler = torch.profiler.profile(activities=activities, with_flops=True) if profile else None
    rss_before, peak_before = current_rss_mib(), peak_rss_mib()
    began = time.perf_counter()
    with profiler or contextlib.nullcontext():
        trainer, constructed = start()
    if cuda:
        torch.cuda.synchronize()
    finished = time.perf_counter()
    peak = peak_rss_mib()
    load = sum(loads)
    measured = {
        "seconds": finished - began - load,
        "load_seconds": load,
        "constructor_seconds": constructed - began - load,
        "train_call_seconds": finished - constructed,
        "rss_before_mib": rss_before,
        "peak_rss_before_mib": peak_before,
        "peak_rss_mib": peak,
        "rss_increase_mib": peak - rss_before,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    if profiler is not None:
        measured["profile"] = profile_summary(profiler, finished - began)
    return trainer, measured


def profile_summary(profiler: torch.profiler.profile, wall_seconds: float, top: int = 15) -> dict[str, Any]:
    """Top ops by self time (device time on CUDA), their share of the wall time, and the
    FLOP rate inside the matmul ops (FLOPs as the profiler counts them)."""
    cuda = torch.cuda.is_available()
    events = profiler.key_averages()

    def self_seconds(event: Any) -> float:
        return (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6

    ranked = sorted(events, key=self_seconds, reverse=True)
    matmuls = [event for event in events if event.key in MATMUL_OPS]
    matmul_seconds = sum(self_seconds(event) for event in matmuls)
    matmul_flops = sum(event.flops for event in matmuls)
    op_seconds = sum(self_seconds(event) for event in events)
    return {
        "wall_seconds": wall_seconds,
        "op_self_seconds": op_seconds,
        "clock": "device" if cuda else "cpu",
        "top_ops": [
            {
                "name": event.key,
                "calls": event.count,
                "self_seconds": self_seconds(event),
                "share_of_wall": self_seconds(event) / wall_seconds,
                "gflop": event.flops / 1e9,
            }
            for event in ranked[:top]
        ],
        "matmul_ops": sorted({event.key for event in matmuls}),
        "matmul_seconds": matmul_seconds,
        "matmul_share_of_wall": matmul_seconds / wall_seconds,
        "matmul_flop_per_second": matmul_flops / matmul_seconds if matmul_seconds else None,
    }


# ---------------------------------------------------------------- report


def model_flops(shape: dict[str, Any], tokens: int, response_tokens: int, attention_pairs: int) -> float:
    """Training FLOPs (policy forward + backward, reference forward): see the module docstring."""
    d, layers = shape["hidden"], shape["layers"]
    return (
        8 * shape["non_embedding_parameters"] * tokens
        + 8 * d * shape["vocab"] * response_tokens
        + 16 * layers * d * attention_pairs
    )


def add_rates(result: dict[str, Any], shape: dict[str, Any], peak: float) -> None:
    seconds = result["seconds"]
    result["pairs_per_second"] = result["num_pairs"] / seconds
    result["real_tokens_per_second"] = result["real_tokens"] / seconds
    result["computed_tokens_per_second"] = result["computed_tokens"] / seconds
    for kind in ("real", "computed"):
        flops = model_flops(
            shape, result[f"{kind}_tokens"], result["response_tokens"], result[f"{kind}_attention_pairs"]
        )
        result[f"{kind}_model_flops"] = flops
        result[f"mfu_{kind}"] = flops / seconds / peak


RATIO_KEYS = (
    "pairs_per_second", "real_tokens_per_second", "computed_tokens_per_second", "mfu_real", "mfu_computed",
    "seconds", "peak_rss_mib", "rss_increase_mib", "cuda_peak_mib",
)  # fmt: skip


def compare(results: dict[str, Any]) -> None:
    """Ratios preftune / TRL's fastest setup, the first-step loss differences and the targets."""
    ours = results["preftune"]
    trl_runs = [run for run in TRL_RUNS if run in results]
    for run in trl_runs:
        results[run]["loss_difference"] = abs(results[run]["first_step_loss"] - ours["first_step_loss"])
    best = max(trl_runs, key=lambda run: results[run]["pairs_per_second"])
    theirs = results[best]
    ratio: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        a, b = ours.get(key), theirs.get(key)
        ratio[key] = a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    memory = "cuda_peak_mib" if ratio["cuda_peak_mib"] is not None else "peak_rss_mib"
    lowest = min(results[run][memory] for run in trl_runs)
    results["ratios"] = {"versus": best, **ratio}
    tolerance = LOSS_TOLERANCE_BF16 if results["setup"].get("bf16") else LOSS_TOLERANCE
    speedups = {run: ours["pairs_per_second"] / results[run]["pairs_per_second"] for run in trl_runs}
    results["speedups"] = speedups
    results["targets"] = {
        f"pairs/s >= {TARGET_SPEEDUP:g}x TRL's best ({LABELS[best]})": speedups[best] >= TARGET_SPEEDUP,
        f"{memory} <= {LABELS[best]}'s": ours[memory] <= theirs[memory],
        f"{memory} <= the lowest TRL setup's": ours[memory] <= lowest,
        f"first-step losses equal within {tolerance:g}": all(
            results[run]["loss_difference"] <= tolerance for run in trl_runs
        ),
    }


def format_value(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if key.startswith("mfu"):
        return f"{100 * value:.2f}%"
    if key == "first_step_loss":
        return f"{value:.6f}"
    if key == "loss_difference":
        return f"{value:.2e}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"


ROWS = (
    ("pairs trained", "num_pairs"), ("optimizer steps", "steps"),
    ("seconds, start to finish (no loading)", "seconds"),
    ("  constructor (tokenize, ref precompute)", "constructor_seconds"),
    ("  train()", "train_call_seconds"), ("  of which final save", "final_save_seconds"),
    ("model loading s (excluded)", "load_seconds"), ("pairs / s", "pairs_per_second"),
    ("real tokens / s", "real_tokens_per_second"), ("computed tokens / s", "computed_tokens_per_second"),
    ("MFU, real tokens", "mfu_real"), ("MFU, computed tokens", "mfu_computed"),
    ("peak RSS MiB", "peak_rss_mib"), ("RSS before start MiB", "rss_before_mib"),
    ("RSS increase MiB", "rss_increase_mib"), ("CUDA peak MiB", "cuda_peak_mib"),
    ("first-step loss (check reference)", "first_step_loss"),
    ("  |difference| to preftune", "loss_difference"),
    ("pairs with preftune's token ids", "pairs_with_preftune_token_ids"),
)  # fmt: skip


def format_table(results: dict[str, Any]) -> str:
    runs = [run for run in RUNS if run in results]
    header = f"{'':42}" + "".join(f"{LABELS[run]:>16}" for run in runs)
    if "ratios" in results:
        header += f"{'preftune / best':>17}"
    lines = [header, "-" * len(header)]
    for label, key in ROWS:
        line = f"{label:42}" + "".join(f"{format_value(key, results[run].get(key)):>16}" for run in runs)
        if "ratios" in results and key in RATIO_KEYS:
            line += f"{format_value('ratio', results['ratios'][key]):>17}"
        lines.append(line)
    lines += ["", *footnotes(results)]
    for goal, met in results.get("targets", {}).items():
        lines.append(f"target {goal}: {'met' if met else 'NOT met'}")
    if "profile" in results:
        lines += ["", format_profile(results["profile"], results["peak"]["peak_flop_per_second"])]
    return "\n".join(lines)


def footnotes(results: dict[str, Any]) -> list[str]:
    data, peak, setup = results["data"], results["peak"], results["setup"]
    lines = []
    if "ratios" in results:
        speedups = ", ".join(f"{x:.2f}x {LABELS[run]}" for run, x in results["speedups"].items())
        lines.append(
            f"preftune / best: against {LABELS[results['ratios']['versus']]} (the most pairs/s of TRL)"
        )
        lines.append(f"preftune pairs/s: {speedups}")
    rates = ", ".join(f"{n}: {rate / 1e9:.0f}" for n, rate in peak["flop_per_second_by_size"].items())
    floor = max(results[run]["parent_peak_rss_mib"] for run in RUNS if run in results)
    return [
        *lines,
        f"data: {data['pairs']} pairs, the first kept of {data['rows_read']} rows "
        f"({data['prompts_cut']} prompts cut); {data['real_tokens_per_pair']:.1f} real tokens per pair, "
        f"{100 * data['prompt_share_of_real_tokens']:.1f}% of them prompt tokens",
        f"padded batches of {setup['batch_size']} pairs (TRL's layout) would be "
        f"{100 * data['padded_batch_padding_share']:.1f}% padding; first-step check on "
        f"{data['check_pairs']} uncut pairs",
        *model_lines(results),
        f"{peak.get('dtype', 'float32')} matmul peak: {peak['peak_flop_per_second'] / 1e9:.1f} GFLOP/s at n = {peak['matmul_size']} "
        f"(GFLOP/s by n: {rates})",
        f"peak RSS is each worker's ru_maxrss, which Linux starts at the parent's peak when it spawns "
        f"the worker ({floor:,.0f} MiB at most here): a floor under every figure",
        "environment: " + ", ".join(f"{k} {v}" for k, v in results["environment"].items()),
    ]


def model_lines(results: dict[str, Any]) -> list[str]:
    """The model's shape, the first-step check's reference and the LM head's share of the FLOPs."""
    shape, setup = results["shape"], results["setup"]
    if setup["model"] is None:
        name = f"random-init Llama, vocab {shape['vocab']} (asked {setup['vocab_size']})"
        reference = f"the same architecture initialised under seed {REFERENCE_SEED}"
    else:
        name = f"{setup['model']} (pretrained), vocab {shape['vocab']}"
        reference = (
            f"the checkpoint plus N(0, ({REFERENCE_NOISE:g} rms(W))^2) noise on every weight W, "
            f"seed {REFERENCE_SEED} ({setup['workdir']}/reference)"
        )
    lines = [
        f"model: {name}, hidden {shape['hidden']}, {shape['layers']} layers, {shape['heads']} heads "
        f"({shape['kv_heads']} key/value), intermediate {shape['intermediate']}, "
        f"{'tied' if shape['tied_embeddings'] else 'untied'} embeddings, {shape['parameters'] / 1e6:.2f}M "
        f"parameters ({shape['non_embedding_parameters'] / 1e6:.2f}M non-embedding)",
        f"first-step check reference: {reference}",
    ]
    run = next((results[run] for run in RUNS if run in results), None)
    if run is not None:  # the same pairs for every setup; preftune's cut if it ran
        head = 8 * shape["hidden"] * shape["vocab"]
        tokens, pairs = run["real_tokens"], run["real_attention_pairs"]
        at_responses = (
            head * run["response_tokens"] / model_flops(shape, tokens, run["response_tokens"], pairs)
        )
        everywhere = head * tokens / model_flops(shape, tokens, tokens, pairs)
        lines.append(
            f"LM head: {100 * at_responses:.1f}% of the model FLOPs (real tokens) at response positions "
            f"only, as counted here; {100 * everywhere:.1f}% if run at every position"
        )
    return lines


def format_profile(profile: dict[str, Any], peak: float) -> str:
    lines = [
        f"preftune profile (torch.profiler, separate untimed run, {profile['wall_seconds']:.1f} s wall; "
        f"self {profile['clock']} time):",
        f"{'op':52}{'calls':>9}{'self s':>10}{'% wall':>9}{'GFLOP':>10}",
    ]
    for op in profile["top_ops"]:
        lines.append(
            f"{op['name'][:51]:52}{op['calls']:>9,}{op['self_seconds']:>10.2f}"
            f"{100 * op['share_of_wall']:>8.1f}%{op['gflop']:>10.1f}"
        )
    outside = 1 - profile["op_self_seconds"] / profile["wall_seconds"]
    rate = profile["matmul_flop_per_second"]
    lines.append(
        f"all ops: {profile['op_self_seconds']:.1f} s self time, {100 * outside:.1f}% of the wall outside "
        f"torch ops; matmuls ({', '.join(profile['matmul_ops'])}): "
        f"{100 * profile['matmul_share_of_wall']:.1f}% of the wall"
        + (f" at {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak:.1f}% of the peak" if rate else "")
    )
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
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dpo_vs_trl_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args, workdir)
    job, shape = prepared["job"], prepared["shape"]
    peak = measure_matmul_peak(torch.bfloat16 if args.bf16 else torch.float32)
    results: dict[str, Any] = {
        "setup": {**vars(args), "workdir": str(workdir)}, "environment": environment(args.threads),
        "data": prepared["data"], "shape": shape, "peak": peak,
    }  # fmt: skip
    runs = (args.only,) if args.only else tuple(r for r in RUNS if args.padded or r != "preftune_padded")
    for run in runs:
        results[run] = run_child(run, "timed", job, workdir)
        add_rates(results[run], shape, peak["peak_flop_per_second"])
        check = run_child(run, "check", job, workdir)
        results[run]["first_step"] = check["first_step"]
        results[run]["first_step_loss"] = check["first_step"]["loss"]
        if run in TRL_RUNS:
            results[run]["check_pairs_with_preftune_token_ids"] = check["pairs_with_preftune_token_ids"]
    if "preftune" in results and any(run in results for run in TRL_RUNS):
        compare(results)
    if args.profile:
        results["profile"] = run_child("preftune", "profile", job, workdir)["profile"]
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
