"""The flags of `preftune demo`, `preftune loop` and `preftune cai` (DemoConfig, LoopConfig, CAIConfig).

Plain dataclasses that import no torch, so `preftune <command> --help` stays fast; the pipelines in
preftune/pipelines/ use them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from preftune.data.config import DataConfig
from preftune.engine.config import TrainConfig
from preftune.models.config import ModelConfig
from preftune.pipelines.constitution import load_constitution
from preftune.rollout.config import JudgeConfig, SamplingConfig
from preftune.trainers.dpo_config import DPOConfig, DPOObjective


@dataclass
class DemoConfig:
    output_dir: str = "preftune-demo"
    """Folder for the data, models, report.md and summary.json."""
    task: str = "kindness"
    """Synthetic task (see `preftune synth --help`)."""
    size: Literal["tiny", "small"] = "tiny"
    """Model shape for the tiny-model factory."""
    sft_steps: int = 1000
    """SFT optimizer steps."""
    sft_learning_rate: float = 3e-3
    """SFT learning rate (tiny random-init models need a large one)."""
    sft_batch_size: int = 32
    """SFT examples per step."""
    rl_steps: int = 40
    """PPO and RLOO steps (and the reward-hacking case's)."""
    best_of_n: int = 16
    """Samples per prompt of best-of-n."""
    num_eval_prompts: int = 128
    """Held-out prompts sampled from each policy."""
    max_new_tokens: int = 24
    """Longest sampled response."""
    quick: bool = False
    """A shorter run for CI: fewer SFT and RL steps and held-out prompts (the numbers are noisier)."""
    seed: int = 0
    """Seed of data, model initialisation, training and sampling."""

    def __post_init__(self) -> None:
        for name in ("sft_steps", "rl_steps", "best_of_n", "num_eval_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.quick:
            self.sft_steps, self.rl_steps = min(self.sft_steps, 400), min(self.rl_steps, 20)
            self.num_eval_prompts, self.best_of_n = min(self.num_eval_prompts, 64), min(self.best_of_n, 8)


@dataclass
class LoopConfig(JudgeConfig):
    """`preftune loop --model POLICY --dataset PROMPTS --judge SPEC --rounds K --output_dir OUT`: the judge
    (JudgeConfig) rates each round's samples."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=256))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            learning_rate=5e-4,
            per_device_train_batch_size=32,
            num_train_epochs=2,
            warmup_ratio=0.1,
            logging_steps=5,
            save_steps=10,
            lr_scheduler_type="cosine",
        )
    )
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32))
    rounds: int = 3
    """Rounds of generate -> rate -> tune -> evaluate. Raising it on a finished loop adds rounds."""
    num_generations: int = 4
    """Samples per prompt and round (k); pairs are built among them."""
    prompts_per_round: int = 256
    """Prompts sampled per round, a fresh slice of --dataset each round (0 = all prompts every round)."""
    pairs: Literal["best_worst", "all"] = "best_worst"
    """best_worst: one pair per prompt, its best sample over its worst; all: every pair of samples whose
    judge scores differ by more than --margin."""
    margin: float = 0.0
    """Smallest judge-score difference between chosen and rejected (pairwise judges score a sample by its
    mean probability of beating the prompt's other samples, in [0, 1])."""
    min_confidence: float = 0.0
    """Keep only pairs the judge is confident about: |2 P(chosen beats rejected) - 1| >= this, with P the
    pairwise judge's direct verdict, or sigmoid(score difference) for a pointwise judge (in [0, 1))."""
    reference: Literal["initial", "previous"] = "initial"
    """DPO's reference policy in each round: the starting policy (round 0), or the previous round's."""
    dpo: DPOObjective = field(default_factory=lambda: DPOObjective(beta=0.3))
    """Each round's DPO objective, with every flag of `preftune dpo`'s (--beta, --loss_type, --gamma, ...).
    beta is 0.3 here rather than one DPO run's usual 0.1: with --reference initial it bounds how far all
    rounds together move from the starting policy (benchmarks/RESULTS.md)."""
    eval_judge: str = ""
    """Pointwise judge of the held-out evaluation (default: --judge when it is pointwise, else gold)."""
    num_eval_prompts: int = 128
    """Held-out prompts: the first of --eval_dataset, or without it the last of --dataset (not trained on)."""
    eval_samples_per_prompt: int = 2
    """Responses per held-out prompt and round."""
    device: str | None = None
    """Device (default: cuda if available, else cpu)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        usage = "preftune loop --model POLICY --dataset PROMPTS --judge SPEC --rounds K --output_dir OUT"
        for flag, value in (
            ("--model", self.model.model),
            ("--dataset", self.data.dataset),
            ("--judge", self.judge),
            ("--output_dir", self.train.output_dir),
        ):
            if not value:
                raise ValueError(f"{flag} is required: {usage}.")
        if self.sampling.generation_backend != "transformers":
            raise ValueError(
                f"--generation_backend {self.sampling.generation_backend}: preftune loop samples with transformers "
                "(the backend is used by ppo, rloo, grpo and online-dpo); drop the flag."
            )
        for name, value, least in (
            ("rounds", self.rounds, 1),
            ("num_generations", self.num_generations, 2),
            ("prompts_per_round", self.prompts_per_round, 0),
            ("num_eval_prompts", self.num_eval_prompts, 1),
            ("eval_samples_per_prompt", self.eval_samples_per_prompt, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}.")
        if self.margin < 0 or not 0 <= self.min_confidence < 1:
            raise ValueError(
                f"margin must be >= 0 and min_confidence in [0, 1), got {self.margin} and {self.min_confidence}."
            )
        if self.sampling.temperature == 0:
            raise ValueError(
                "temperature 0 is greedy decoding: all samples of a prompt would be the same response and "
                "no pair could be built. Use a temperature > 0 (1.0 samples the policy itself)."
            )
        if self.train.resume:
            raise ValueError("--resume is not needed: running the same loop again resumes it. Drop --resume.")
        # The per-round DPO config checks the objective against the model and training flags before anything runs.
        self.dpo_config(self.model.model, "<pairs>", None, Path(self.train.output_dir) / "check")

    def dpo_config(self, policy: str, pairs: str, reference: str | None, out: Path) -> DPOConfig:
        """The DPO run of one round: from `policy` on `pairs`, output into `out`."""
        from preftune.engine.checkpoint import list_checkpoints  # here, not at the top: it imports torch

        checkpoints = out.is_dir() and bool(list_checkpoints(out / "checkpoints"))
        train = dataclasses.replace(
            self.train, output_dir=str(out), resume=checkpoints, overwrite_output_dir=not checkpoints
        )
        data = DataConfig(
            dataset=pairs,
            max_length=self.data.max_length,
            truncation=self.data.truncation,
            skip_invalid=self.data.skip_invalid,
        )
        return DPOConfig(
            model=dataclasses.replace(self.model, model=policy),
            data=data,
            train=train,
            ref_model=reference,
            **dataclasses.asdict(self.dpo),
        )


@dataclass
class CAIConfig(JudgeConfig):
    """`preftune cai --model M --dataset PROMPTS --output_dir OUT [--constitution FILE.yaml]`; the judge
    (JudgeConfig: an AI judge such as llm:PATH or http:URL, whose template gets the sampled principle)
    labels the pairs of --preference judge."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=256))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            learning_rate=5e-4,
            per_device_train_batch_size=32,
            num_train_epochs=2,
            warmup_ratio=0.1,
            logging_steps=10,
        )
    )
    """The DPO stage (learning_rate, batch size, epochs...); the SFT stage has its own sft_* fields."""
    constitution: str = ""
    """Constitution YAML, or a built-in name (kindness, assistant); default: kindness."""
    num_prompts: int = 512
    """Prompts of --dataset to answer, critique and revise (0 = all)."""
    max_new_tokens: int = 32
    """Longest answer, critique or revision."""
    temperature: float = 1.0
    """Sampling temperature of the answers (critiques and revisions are greedy)."""
    use_chat_template: bool = False
    """Send the prompts and the critique and revision requests to the model as one user message in its chat
    template, and train (SFT, DPO) and evaluate in that format: for chat models such as SmolLM2-Instruct.
    Off: plain text, the format the synthetic world's models were taught."""
    preference: Literal["auto", "revision", "critique", "judge"] = "auto"
    """Preference pairs: `revision`, the revision over the original answer; `critique`, two samples of the
    revision-tuned model labelled by the starting model's own critiques (the one its critique finds no issue
    with wins; needs `no_issue` in every principle); `judge`, two samples labelled by --judge (RLAIF).
    auto: critique when every principle has `no_issue`, else revision."""
    sft_learning_rate: float = 5e-4
    """Learning rate of SFT on the revisions."""
    sft_epochs: float = 2.0
    """Epochs of SFT on the revisions."""
    dpo: DPOObjective = field(default_factory=lambda: DPOObjective(loss_type=["sigmoid", "sft"]))
    """The preference stage's DPO objective, with every flag of `preftune dpo`'s (--beta, --loss_type, ...);
    --loss_type is sigmoid sft here (DPO plus the revisions' NLL)."""
    eval_judge: str = ""
    """Judge of the before/after evaluation (default: gold when the prompts are a synthetic task's)."""
    num_eval_prompts: int = 128
    """Held-out prompts: the first of --eval_dataset, or without it the last of --dataset (not used to train)."""
    device: str | None = None
    """Device (default: cuda if available, else cpu)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        usage = "preftune cai --model M --dataset PROMPTS --output_dir OUT"
        for flag, value in (
            ("--model", self.model.model),
            ("--dataset", self.data.dataset),
            ("--output_dir", self.train.output_dir),
        ):
            if not value:
                raise ValueError(f"{flag} is required: {usage}.")
        if self.preference == "judge" and not self.judge:
            raise ValueError("--preference judge needs --judge SPEC (e.g. llm:PATH or http:URL).")
        if self.preference != "judge" and self.judge:
            raise ValueError(
                "--judge is only used with --preference judge; drop it or add --preference judge."
            )
        verdicts = all(p.no_issue for p in load_constitution(self.constitution).principles)  # checks the file
        if self.preference == "auto":
            self.preference = "critique" if verdicts else "revision"
        if self.preference == "critique" and not verdicts:
            raise ValueError(
                "--preference critique reads each critique's verdict from the principle's `no_issue` text; give every "
                "principle of the constitution a no_issue entry (docs/cai.md), or use --preference revision."
            )
        if self.num_prompts < 0 or self.num_eval_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("num_prompts must be >= 0, num_eval_prompts and max_new_tokens >= 1.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (the answers are sampled), got {self.temperature}.")
        # The DPO stage's config checks the objective against the model and training flags before anything runs.
        pairs = DataConfig(dataset="<pairs>", max_length=self.data.max_length)
        DPOConfig(model=self.model, data=pairs, train=self.train, **dataclasses.asdict(self.dpo))
