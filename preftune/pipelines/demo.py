"""`preftune demo`: the embedded default, end to end on the synthetic world, no arguments, no network.

synth (a panel-rated world, and a copy rated by a strongly length-biased panel) -> tiny model
-> SFT -> a proxy reward model on the panel's labels -> DPO, PPO and RLOO against the proxy,
and best-of-n with it -> evaluation of every policy against SFT on held-out prompts (gold
reward, proxy reward, win rate, KL, length) -> one deliberate case of reward hacking: PPO on
the length-biased reward model, watched by the reward-hacking monitor.
Writes summary.json (shaped as in DESIGN.md), report.md, report.html with its PNG plots, and the
data, models and runs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from preftune.data import DataConfig, encode_prompt, load_rows
from preftune.engine import TrainConfig, read_metrics
from preftune.eval.config import PolicyEvalConfig
from preftune.eval.policy import run_policy_eval
from preftune.eval.report import write_report
from preftune.eval.stats import bootstrap_mean_ci
from preftune.models.config import ModelConfig
from preftune.models.loading import load_policy, load_tokenizer
from preftune.models.tiny import make_tiny, texts_of_row
from preftune.pipelines.config import DemoConfig
from preftune.rollout.best_of_n import run_best_of_n
from preftune.rollout.config import BoNConfig, SamplingConfig, ScoringConfig
from preftune.rollout.generate import sample_responses
from preftune.tasks import PanelConfig, SynthConfig, get_task, write_task
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig
from preftune.trainers.ppo import PPOTrainer
from preftune.trainers.ppo_config import PPOConfig
from preftune.trainers.reward import RewardTrainer
from preftune.trainers.reward_config import RewardConfig
from preftune.trainers.rloo_grpo import RLOOTrainer
from preftune.trainers.rloo_grpo_config import RLOOConfig
from preftune.trainers.sft import SFTTrainer
from preftune.trainers.sft_config import SFTConfig

logger = logging.getLogger(__name__)

TUNED = ("dpo", "ppo", "rloo")
"""Policies trained from SFT and evaluated against it (best-of-n is reported from its samples)."""


def gold_scores(task_name: str, prompts: list[str], responses: list[str]) -> dict[str, Any]:
    """Mean gold reward with a 95% bootstrap interval, and mean length in words."""
    task = get_task(task_name)
    rewards = [task.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    mean, low, high = bootstrap_mean_ci(rewards)
    length = sum(len(r.split()) for r in responses) / len(responses)
    return {"gold_reward": mean, "gold_reward_ci": [low, high], "length": length, "n": len(rewards)}


def sample_policy(path: str, prompts: list[str], config: DemoConfig) -> list[str]:
    """Decoded responses of the checkpoint at `path` (EOS and pads removed)."""
    tokenizer = load_tokenizer(path)
    model = load_policy(ModelConfig(model=path))
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
    ids = sample_responses(model, tokenizer, encoded, sampling, seed=config.seed)
    return [str(tokenizer.decode(r, skip_special_tokens=True)) for r in ids]


def _train(out: Path, config: DemoConfig, **fields: Any) -> TrainConfig:
    return TrainConfig(output_dir=str(out), seed=config.seed, overwrite_output_dir=True, **fields)


def _reward_model(base: str, files: dict[str, Path], out: Path, config: DemoConfig) -> str:
    """A reward model on the panel's pairs (the recipe of configs/rm/synthetic.yaml)."""
    data = DataConfig(dataset=str(files["pairs"]), eval_dataset=str(files["eval_pairs"]), max_length=128)
    train = _train(
        out, config, learning_rate=3e-3, per_device_train_batch_size=32, num_train_epochs=2, logging_steps=20
    )
    RewardTrainer(RewardConfig(model=ModelConfig(model=base), data=data, train=train)).train()
    return str(out / "final")


def _rl_common(
    sft: str, files: dict[str, Path], out: Path, judge: str, config: DemoConfig, **train: Any
) -> dict:
    data = DataConfig(dataset=str(files["prompts"]), eval_dataset=str(files["eval_prompts"]), max_length=128)
    settings = {
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "max_steps": config.rl_steps,
        "logging_steps": 5,
        "eval_steps": 10,
        **train,
    }
    return {
        "model": ModelConfig(model=sft),
        "data": data,
        "train": _train(out, config, **settings),
        "sampling": SamplingConfig(max_new_tokens=config.max_new_tokens),
        "scoring": ScoringConfig(judge=judge),
    }


