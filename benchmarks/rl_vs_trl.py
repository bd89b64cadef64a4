"""RLOO training speed, side by side: preftune's RLOOTrainer against TRL 1.16's RLOOTrainer.

One run writes the synthetic kindness world, builds a tiny random-init Llama from its SFT corpus
(`preftune.models.tiny.make_tiny`) and trains it with RLOO for --warmup_steps + --timed_steps
steps with each framework, each in its own subprocess (imports and memory do not mix), on the
same prompts file, the same reward (the task's gold reward) and the same batch. It prints, for
each, seconds per step (median over the timed steps), sampled (rollout) tokens per second over
the timed steps, peak RSS, where the time of a step goes (generation, the no-grad scoring
forwards of the policy and the reference, the reward, the update), and the ratios
preftune / TRL. Worker output goes to --workdir/log_*.txt.

    python benchmarks/rl_vs_trl.py --threads 1 --out rl_vs_trl.json       # about 3 minutes on 2 CPU cores
    python benchmarks/rl_vs_trl.py --size tiny --rounds 1 --timed_steps 3 --warmup_steps 1   # a quick check

One step, both frameworks: --prompts_per_step prompts, --num_generations samples of each
(the rollout batch, prompts x k sequences, sampled in one generate call), the policy's and the
reference's log-probs of every sample without gradient (in chunks of --micro_batch sequences),
the gold reward of each sample, leave-one-out advantages with the k1 KL penalty in the sequence
reward (kl_coef = TRL's beta), then ONE optimizer update over the whole rollout batch, as
rollout / --micro_batch micro-batches of gradient accumulation. The settings that give this:

- TRL: per_device_train_batch_size = --micro_batch, gradient_accumulation_steps = rollout /
  micro_batch, steps_per_generation left to its default (= gradient_accumulation_steps), so
  generation_batch_size = micro_batch x steps_per_generation = the rollout batch: one generation
  per optimizer step; num_iterations 1 (one update per rollout).
- preftune: per_device_train_batch_size = --micro_batch (sequences per forward),
  gradient_accumulation_steps = rollout / micro_batch, num_mini_batches 1, ppo_epochs 1, so the
  rollout batch is micro_batch x accumulation x 1 and each step makes one update; the sampling
  batch covers the whole rollout, so one generate call per step.

Held equal: the model files (policy and reference are the same checkpoint), the prompts file
(plain-text prompts; both tokenize them with the tokenizer's BOS, the same ids), k, max new
tokens, temperature 1.0, top_p 1.0, top_k off, float32, no gradient checkpointing, no vLLM,
torch AdamW (TRL's default is the fused variant) with the same learning rate, a constant
schedule without warmup, no weight decay, clipping at 1.0, seed 0, kl_coef / beta, the k1 KL
in the reward, the gold reward unnormalised and unclipped (preftune: reward_normalization none,
reward_clip 0, missing_eos_penalty 0, which TRL does not have), no evaluation, logging every
step, no checkpoints. Not equal, by design: the prompt order and the samples (each framework's
own seeded shuffle and sampler; a random-init model rarely samples EOS, so nearly every
response runs to --max_new_tokens in both), the loss reduction (TRL RLOO: mean over sequences
of the sequence log-prob ratio times the advantage; preftune: token-level sum over the
mini-batch's tokens - the same forwards and backwards), and preftune's train() ending with
saving the final model (outside the step timings).

Timing: a step runs from the end of the previous step (for the first, the start of `train()`)
to the end of this one: preftune's `Engine.end_step` returning, TRL's `on_step_end` callback.
Phases are timed by wrapping, in the worker only, the functions each step calls: preftune's
`make_experience` and `update` (bound methods of the trainer instance) and, inside
make_experience, the rollout backend's `generate`, `per_token` (the policy and reference
log-prob forwards) and `judge_scores` (decode + gold reward); TRL's
`_generate_and_score_completions` (the rollout), `_generate_single_turn` (model.generate),
`_get_per_token_logps_and_entropies` (without gradient: the scoring forwards; with gradient:
the update's forwards) and `_calculate_rewards`; TRL's update is the rest of the step
(forwards, backwards, the optimizer step, logging). Sampled tokens: the response tokens each
step generates (EOS included when sampled): preftune's `rollout/num_tokens` metric, TRL's
completion ids as `_generate` returns them. Tokens/s = sampled tokens over the timed steps /
their summed seconds; "generation tokens/s" divides by the generation time only.
Each phase and step also records the worker's process CPU seconds (all its threads): on a
machine shared with other work, wall time includes waiting for a core, and CPU time is the
steadier measure of the work each framework does (the table prints CPU s / wall s). --rounds
runs each framework that many times in fresh processes, alternating which goes first
(preftune, TRL, TRL, preftune, ...), and pools the timed steps of all rounds; the peak RSS is
the highest of its rounds. RSS is read from /proc and getrusage (Linux); the peak includes each
framework's imports.

The reward carries no signal at the start: a random-init model's samples are not sentences of
the task, so the gold reward is the same (-1) for nearly every sample, the advantages are zero and
the updates barely move the policy. Both frameworks still run every forward, backward and
optimizer step, so the speed comparison holds; it measures throughput, not learning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import current_rss_mib, environment, peak_rss_mib

RUNS = ("preftune", "trl")
LABELS = {"preftune": "preftune", "trl": "TRL"}
SEED = 0
TASK = "kindness"
CPU = ":cpu"  # suffix of a phase's process CPU seconds (all threads), beside its wall seconds
PHASES = ("generation", "scoring_forwards", "reward", "rollout_other", "update", "step_other")
PHASE_LABELS = {
    "generation": "generation (model.generate)",
    "scoring_forwards": "scoring forwards (policy + ref, no grad)",
    "reward": "reward (decode + gold)",
    "rollout_other": "rest of the rollout (advantages, ...)",
    "update": "update (fwd + bwd + optimizer)",
    "step_other": "rest of the step (logging, data)",
}

logger = logging.getLogger("rl_vs_trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RLOO training speed: preftune vs TRL, side by side.")
    add = parser.add_argument
    add("--size", choices=("tiny", "small"), default="small", help="preftune.models.tiny model shape.")
    add("--vocab_size", type=int, default=2048, help="BPE vocabulary of the tiny model's tokenizer.")
    add("--num_prompts", type=int, default=512, help="Training prompts written by the synthetic world.")
    add("--prompts_per_step", type=int, default=16, help="Prompts per step (rollout = prompts x k).")
    add("--num_generations", type=int, default=4, help="Samples per prompt (k, the group size).")
    add("--micro_batch", type=int, default=16, help="Sequences per forward (per_device_train_batch_size).")
    add("--max_new_tokens", type=int, default=24, help="Most tokens sampled per response.")
    add(
        "--max_length",
        type=int,
        default=128,
        help="preftune's prompt + response limit (prompts are cut to fit).",
    )
    add("--learning_rate", type=float, default=1e-5, help="AdamW learning rate (constant).")
    add("--kl_coef", type=float, default=0.05, help="KL coefficient (TRL's beta), k1 in the reward.")
    add(
        "--rollout_logps",
        choices=("recompute", "sampling"),
        default="recompute",
        help="preftune: recompute the policy's log-probs of its samples (as TRL does) or use the sampling-time ones.",
    )
    add("--warmup_steps", type=int, default=2, help="First steps left out of the timings.")
    add("--timed_steps", type=int, default=8, help="Steps timed after the warmup.")
    add(
        "--rounds",
        type=int,
        default=2,
        help="Runs of each framework, alternating which goes first; steps pooled.",
    )
    add("--threads", type=int, default=0, help="torch/OMP threads in each worker; 0 keeps torch's default.")
    add("--workdir", default=None, help="Folder for the data, model, runs and results (default: temp).")
    add("--out", default=None, help="Also write all results to this JSON file.")
    add("--only", choices=RUNS, default=None, help="Run one framework only (debugging).")
    add("--worker", choices=RUNS, default=None, help=argparse.SUPPRESS)
    add("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rollout = args.prompts_per_step * args.num_generations
    if args.num_generations < 2 or args.prompts_per_step < 1:
        parser.error("--num_generations must be >= 2 and --prompts_per_step >= 1.")
    if args.micro_batch < 1 or rollout % args.micro_batch:
        parser.error(
            f"--micro_batch must divide the rollout batch ({rollout} = prompts_per_step x num_generations)."
        )
    if args.warmup_steps < 0 or args.timed_steps < 1 or args.rounds < 1:
        parser.error("--warmup_steps must be >= 0, --timed_steps and --rounds >= 1.")
    if args.max_length <= args.max_new_tokens:
        parser.error("--max_length must exceed --max_new_tokens (room for the prompt).")
    return args


# ---------------------------------------------------------------- parent: data, model, children


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Write the synthetic world and the tiny model; return the job every worker reads."""
    from transformers import AutoConfig, AutoTokenizer

    from preftune.data import load_rows
    from preftune.models.tiny import make_tiny, texts_of_row
    from preftune.tasks import SynthConfig, write_task

    paths = write_task(
        SynthConfig(task=TASK, out=str(workdir / "synth"), num_prompts=args.num_prompts, seed=SEED)
    )
    sft = load_rows(str(paths["sft"]), "train")
    model_dir = make_tiny(
        (text for row in sft.rows for text in texts_of_row(row)),
        workdir / "model",
        args.size,
        args.vocab_size,
        SEED,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [json.loads(line)["prompt"] for line in paths["prompts"].read_text().splitlines()]
    prompt_tokens = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    config = AutoConfig.from_pretrained(model_dir)
    rollout = args.prompts_per_step * args.num_generations
    steps = args.warmup_steps + args.timed_steps
    job = {
        "model": str(model_dir), "prompts": str(paths["prompts"]), "threads": args.threads,
        "prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
        "micro_batch": args.micro_batch, "gradient_accumulation_steps": rollout // args.micro_batch,
        "rollout_batch": rollout, "max_new_tokens": args.max_new_tokens, "max_length": args.max_length,
        "learning_rate": args.learning_rate, "kl_coef": args.kl_coef, "steps": steps,
        "warmup_steps": args.warmup_steps, "rollout_logps": args.rollout_logps,
    }  # fmt: skip
    workload = {
        "task": TASK, "prompts": len(prompts), "prompt_tokens_mean": statistics.fmean(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens), "model_size": args.size, "vocab": len(tokenizer),
        "hidden": config.hidden_size, "layers": config.num_hidden_layers,
        "parameters": sum(p.numel() for p in _load_model(model_dir).parameters()),
    }  # fmt: skip
    return {"job": job, "workload": workload}


def _load_model(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def run_child(run: str, job: dict[str, Any], workdir: Path, round_index: int) -> dict[str, Any]:
    """One framework in a fresh Python process (threads pinned by the environment); its measurements."""
    tag = f"{run}_{round_index}"
    job_path, result_path = workdir / f"job_{tag}.json", workdir / f"result_{tag}.json"
    result_path.unlink(missing_ok=True)
    job_path.write_text(
        json.dumps({**job, "output_dir": str(workdir / f"run_{tag}"), "result": str(result_path)})
    )
    logger.info("round %d, %s: %d steps ...", round_index + 1, LABELS[run], job["steps"])
    env = dict(os.environ)
    if job["threads"]:
        env.update({name: str(job["threads"]) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", run, "--job", str(job_path)]
    log_path = workdir / f"log_{tag}.txt"
    with log_path.open("w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if finished.returncode:
        tail = "\n".join(log_path.read_text().splitlines()[-60:])
        raise RuntimeError(
            f"{LABELS[run]} failed (exit {finished.returncode}); the end of {log_path}:\n{tail}"
        )
    return json.loads(result_path.read_text())


# ---------------------------------------------------------------- workers (one framework per process)


class StepClock:
    """Per-step phase seconds and sampled tokens: wrappers add to the open step, `close` ends it."""

    def __init__(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.steps: list[dict[str, float]] = []
        self.current: defaultdict[str, float] = defaultdict(float)

    def timed(self, function: Callable[..., Any], phase: str | Callable[[], str]) -> Callable[..., Any]:
        """`function`, adding its wall time to `phase` (or to the phase that `phase()` names at the call)."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            name = phase() if callable(phase) else phase
            began, cpu_began = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - began
                self.current[name + CPU] += time.process_time() - cpu_began

        return timed_call

    def begin(self) -> None:
        self.start, self.cpu_start, self.current = (
            time.perf_counter(),
            time.process_time(),
            defaultdict(float),
        )

    def close(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.steps.append({**self.current, "step": now - self.start, "step" + CPU: cpu - self.cpu_start})
        self.start, self.cpu_start, self.current = now, cpu, defaultdict(float)


def run_worker(run: str, job_path: Path) -> None:
    job = json.loads(job_path.read_text())
    logging.basicConfig(level=logging.WARNING, format=f"[{run}] %(levelname)s %(name)s: %(message)s")
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(SEED)
    result = run_preftune(job) if run == "preftune" else run_trl(job)
    result["torch_threads"] = torch.get_num_threads()
    Path(job["result"]).write_text(json.dumps(result, indent=2))


def run_preftune(job: dict[str, Any]) -> dict[str, Any]:

    from preftune.data import DataConfig
    from preftune.engine import TrainConfig
    from preftune.engine.metrics import read_metrics
    from preftune.models.loading import ModelConfig
    from preftune.rollout.config import SamplingConfig, ScoringConfig
    from preftune.trainers import rloo_grpo

    config = rloo_grpo.RLOOConfig(
        model=ModelConfig(model=job["model"]),
        data=DataConfig(dataset=job["prompts"], max_length=job["max_length"]),
        train=TrainConfig(
            output_dir=job["output_dir"], learning_rate=job["learning_rate"], max_steps=job["steps"],
            per_device_train_batch_size=job["micro_batch"],
            gradient_accumulation_steps=job["gradient_accumulation_steps"], lr_scheduler_type="constant",
            warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_steps=0, seed=SEED,
            disable_tqdm=True, overwrite_output_dir=True,
        ),  # fmt: skip
        sampling=SamplingConfig(
            max_new_tokens=job["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
            generation_batch_size=job["rollout_batch"],  # the whole rollout in one generate call
        ),  # fmt: skip
        scoring=ScoringConfig(judge="gold", reward_normalization="none", reward_clip=0.0, missing_eos_penalty=0.0),
        advantage_estimator="rloo", num_generations=job["num_generations"], num_mini_batches=1, ppo_epochs=1,
        kl_coef=job["kl_coef"], kl_estimator="k1", rollout_logps=job["rollout_logps"],
    )  # fmt: skip
    clock = StepClock()
    sampled: list[float] = []  # tokens per generate call, counted from the rollout's mask

    class TimedBackend(rloo_grpo.TransformersBackend):  # type: ignore[misc, valid-type]
        def generate(self, *args: Any, **kwargs: Any) -> Any:
            rollout = clock.timed(super().generate, "generation")(*args, **kwargs)
            mask = getattr(rollout, "mask", None)
            if isinstance(mask, torch.Tensor):
                sampled.append(float(mask.sum()))
            return rollout

    rloo_grpo.TransformersBackend = TimedBackend
    rloo_grpo.per_token = clock.timed(rloo_grpo.per_token, "scoring_forwards")
    rloo_grpo.judge_scores = clock.timed(rloo_grpo.judge_scores, "reward")

    rss_before = current_rss_mib()
    began = time.perf_counter()
    trainer = rloo_grpo.RLOOTrainer(config)
    constructor_seconds = time.perf_counter() - began
    trainer.make_experience = clock.timed(trainer.make_experience, "rollout")
    trainer.update = clock.timed(trainer.update, "update")
    end_step = trainer.engine.end_step

    def end_step_then_close(*args: Any, **kwargs: Any) -> None:
        end_step(*args, **kwargs)
        clock.close()

    trainer.engine.end_step = end_step_then_close
    clock.begin()
    train_began = clock.start
    trainer.train()
    train_seconds = time.perf_counter() - train_began
    records = [
        r for r in read_metrics(Path(job["output_dir"]) / "metrics.jsonl") if "rollout/num_tokens" in r
    ]
    tokens = [float(r["rollout/num_tokens"]) for r in sorted(records, key=lambda r: r["step"])]
    if len(tokens) != len(clock.steps):
        raise RuntimeError(
            f"{len(tokens)} metrics lines with rollout/num_tokens for {len(clock.steps)} steps."
        )
    if sampled and sampled != tokens:
        logger.warning("rollout/num_tokens %s differs from the rollouts' masks %s", tokens, sampled)
    for step, count in zip(clock.steps, tokens, strict=True):
        step["sampled_tokens"] = count
        step["sequences"] = float(job["rollout_batch"])
    rewards = [r.get("reward/raw") for r in records]
    return {
        "steps": trainer.engine.step,
        "per_step": clock.steps,
        "reward_per_step": rewards,
        "constructor_seconds": constructor_seconds,
        "train_call_seconds": train_seconds,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "settings": {
            "per_device_train_batch_size": config.train.per_device_train_batch_size,
            "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
            "num_mini_batches": config.num_mini_batches,
            "ppo_epochs": config.ppo_epochs,
            "num_generations": config.num_generations,
            "rollout_size": config.rollout_size,
            "sampling.generation_batch_size": config.sampling.generation_batch_size,
            "max_new_tokens": config.sampling.max_new_tokens,
            "kl_coef": config.kl_coef,
            "kl_estimator": config.kl_estimator,
            "rollout_logps": config.rollout_logps,
            "optimizer": "torch.optim.AdamW",
            "lr_scheduler_type": config.train.lr_scheduler_type,
        },
    }


def trl_arguments(job: dict[str, Any]) -> dict[str, Any]:
    """TRL RLOOConfig fields; the comments name TRL's defaults that differ."""
    return {
        "output_dir": job["output_dir"],
        "learning_rate": job["learning_rate"],  # default 1e-6
        "per_device_train_batch_size": job["micro_batch"],
        "gradient_accumulation_steps": job["gradient_accumulation_steps"],
        # steps_per_generation / generation_batch_size left unset: one generation of
        # micro_batch x gradient_accumulation_steps sequences per optimizer step.
        "num_generations": job["num_generations"],  # default 2
        "max_completion_length": job["max_new_tokens"],  # default 512
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "beta": job["kl_coef"],
        "num_iterations": 1,
        "max_steps": job["steps"],
        "lr_scheduler_type": "constant",  # default linear
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",  # default adamw_torch_fused; preftune steps torch.optim.AdamW
        "seed": SEED,  # default 42
        "bf16": False,  # default True unless fp16
        "fp16": False,
        "activation_checkpointing": False,  # default True (gradient_checkpointing, its old name)
        "model_init_kwargs": {"dtype": "float32"},
        "use_vllm": False,
        "logging_steps": 1,  # default 10
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "log_completions": False,
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def run_trl(job: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.trainer.rloo_config import RLOOConfig
    from trl.trainer.rloo_trainer import RLOOTrainer

    from preftune.tasks import get_task

    task = get_task(TASK)

    def gold_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [task.gold_reward(p, c) for p, c in zip(prompts, completions, strict=True)]

    clock = StepClock()

    class CloseStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.close()

    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    records = [json.loads(line) for line in Path(job["prompts"]).read_text().splitlines()]
    args = RLOOConfig(**trl_arguments(job))
    rss_before = current_rss_mib()
    began = time.perf_counter()
    trainer = RLOOTrainer(
        model=job["model"],
        reward_funcs=[gold_reward],
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=[CloseStep()],
    )
    constructor_seconds = time.perf_counter() - began
    trainer._generate_and_score_completions = clock.timed(trainer._generate_and_score_completions, "rollout")
    trainer._generate_single_turn = clock.timed(trainer._generate_single_turn, "generation")
    trainer._calculate_rewards = clock.timed(trainer._calculate_rewards, "reward")
    trainer._get_per_token_logps_and_entropies = clock.timed(
        trainer._get_per_token_logps_and_entropies,
        lambda: "update_forwards" if torch.is_grad_enabled() else "scoring_forwards",
    )
    generate = trainer._generate

    def generate_and_count(prompts: list[Any]) -> Any:
        prompt_ids, completion_ids, completions = generate(prompts)
        clock.current["sampled_tokens"] += sum(len(ids) for ids in completion_ids)
        clock.current["sequences"] += len(completion_ids)
        return prompt_ids, completion_ids, completions

    trainer._generate = generate_and_count
    clock.begin()
    train_began = clock.start
    trainer.train()
    train_seconds = time.perf_counter() - train_began
    rewards = [entry.get("reward") for entry in trainer.state.log_history if "reward" in entry]
    return {
        "steps": trainer.state.global_step,
        "per_step": clock.steps,
        "reward_per_step": rewards,
        "constructor_seconds": constructor_seconds,
        "train_call_seconds": train_seconds,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "settings": {
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "steps_per_generation": args.steps_per_generation,
            "generation_batch_size": args.generation_batch_size,
            "num_generations": args.num_generations,
            "num_iterations": args.num_iterations,
            "max_completion_length": args.max_completion_length,
            "beta": args.beta,
            "optim": str(args.optim),
            "lr_scheduler_type": str(args.lr_scheduler_type),
            "activation_checkpointing": args.activation_checkpointing,
            "bf16": args.bf16,
            "pad_to_multiple_of": args.pad_to_multiple_of,
        },
    }


# ---------------------------------------------------------------- report


def merge_rounds(rounds: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """One framework's rounds as one result: their timed steps pooled, the highest peak RSS."""
    for r in rounds:
        if len(r["per_step"]) != r["steps"] or r["steps"] <= warmup:
            raise RuntimeError(
                f"A run made {r['steps']} steps and timed {len(r['per_step'])} (warmup {warmup})."
            )
    return {
        "rounds": rounds,
        "steps_per_round": [r["steps"] for r in rounds],
        "timed_per_step": [step for r in rounds for step in r["per_step"][warmup:]],
        "warmup_per_step": [step for r in rounds for step in r["per_step"][:warmup]],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds),
        "rss_before_mib": max(r["rss_before_mib"] for r in rounds),
        "constructor_seconds": statistics.fmean(r["constructor_seconds"] for r in rounds),
        "train_call_seconds": statistics.fmean(r["train_call_seconds"] for r in rounds),
        "torch_threads": rounds[0]["torch_threads"],
        "settings": rounds[0]["settings"],
    }


def summarize(result: dict[str, Any]) -> None:
    """Timed-step statistics, in place: s/step, tokens/s and the phase split."""
    steps = result["timed_per_step"]
    seconds = [s["step"] for s in steps]
    total = sum(seconds)
    tokens = sum(s.get("sampled_tokens", 0.0) for s in steps)
    for s in steps:  # the rollout split into its parts, the update, and what is left of the step
        for clock in ("", CPU):  # wall seconds, then process CPU seconds
            rollout = s.get("rollout" + clock, 0.0)
            parts = sum(s.get(name + clock, 0.0) for name in ("generation", "scoring_forwards", "reward"))
            s["rollout_other" + clock] = rollout - parts
            if "update" + clock not in s:  # TRL: everything of the step outside the rollout
                s["update" + clock] = s["step" + clock] - rollout
            s["step_other" + clock] = s["step" + clock] - rollout - s["update" + clock]
    generation = sum(s.get("generation", 0.0) for s in steps)
    result["timed_steps"] = len(steps)
    result["seconds_per_step"] = statistics.median(seconds)
    result["seconds_per_step_mean"] = total / len(steps)
    result["timed_seconds"] = total
    result["sampled_tokens"] = tokens
    result["sampled_tokens_per_step"] = tokens / len(steps)
    result["sequences_per_step"] = statistics.fmean(s.get("sequences", 0.0) for s in steps)
    result["tokens_per_second"] = tokens / total
    result["sequences_per_second"] = sum(s.get("sequences", 0.0) for s in steps) / total
    result["generation_tokens_per_second"] = tokens / generation if generation else None
    cpu = [s["step" + CPU] for s in steps]
    result["cpu_seconds_per_step"] = statistics.median(cpu)
    result["tokens_per_cpu_second"] = tokens / sum(cpu)
    result["cpu_per_wall"] = sum(cpu) / total
    result["phases"] = {
        name: {
            "seconds_per_step": sum(s.get(name, 0.0) for s in steps) / len(steps),
            "share": sum(s.get(name, 0.0) for s in steps) / total,
            "cpu_seconds_per_step": sum(s.get(name + CPU, 0.0) for s in steps) / len(steps),
            "cpu_share": sum(s.get(name + CPU, 0.0) for s in steps) / sum(cpu),
        }
        for name in (*PHASES, "update_forwards")
        if any(name in s for s in steps)
    }


RATIOS = {
    "tokens_per_second": "preftune / TRL",
    "generation_tokens_per_second": "preftune / TRL",
    "sequences_per_second": "preftune / TRL",
    "seconds_per_step": "TRL / preftune",
    "cpu_seconds_per_step": "TRL / preftune",
    "tokens_per_cpu_second": "preftune / TRL",
    "peak_rss_mib": "preftune / TRL",
}


def compare(results: dict[str, Any]) -> None:
    ours, theirs = results["preftune"], results["trl"]
    ratios: dict[str, float | None] = {}
    for key, direction in RATIOS.items():
        a, b = ours.get(key), theirs.get(key)
        if direction == "TRL / preftune":
            a, b = b, a
        ratios[f"{key} ({direction})"] = a / b if a and b else None
    results["ratios"] = ratios
    results["target"] = {
        "preftune at least as fast (tokens/s)": ours["tokens_per_second"] >= theirs["tokens_per_second"],
        "preftune at least as fast (s/step)": ours["seconds_per_step"] <= theirs["seconds_per_step"],
    }


ROWS = (
    ("steps (timed, all rounds)", "timed_steps"), ("sequences / step", "sequences_per_step"),
    ("sampled tokens / step", "sampled_tokens_per_step"), ("s / step (median)", "seconds_per_step"),
    ("s / step (mean)", "seconds_per_step_mean"), ("sampled tokens / s", "tokens_per_second"),
    ("sequences / s", "sequences_per_second"), ("generation-only tokens / s", "generation_tokens_per_second"),
    ("process CPU s / step (median)", "cpu_seconds_per_step"), ("sampled tokens / CPU s", "tokens_per_cpu_second"),
    ("CPU s / wall s (threads busy)", "cpu_per_wall"),
    ("peak RSS MiB", "peak_rss_mib"), ("RSS before the trainer MiB", "rss_before_mib"),
    ("constructor s", "constructor_seconds"), ("train() s (all steps)", "train_call_seconds"),
)  # fmt: skip


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def format_table(results: dict[str, Any]) -> str:
    runs = [run for run in RUNS if run in results]
    header = (
        f"{'':44}"
        + "".join(f"{LABELS[run]:>14}" for run in runs)
        + ("   ratio" if "ratios" in results else "")
    )
    lines = [header, "-" * len(header)]
    for label, key in ROWS:
        line = f"{label:44}" + "".join(f"{number(results[run].get(key)):>14}" for run in runs)
        ratio = next((f"{v:.2f}  ({k.split('(')[1]}" for k, v in results.get("ratios", {}).items()
                      if k.startswith(key + " (") and v is not None), "")  # fmt: skip
        lines.append(line + (f"   {ratio}" if ratio else ""))
    lines += ["", "where a timed step goes (s / step and share of the step; wall, then process CPU):"]
    lines.append(
        f"{'':44}" + "".join(f"{LABELS[run] + ' wall':>15}{LABELS[run] + ' CPU':>15}" for run in runs)
    )
    for name in (*PHASES, "update_forwards"):
        if not any(name in results[run]["phases"] for run in runs):
            continue
        label = PHASE_LABELS.get(name, "  of which the update's forwards")
        cells = []
        for run in runs:
            phase = results[run]["phases"].get(name)
            cells += (
                [f"{phase['seconds_per_step']:.3f} {100 * phase['share']:3.0f}%",
                 f"{phase['cpu_seconds_per_step']:.3f} {100 * phase['cpu_share']:3.0f}%"]
                if phase else ["-", "-"]
            )  # fmt: skip
        lines.append(f"{label:44}" + "".join(f"{cell:>15}" for cell in cells))
    settings = results["setup"]
    lines += [
        "",
        f"workload: {results['workload']['prompts']} {TASK} prompts ({results['workload']['prompt_tokens_mean']:.1f} "
        f"tokens on average), {settings['prompts_per_step']} prompts x k={settings['num_generations']} = "
        f"{settings['prompts_per_step'] * settings['num_generations']} sequences per step, max {settings['max_new_tokens']} "
        f"new tokens, micro-batch {settings['micro_batch']}, 1 update per step; model {results['workload']['model_size']} "
        f"({results['workload']['parameters'] / 1e6:.2f}M parameters, vocab {results['workload']['vocab']}); "
        f"{settings['warmup_steps']} warmup + {settings['timed_steps']} timed steps in each of "
        f"{settings['rounds']} rounds per framework",
    ]
    for run in runs:
        lines.append(
            f"{LABELS[run]} settings: " + ", ".join(f"{k} {v}" for k, v in results[run]["settings"].items())
        )
    for goal, met in results.get("target", {}).items():
        lines.append(f"target {goal}: {'met' if met else 'NOT met'}")
    lines.append("environment: " + ", ".join(f"{k} {v}" for k, v in results["environment"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        if not args.job:
            raise ValueError("--worker needs --job FILE (the parent process writes it).")
        run_worker(args.worker, Path(args.job))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rl_vs_trl_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args, workdir)
    results: dict[str, Any] = {
        "setup": {**vars(args), "workdir": str(workdir)}, "environment": environment(args.threads),
        "workload": prepared["workload"], "job": prepared["job"],
    }  # fmt: skip
    runs = (args.only,) if args.only else RUNS
    rounds: dict[str, list[dict[str, Any]]] = {run: [] for run in runs}
    for index in range(args.rounds):  # ABBA order: each framework goes first in every other round
        for run in runs if index % 2 == 0 else runs[::-1]:
            rounds[run].append(run_child(run, prepared["job"], workdir, index))
    for run in runs:
        results[run] = merge_rounds(rounds[run], args.warmup_steps)
        summarize(results[run])
    if all(run in results for run in RUNS):
        compare(results)
    print(format_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
