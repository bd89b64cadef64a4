"""The flags of `preftune dpo` (DPOConfig), as a plain dataclass.

It imports no torch (validation that needs the loss registry imports it when it runs), so
`preftune <command> --help` stays fast; preftune/trainers/dpo.py holds the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from preftune.data.config import DataConfig
from preftune.engine.config import RunInputs, TrainConfig
from preftune.feedback.aggregate import parse_label_noise
from preftune.models.config import ModelConfig

if TYPE_CHECKING:
    from preftune.losses.pairwise import PairwiseLoss

SFT_TERM = "sft"
"""--loss_type entry for the NLL of the chosen response (RPO / ORPO's language-modelling term); the same
as preftune.losses.registry.SFT_TERM, named here without importing torch."""


def loss_registry() -> dict[str, PairwiseLoss]:
    """preftune/losses/registry.py's LOSSES, imported when a config is checked (the losses need torch), not
    when `--help` runs."""
    from preftune.losses.registry import LOSSES

    return LOSSES


def losses_where(trait: str) -> tuple[str, ...]:
    """The losses whose record has `trait` set (preftune.losses.registry.losses_where), imported when checked."""
    from preftune.losses.registry import losses_where as where

    return where(trait)


@dataclass(kw_only=True)
class DPOObjective:
    """DPO's objective and how it treats the reference: the group of flags of every command that runs DPO
    (`preftune dpo` holds them as its own fields; `loop` and `cai` compose the group as `dpo`). Keyword-only,
    so that DPOConfig's positional order (model, data, train, ref_model) stays what it was."""

    beta: float = 0.1
    """KL strength: larger keeps the policy closer to the reference (0.01 to 0.5 is typical)."""
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    """Objectives to add up (see preftune/losses/pairwise.py), e.g. sigmoid, ipo, simpo, orpo; 'sft' adds
    the chosen response's NLL (RPO)."""
    loss_weights: list[float] | None = None
    """Weight of each --loss_type entry (default: all 1)."""
    label_smoothing: float = 0.0
    """Assumed label-flip rate for cdpo/robust (and the smoothed sigmoid): in [0, 0.5)."""
    label_noise: str = "none"
    """Where label_smoothing comes from: 'none' (use --label_smoothing), 'auto' (the Dawid-Skene flip rate of the
    training ratings; needs annotator ids and items rated more than once) or a flip rate such as '0.1'."""
    gamma: float = 0.5
    """SimPO's target reward margin."""
    discopop_tau: float = 0.05
    """DiscoPOP's temperature of the mix between the logistic and exponential losses."""
    f_divergence_type: Literal[
        "reverse_kl", "forward_kl", "js_divergence", "alpha_divergence", "js", "alpha"
    ] = "reverse_kl"
    """Divergence to the reference (f-DPO, arXiv 2309.16240): reverse_kl (DPO's), forward_kl, js_divergence,
    alpha_divergence (TRL's names; js and alpha are synonyms)."""
    f_alpha_divergence_coef: float = 0.5
    """TRL's coefficient a of --f_divergence_type alpha_divergence, in (0, 1): f'(u) = (u^(a-1) - 1) / (a - 1).
    The f-DPO paper's alpha (Table 1) is 1 - a: a near 1 is close to reverse_kl (DPO), near 0 to forward_kl."""
    ld_alpha: float | None = None
    """LD-DPO (arXiv 2409.06411): weight in [0, 1] of response tokens past the shorter response's length;
    None counts every token fully (plain DPO)."""
    use_weighting: bool = False
    """WPO (arXiv 2406.11827): weight each pair by the policy's probability of its two responses."""
    precompute_ref_log_probs: bool = False
    """Score every pair with the reference once before training and free the reference. The log-probs are
    cached on disk ($PREFTUNE_CACHE/ref_logps, keyed by the reference's and the tokenized data's hashes),
    so a later run on the same data and reference reads them instead. Without --ref_model (and without
    --use_peft) the policy before its first step is the reference: it scores the pairs itself, with no copy."""
    sync_ref_model: bool = False
    """TR-DPO (arXiv 2404.09656): every --ref_model_sync_steps, move the reference towards the policy."""
    ref_model_mixup_alpha: float = 0.6
    """TR-DPO soft update: reference <- alpha * policy + (1 - alpha) * reference."""
    ref_model_sync_steps: int = 512
    """Optimizer steps between TR-DPO reference updates."""
    prefix_sharing: bool = True
    """Run each pair as one [prompt][chosen][rejected] block (prompt once, rows packed, no padding)."""

    def check(self) -> None:
        """Raises on a value or a combination the objective cannot run. Not a __post_init__: the checks read
        the loss registry, which imports torch, and a group's default is built for `--help`. DPOConfig runs
        them, and `loop` and `cai` build their DPO stage's config when they are checked."""
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}. Typical range: 0.01 to 0.5.")
        known = sorted([*loss_registry(), SFT_TERM])
        for name in self.loss_type:
            if name not in known:
                raise ValueError(f"Unknown loss_type {name!r}. Choose from: {', '.join(known)}.")
        if not [name for name in self.loss_type if name != SFT_TERM]:
            raise ValueError(
                "loss_type needs a preference objective besides 'sft', e.g. --loss_type sigmoid sft."
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss types; "
                "give one weight per --loss_type entry."
            )
        self._check_variants()

    def _check_variants(self) -> None:
        """Options that only make sense with some losses fail here, before any model loads."""
        self._check_label_noise()
        if self.f_divergence_type != "reverse_kl" and self.reference_free:
            raise ValueError(
                f"--f_divergence_type {self.f_divergence_type} needs a reference, but {self.loss_type} "
                "is reference-free; use a reference-based loss such as sigmoid."
            )
        margin = losses_where("margin")
        other = [n for n in self.loss_type if n not in (*margin, SFT_TERM)]
        if self.f_divergence_type != "reverse_kl" and other:
            raise ValueError(
                f"--f_divergence_type replaces the log-ratio inside losses of the margin "
                f"r_chosen - r_rejected only ({', '.join(margin)}); {other} are not."
            )
        if self.ld_alpha is not None and (
            self.use_weighting
            or SFT_TERM in self.loss_type
            or any(loss_registry()[n].length_normalized for n in self.loss_type if n != SFT_TERM)
        ):
            raise ValueError(
                "--ld_alpha reweights tokens inside the summed log-probs, so per-token means "
                "(length-normalised losses, the sft term, WPO) would be divided by the wrong length; "
                "use --ld_alpha with sum-based losses alone."
            )
        if "orpo" in self.loss_type and SFT_TERM not in self.loss_type:
            raise ValueError(
                "ORPO is its odds-ratio term plus the NLL of the chosen response: pass "
                "--loss_type sft orpo (beta is ORPO's lambda)."
            )
        self._check_loss_params()
        if not 0 < self.f_alpha_divergence_coef < 1:
            raise ValueError(
                f"f_alpha_divergence_coef must be in (0, 1), got {self.f_alpha_divergence_coef}. It is TRL's "
                "coefficient a (the f-DPO paper's alpha is 1 - a); for the limits use reverse_kl (a = 1) or "
                "forward_kl (a = 0)."
            )
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            raise ValueError(
                f"ld_alpha must be in [0, 1] (or unset), got {self.ld_alpha}. The paper uses 0.3 to 0.7."
            )
        if "cdpo" in self.loss_type and self.label_noise == "none" and not 0 < self.label_smoothing < 0.5:
            raise ValueError(
                f"cdpo needs --label_smoothing in (0, 0.5), the assumed label-flip rate (e.g. 0.1); "
                f"got {self.label_smoothing}. With clean labels use sigmoid."
            )
        if "exo_pair" in self.loss_type and not 0 < self.label_smoothing < 1:
            raise ValueError(
                f"exo_pair needs --label_smoothing in (0, 1) (its paper uses 1e-3); got "
                f"{self.label_smoothing}."
            )
        if self.precompute_ref_log_probs and self.reference_free:
            raise ValueError(
                f"--precompute_ref_log_probs: {self.loss_type} is reference-free; drop the flag."
            )
        if self.sync_ref_model and (self.reference_free or self.precompute_ref_log_probs):
            raise ValueError(
                "--sync_ref_model updates a separate reference model during training, so it cannot be used with "
                "reference-free losses or precomputed reference log-probs."
            )
        if self.sync_ref_model and not (
            0 < self.ref_model_mixup_alpha <= 1 and self.ref_model_sync_steps >= 1
        ):
            raise ValueError(
                f"ref_model_mixup_alpha must be in (0, 1] and ref_model_sync_steps >= 1, got "
                f"{self.ref_model_mixup_alpha} and {self.ref_model_sync_steps}."
            )
        sorted_losses = [name for name in self.loss_type if name in losses_where("per_sorted_position")]
        if sorted_losses and self.use_weighting:
            raise ValueError(
                f"{sorted_losses} are computed per sorted position, not per pair, so WPO's per-pair "
                "weights (--use_weighting) cannot apply; drop one of them."
            )

    def _check_loss_params(self) -> None:
        """Each loss's own parameters in range, and none set for losses that ignore it."""
        params = {p for n in self.loss_type if n != SFT_TERM for p in loss_registry()[n].params}
        if self.label_smoothing and "label_smoothing" not in params:
            raise ValueError(
                f"--label_smoothing {self.label_smoothing} is not used by {self.loss_type}; drop it."
            )
        if not 0 <= self.label_smoothing < (1 if "exo_pair" in self.loss_type else 0.5):
            raise ValueError(
                f"label_smoothing must be in [0, 0.5) (exo_pair: (0, 1)), got {self.label_smoothing}."
            )
        if "gamma" in params and self.gamma < 0:
            raise ValueError(f"gamma (SimPO's target margin) must be >= 0, got {self.gamma}.")
        if "tau" in params and self.discopop_tau <= 0:
            raise ValueError(f"discopop_tau must be > 0, got {self.discopop_tau}.")
        if any(w < 0 for w in self.weights) or not any(self.weights):
            raise ValueError(f"loss_weights must be >= 0 and not all 0, got {self.weights}.")

    def _check_label_noise(self) -> None:
        if parse_label_noise(self.label_noise) is None:
            return
        smoothed = [
            n
            for n in self.loss_type
            if n in loss_registry() and "label_smoothing" in loss_registry()[n].params
        ]
        flip_rate = losses_where("label_noise")
        if not smoothed or set(smoothed) - set(flip_rate):
            raise ValueError(
                f"--label_noise {self.label_noise} sets the label-flip rate of {', '.join(flip_rate)}; "
                f"loss_type {self.loss_type} has {smoothed or 'none of them'}. Use e.g. --loss_type robust."
            )
        if self.label_smoothing:
            raise ValueError(
                f"--label_noise {self.label_noise} sets the label smoothing, but --label_smoothing "
                f"{self.label_smoothing} is set too; give only one of them."
            )

    @property
    def reference_free(self) -> bool:
        return all(loss_registry()[name].reference_free for name in self.loss_type if name != SFT_TERM)

    @property
    def weights(self) -> list[float]:
        return self.loss_weights or [1.0] * len(self.loss_type)


@dataclass
class DPOConfig(DPOObjective, RunInputs):
    """`preftune dpo`: the DPO objective's flags (DPOObjective) on a policy, a reference and preference pairs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-6))
    ref_model: str | None = None
    """Reference policy checkpoint (frozen). Default: --model itself, or with --use_peft the policy with
    its adapter disabled (no second copy of the weights)."""

    def __post_init__(self) -> None:
        self.check()
        if self.ref_model and self.reference_free:
            raise ValueError(
                f"loss_type {self.loss_type} is reference-free, so --ref_model would be loaded for nothing; drop it."
            )
        if self.sync_ref_model and self.model.use_peft:
            raise ValueError(
                "--sync_ref_model moves the reference towards the policy, whose LoRA weights differ from the "
                "reference's in layout; train all weights for TR-DPO, or drop --sync_ref_model."
            )
        if self.sync_ref_model and self.train.resume:
            raise ValueError(
                "--resume with --sync_ref_model: the moving reference is not saved in checkpoints yet, so a "
                "resumed run would not match; restart the run instead."
            )