def train_methods(sft: str, rm: str, files: dict[str, Path], out: Path, config: DemoConfig) -> dict[str, str]:
    """DPO on the panel's pairs; PPO and RLOO against the proxy reward model. Returns the final folders."""
    data = DataConfig(dataset=str(files["pairs"]), eval_dataset=str(files["eval_pairs"]), max_length=128)
    dpo_train = _train(
        out / "dpo",
        config,
        learning_rate=5e-4,
        per_device_train_batch_size=32,
        warmup_ratio=0.1,
        logging_steps=20,
    )
    DPOTrainer(DPOConfig(model=ModelConfig(model=sft), data=data, train=dpo_train, beta=0.1)).train()
    judge = f"rm:{rm}"
    ppo = _rl_common(sft, files, out / "ppo", judge, config, per_device_train_batch_size=32)
    PPOTrainer(PPOConfig(**ppo, num_mini_batches=2, ppo_epochs=4, kl_coef=0.1)).train()
    rloo = _rl_common(sft, files, out / "rloo", judge, config, per_device_train_batch_size=64)
    RLOOTrainer(RLOOConfig(**rloo, num_generations=4, ppo_epochs=2, kl_coef=0.1)).train()
    return {name: str(out / name / "final") for name in TUNED}


def reward_hacking_case(
    sft: str, biased_rm: str, files: dict[str, Path], out: Path, config: DemoConfig
) -> dict:
    """PPO on a reward model trained on a strongly length-biased panel, with a small KL coefficient, the
    gold reward watched every 5 steps: the monitor's summary (flagged, evidence, findings)."""
    common = _rl_common(
        sft, files, out, f"rm:{biased_rm}", config, per_device_train_batch_size=32, eval_steps=5
    )
    PPOTrainer(PPOConfig(**common, value_model=sft, num_mini_batches=2, ppo_epochs=4, kl_coef=0.01)).train()
    return json.loads((out / "summary.json").read_text())["hacking"]


def best_of_n(sft: str, rm: str, files: dict[str, Path], out: Path, config: DemoConfig) -> dict[str, Any]:
    """Best-of-n with the proxy reward model: the gold and proxy reward of the responses it picks, and the
    analytical KL of best-of-n to the SFT policy."""
    report = run_best_of_n(
        BoNConfig(
            model=ModelConfig(model=sft),
            data=DataConfig(dataset=str(files["eval_prompts"]), max_length=128),
            judge=f"rm:{rm}",
            n=config.best_of_n,
            max_new_tokens=config.max_new_tokens,
            output_dir=str(out),
            max_prompts=config.num_eval_prompts,
            seed=config.seed,
            disable_tqdm=True,
        )
    )
    best = [json.loads(line) for line in (out / "best.jsonl").read_text().splitlines()]
    scores = gold_scores(config.task, [r["prompt"] for r in best], [r["completion"] for r in best])
    last = report["curve"][
        -1
    ]  # n = best_of_n: KL to SFT is log n - (n - 1)/n (the plug-in estimate beside it)
    proxy = sum(r["score"] for r in best) / len(best)
    return {
        **scores,
        "proxy_reward": proxy,
        "kl": last["kl_bound"],
        "kl_measured": last["kl_measured"],
        "win_rate_vs_sft": None,
    }


