"""The flags of `preftune eval` (EvalConfig, of RewardEvalConfig and PolicyEvalConfig).

Plain dataclasses that import no torch, so `preftune eval --help` stays fast; preftune/eval/command.py,
reward_model.py and policy.py use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from preftune.rollout.config import JudgeSpec


@dataclass
class RewardEvalConfig:
    """`preftune eval --reward_model PATH --dataset PAIRS --output_dir OUT`."""

    reward_model: str = ""
    """Reward model to evaluate: rm:PATH (or a bare PATH), or rm:PATH1,PATH2 for an ensemble."""
    dataset: str = ""
    """Preference pairs (prompt/chosen/rejected, or chosen/rejected with an implicit prompt)."""
    output_dir: str = ""
    """Folder for eval.json (reward models: also reward_stats.json; policies: also samples.jsonl)."""
    dataset_split: str = "train"
    """Split or slice of --dataset, e.g. 'train[1500:]'."""
    max_length: int | None = None
    """Longest tokenized prompt + response (longer pairs follow --truncation); default: the max_length the
    reward model was trained with (from its reward_stats.json), else 1024 (policies: 512)."""
    truncation: Literal["left", "error"] = "left"
    """'left' drops prompt tokens from the left (counted); 'error' stops."""
    skip_invalid: bool = False
    """Skip rows that fail validation (counted and reported) instead of stopping."""
    dialogue_format: Literal["text", "hh"] = "text"
    """'hh' reads text transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") as message lists for the chat
    template (use what the reward model or policy was trained with)."""
    task: str = "auto"
    """Synthetic task for gold agreement / gold reward: 'auto' reads task.json beside --dataset (or
    --prompts); 'none' turns it off."""
    batch_size: int = 32
    """Sequences scored per forward pass."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the reward model is loaded in."""
    device: str | None = None
    """Device to score on (default: cuda if available, else cpu)."""
    confidence: float = 0.95
    """Level of the confidence intervals."""
    num_bins: int = 10
    """Bins of the calibration error."""
    probe_sycophancy: bool = False
    """The sycophancy probe (eval/sycophancy.py). Reward models: each pair's chosen response also scored
    opened with flattery or agreement that says nothing (the score change with its interval; 2 more scorings
    per pair). Policies: each one's yes/no answers to built-in questions asked on their own and after the
    user states either answer (how far the answer follows the user, with its interval)."""
    write_stats: bool = False
    """Also write reward_stats.json next to the reward model (a single model), replacing the one training
    wrote, so PPO normalises rewards with the statistics of these pairs. It is always written to --output_dir."""

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}.")


@dataclass
class PolicyEvalConfig(JudgeSpec):
    """The policy-evaluation flags of `preftune eval` (the shared ones are in RewardEvalConfig); the judge
    (JudgeSpec: --judge, a pointwise judge such as rm:PATH, and --judge_options) scores every response."""

    policy: list[str] = field(default_factory=list)
    """Policies to evaluate, as NAME=PATH or PATH (named by its folder); repeat the flag or list several."""
    reference: str = ""
    """Reference policy (usually the SFT model): the baseline of the win rate and the anchor of the KL."""
    prompts: str = ""
    """Prompt-only data (a `prompt` column) the policies answer."""
    prompts_split: str = "train"
    """Split or slice of --prompts, e.g. 'train[:200]'."""
    heldout_judge: str = ""
    """A second judge scoring the same samples (e.g. rm:PATH of a reward model trained on pairs the policies never
    saw): held-out reward and win rate, and the reward-hacking check where there is no gold reward."""
    pairwise_judge: str = ""
    """A judge comparing each policy's answer with the reference's to the same prompt and sample (LLM-as-judge:
    llm:PATH or http:URL, which see each pair in both orders; panel; a pointwise judge prefers the higher
    score): pairwise_win_rate with its interval, the judge's position consistency and what it could not judge."""
    pairwise_judge_options: dict[str, Any] = field(default_factory=dict)
    """Options of the pairwise judge as JSON, as --judge_options of `preftune loop` takes them, e.g.
    '{"min_answer_mass": 0.1, "template": "judge.txt"}' (docs/judges.md lists them)."""
    reference_answers: str = ""
    """A file of fixed answers (`prompt` and `completion` columns, the prompt as --prompts has it), e.g. a
    stronger model's or people's: with --pairwise_judge every policy, the reference included, is also judged
    against them (answers_win_rate with its interval, position consistency, what could not be judged)."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt and policy."""
    max_new_tokens: int = 32
    """Longest sampled response."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy)."""
    seed: int = 0
    """Seed of the sampling streams (the same for every policy)."""
    max_prompts: int = 0
    """Evaluate the first this many prompts; 0 = all."""
    num_resamples: int = 2000
    """Bootstrap resamples of the intervals."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.num_resamples < 100:
            raise ValueError(
                f"samples_per_prompt and max_new_tokens must be >= 1 and num_resamples >= 100, got "
                f"{self.samples_per_prompt}, {self.max_new_tokens} and {self.num_resamples}."
            )
        if self.max_prompts < 0 or self.seed < 0:
            raise ValueError(f"max_prompts and seed must be >= 0, got {self.max_prompts} and {self.seed}.")

    def check(self) -> None:
        """The flags policy evaluation needs (checked when --policy is given)."""
        for flag, value in (
            ("--reference", self.reference),
            ("--prompts", self.prompts),
            ("--judge", self.judge),
        ):
            if not value:
                raise ValueError(
                    f"{flag} is required with --policy: preftune eval --policy NAME=PATH --reference SFT_PATH "
                    "--prompts PROMPTS --judge SPEC --output_dir OUT."
                )
        if self.reference_answers and not self.pairwise_judge:
            raise ValueError(
                "--reference_answers are compared with each policy's answers by a pairwise judge: add "
                "--pairwise_judge SPEC (e.g. llm:PATH or http:URL)."
            )
        names = [name for name, _ in self.named_policies()]
        duplicates = sorted({n for n in names if names.count(n) > 1} | ({"reference"} & set(names)))
        if duplicates:
            raise ValueError(
                f"Policy names must be unique and not 'reference' (the baseline), got {duplicates}; name them "
                "with NAME=PATH."
            )

    def named_policies(self) -> list[tuple[str, str]]:
        """(name, path) of each --policy entry."""
        named = []
        for spec in self.policy:
            name, sep, path = spec.partition("=")
            if not sep:
                path = spec
                folder = Path(spec.rstrip("/"))
                name = folder.parent.name if folder.name == "final" and folder.parent.name else folder.name
            if not name or not path:
                raise ValueError(f"--policy {spec!r}: give NAME=PATH or a checkpoint folder.")
            named.append((name, path))
        return named


@dataclass
class EvalConfig:
    """`preftune eval --reward_model PATH --dataset PAIRS --output_dir OUT`, or
    `preftune eval --policy NAME=PATH ... --reference PATH --prompts FILE --judge SPEC --output_dir OUT`."""

    reward: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    policies: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)

    def __post_init__(self) -> None:
        if bool(self.reward.reward_model) == bool(self.policies.policy):
            raise ValueError(
                "Evaluate either a reward model (--reward_model PATH --dataset PAIRS) or policies (--policy NAME=PATH "
                "--reference PATH --prompts FILE --judge SPEC), one per run."
            )
        if not self.reward.output_dir:
            raise ValueError("--output_dir is required: the folder for eval.json.")
        if self.policies.policy:
            self.policies.check()