def evaluate_methods(
    sft: str, rm: str, policies: dict[str, str], files: dict[str, Path], out: Path, config: DemoConfig
) -> dict[str, dict[str, Any]]:
    """`preftune eval --policy` of the tuned policies against SFT, with the proxy as judge."""
    eval_config = PolicyEvalConfig(
        policy=[f"{name}={path}" for name, path in policies.items()],
        reference=sft,
        prompts=str(files["eval_prompts"]),
        judge=f"rm:{rm}",
        samples_per_prompt=2,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        max_prompts=config.num_eval_prompts,
    )
    data = DataConfig(dataset=str(files["eval_prompts"]), max_length=128)
    flat = run_policy_eval(eval_config, str(out), data, "auto", None, 64)
    words: dict[str, list[int]] = {}  # lengths in words, as for the base model and best-of-n
    for line in (out / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        words.setdefault(row["policy"], []).append(len(row["response"].split()))
    methods = {}
    for name in ("sft", *policies):
        key = f"policy/{'reference' if name == 'sft' else name}/"
        methods[name] = {
            "gold_reward": flat[key + "gold_reward"],
            "gold_reward_ci": flat[key + "gold_reward_ci"],
            "proxy_reward": flat[key + "judge_reward"],
            "win_rate_vs_sft": flat[key + "win_rate"],
            "lc_win_rate_vs_sft": flat[key + "lc_win_rate"],
            "kl": flat[key + "kl"],
            "kl_se": flat[key + "kl_se"],
            "length": sum(words[key.split("/")[1]]) / len(words[key.split("/")[1]]),
            "example": flat[key + "examples"][0],
        }
    return methods


PHASES = (
    "synthetic world",
    "tiny model",
    "SFT",
    "reward models",
    "DPO, PPO and RLOO",
    "evaluation against SFT",
    "best-of-n",
    "reward-hacking case",
    "report",
)


def _phase(number: int, start: float) -> None:
    """The demo's progress line (each trainer also shows its own progress bar)."""
    logger.info(
        "demo [%d/%d] %s (%.0f s so far)",
        number,
        len(PHASES),
        PHASES[number - 1],
        time.perf_counter() - start,
    )


def run_demo(config: DemoConfig) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(config.output_dir)
    _phase(1, start)
    files = write_task(SynthConfig(task=config.task, out=str(out / "data"), seed=config.seed))
    biased_panel = PanelConfig(length_bias=0.2)  # configs/synth/kindness.yaml: 0.2 utility per word
    biased = write_task(
        SynthConfig(
            task=config.task, out=str(out / "data-length-biased"), seed=config.seed, panel=biased_panel
        )
    )
    _phase(2, start)
    texts = (text for row in load_rows(str(files["sft"])).rows for text in texts_of_row(row))
    base = str(make_tiny(texts, out / "base", size=config.size, seed=config.seed))
    _phase(3, start)

    sft_train = _train(
        out / "sft",
        config,
        learning_rate=config.sft_learning_rate,
        per_device_train_batch_size=config.sft_batch_size,
        max_steps=config.sft_steps,
        warmup_ratio=0.05,
        logging_steps=25,
    )
    SFTTrainer(
        SFTConfig(
            model=ModelConfig(model=base),
            data=DataConfig(dataset=str(files["sft"]), max_length=128),
            train=sft_train,
        )
    ).train()
    sft = str(out / "sft" / "final")
    _phase(4, start)
    rm = _reward_model(base, files, out / "rm", config)
    biased_rm = _reward_model(base, biased, out / "rm-length-biased", config)

    _phase(5, start)
    policies = train_methods(sft, rm, files, out, config)
    _phase(6, start)
    methods = evaluate_methods(sft, rm, policies, files, out / "eval", config)
    _phase(7, start)
    methods["bon"] = best_of_n(sft, rm, files, out / "bon", config)
    _phase(8, start)
    hacking = reward_hacking_case(sft, biased_rm, files, out / "ppo-length-biased-rm", config)
    _phase(9, start)

    prompts = [row["prompt"] for row in load_rows(str(files["eval_prompts"])).rows][: config.num_eval_prompts]
    task = get_task(config.task)
    corpus = [row for row in load_rows(str(files["sft"])).rows if task.is_task_prompt(row["prompt"])]
    summary = {
        "methods": {
            "base": gold_scores(config.task, prompts, sample_policy(base, prompts, config)),
            **methods,
        },
        "sft_corpus": gold_scores(
            config.task, [r["prompt"] for r in corpus], [r["completion"] for r in corpus]
        ),
        "hacking": hacking,
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(render_markdown(summary))
    history = read_metrics(out / "ppo-length-biased-rm" / "metrics.jsonl")
    write_report(summary, out, [row for row in history if "eval/gold_reward" in row])
    return summary


def _cell(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """The demo's table (gold reward, proxy reward, win rate vs SFT, KL, length) and the hacking case."""
    names = {
        "base": "base (random init)",
        "sft": "sft",
        "dpo": "dpo",
        "ppo": "ppo (proxy RM)",
        "rloo": "rloo (proxy RM)",
        "bon": "best-of-n (proxy RM)",
    }
    lines = [
        "# preftune demo",
        "",
        "Held-out prompts of the synthetic world. Gold reward: what people 'really' prefer (95% CI); proxy: the",
        "reward model learned from the panel's labels; win rate and KL against the SFT policy.",
        "",
        "| policy | gold reward | 95% CI | proxy reward | win rate vs SFT | KL to SFT | length (words) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, name in names.items():
        row = summary["methods"].get(key)
        if row is None:
            continue
        low, high = row["gold_reward_ci"]
        lines.append(
            f"| {name} | {row['gold_reward']:.3f} | [{low:.3f}, {high:.3f}] | {_cell(row.get('proxy_reward'))} | "
            f"{_cell(row.get('win_rate_vs_sft'))} | {_cell(row.get('kl'), 2)} | {row['length']:.1f} |"
        )
    corpus = summary["sft_corpus"]
    lines.append(
        f"| SFT corpus (demonstrations) | {corpus['gold_reward']:.3f} | [{corpus['gold_reward_ci'][0]:.3f}, "
        f"{corpus['gold_reward_ci'][1]:.3f}] | - | - | - | {corpus['length']:.1f} |"
    )
    hacking = summary["hacking"]
    verdict = "flagged" if hacking["flagged"] else "not flagged"
    lines += [
        "",
        "## Reward hacking",
        "",
        f"PPO against a reward model trained on a length-biased panel: **{verdict}** by the monitor.",
        "",
        hacking["evidence"],
        "",
        f"Wall time: {summary['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
