"""Reward-hacking monitor: the proxy reward against a held-out judge, response length and KL over training.

Background: a policy optimised against a learned proxy reward eventually raises the proxy while the
true objective falls (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization", arXiv
2210.10760), and a common blind spot it exploits is length (Singhal et al. 2023, "A Long Way to Go:
Investigating Length Correlations in RLHF", arXiv 2310.03716). The trainers (PPO, RLOO/GRPO, online
DPO) and `preftune eval` feed the monitor one `Observation` per evaluation: the proxy (the judge being
optimised), a held-out judge (the synthetic task's gold reward, a second reward model, or minus the
ensemble's standard deviation), the mean response length and the sequence-level KL to the reference.

Rules (each a finding *kind*, reported once, at the first observation where it holds):

- ``divergence``: either
  - trend: over the last ``hacking_window`` observations, least-squares slopes (per step) of the
    proxy and of the held-out score are fitted against the step; the *fitted change* over the window
    is ``slope * (last step - first step)``. Flag when the proxy's fitted change is
    ``> hacking_min_drop`` (a rise larger than noise, in the proxy's units) while the held-out
    fitted change is ``< -hacking_min_drop``;
  - sustained: for ``hacking_window`` consecutive observations the proxy is above its first value
    while the held-out score is more than ``hacking_min_drop`` below its best value so far. This
    catches a slow decline whose per-window change stays under the threshold.
- ``length_drift``: ``|length / first length - 1| > length_drift`` (growth or shrinkage); the first
  length is that of the first observation with a positive length. Off when ``length_drift`` is 0.
- ``kl_budget``: ``kl > kl_budget`` (nats per sequence). Off when ``kl_budget`` is None.

Without a held-out judge (``heldout`` None on every observation) only the length and KL rules apply.
`metrics()` gives the monitor's state for metrics.jsonl (``hacking/...``) at every observation, and
`state_dict()` makes it resumable from a checkpoint (`Engine.trainer_state`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from preftune.stats import least_squares_slope

logger = logging.getLogger(__name__)

DIVERGENCE = "divergence"
LENGTH_DRIFT = "length_drift"
KL_BUDGET = "kl_budget"
FINDING_KINDS = (DIVERGENCE, LENGTH_DRIFT, KL_BUDGET)

_STATE_FORMAT = 1  # version of state_dict(); bump when its layout changes


@dataclass
class HackingConfig:
    hacking_window: int = 3
    """Number of recent observations (evaluations) the proxy and held-out trends are fitted on (>= 2)."""
    hacking_min_drop: float = 0.05
    """Divergence is flagged when the held-out score falls by more than this (its own units, fitted change
    over the window) while the proxy rises by more than this (the proxy's units)."""
    length_drift: float = 0.5
    """Flag when the mean response length moves more than this fraction from the first observation
    (0.5 = +-50%); 0 turns the check off."""
    kl_budget: float | None = None
    """Flag when the KL to the reference exceeds this (nats per sequence); None turns the check off."""
    stop_on_hacking: bool = False
    """Stop training (raise RewardHackingDetected) when a finding is made, instead of only warning."""

    def __post_init__(self) -> None:
        window = self.hacking_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(
                f"hacking_window must be an integer >= 2 (observations a trend is fitted on), got {window!r}. "
                "Use e.g. 3."
            )
        _check_threshold(
            "hacking_min_drop", self.hacking_min_drop, "Use e.g. 0.05 (in the held-out judge's units)."
        )
        _check_threshold(
            "length_drift", self.length_drift, "Use e.g. 0.5 for +-50%, or 0 to turn the check off."
        )
        budget = self.kl_budget
        if budget is not None and (_not_a_number(budget) or not math.isfinite(budget) or budget <= 0):
            raise ValueError(
                f"kl_budget must be > 0 (nats per sequence) or None, got {budget!r}. Use e.g. 10.0, "
                "or leave it unset to turn the check off."
            )
        if not isinstance(self.stop_on_hacking, bool):
            raise ValueError(f"stop_on_hacking must be true or false, got {self.stop_on_hacking!r}.")


def _not_a_number(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float)


def _check_threshold(name: str, value: Any, fix: str) -> None:
    if _not_a_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}. {fix}")


class RewardHackingDetected(RuntimeError):
    """Raised by `HackingMonitor.observe` when `stop_on_hacking` is set and a finding is made."""


@dataclass
class Observation:
    step: int
    """Optimizer step the observation was made at."""
    proxy: float
    """The reward being optimised (the judge's score), mean over the held-out samples."""
    heldout: float | None
    """The held-out judge (gold reward, a second reward model, or minus the ensemble std); None if absent."""
    length: float
    """Mean response length (tokens)."""
    kl: float
    """KL to the reference (sequence level, nats)."""

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"Observation.step must be an integer >= 0, got {self.step!r}.")
        values = {"proxy": self.proxy, "length": self.length, "kl": self.kl}
        if self.heldout is not None:
            values["heldout"] = self.heldout
        for name, value in values.items():
            if _not_a_number(value) or not math.isfinite(value):
                raise ValueError(
                    f"Observation.{name} must be a finite number, got {value!r} at step {self.step}. "
                    "Check the evaluation that produced it (an empty evaluation set gives NaN)."
                )
        if self.length < 0:
            raise ValueError(
                f"Observation.length must be >= 0 (mean tokens), got {self.length} at step {self.step}."
            )
        self.proxy, self.length, self.kl = float(self.proxy), float(self.length), float(self.kl)
        self.heldout = None if self.heldout is None else float(self.heldout)


@dataclass
class Finding:
    kind: str
    """One of FINDING_KINDS."""
    step: int
    """Step of the observation at which it was made."""
    message: str
    """The warning, with its evidence."""


class HackingMonitor:
    """Watches a run's evaluations for reward hacking (rules in the module docstring).

    `heldout_name` names the held-out judge in the warnings: "gold", the second reward model's path,
    "ensemble agreement", ...
    """

    def __init__(self, config: HackingConfig, heldout_name: str = "gold") -> None:
        if not isinstance(heldout_name, str) or not heldout_name.strip():
            raise ValueError(
                f"heldout_name must be a non-empty string naming the held-out judge, got {heldout_name!r}. "
                "Use e.g. 'gold'."
            )
        self.config = config
        self.heldout_name = heldout_name
        self._reset()

    def _reset(self) -> None:
        self._num_observations = 0
        self._first: Observation | None = None
        self._recent: deque[Observation] = deque(maxlen=self.config.hacking_window)
        self._baseline_length: tuple[int, float] | None = None  # (step, length) the drift is measured from
        self._best_heldout: tuple[int, float] | None = None  # (step, value)
        self._max_kl: tuple[int, float] | None = None  # (step, value)
        self._streak = 0  # consecutive observations meeting the sustained-divergence condition
        self._streak_start: int | None = None  # step of the first of them
        self._findings: list[Finding] = []

    # --- observing -------------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[str]:
        """Add one observation; returns the new findings (each logged with logger.warning).

        Raises RewardHackingDetected after recording them when `stop_on_hacking` is set.
        """
        if not isinstance(obs, Observation):
            raise TypeError(f"observe() takes an Observation, got {type(obs).__name__}.")
        self._check_next(obs)
        self._update(obs)
        reported = {finding.kind for finding in self._findings}
        checks = {DIVERGENCE: self._divergence, LENGTH_DRIFT: self._length_drift, KL_BUDGET: self._kl_budget}
        new = []
        for kind, check in checks.items():
            message = None if kind in reported else check(obs)
            if message is not None:
                new.append(Finding(kind, obs.step, message))
        self._findings += new
        for finding in new:
            logger.warning("%s", finding.message)
        if new and self.config.stop_on_hacking:
            raise RewardHackingDetected(
                " ".join(f.message for f in new) + " Training stopped because stop_on_hacking is true "
                "(set it to false to only warn)."
            )
        return [finding.message for finding in new]

    def _check_next(self, obs: Observation) -> None:
        if self._first is None:
            return
        last = self._recent[-1]
        if obs.step <= last.step:
            raise ValueError(
                f"Observations must come in increasing step order: got step {obs.step} after step {last.step}. "
                "On resume, restore the monitor with load_state_dict from the same checkpoint as the model."
            )
        if (obs.heldout is None) != (self._first.heldout is None):
            present = "has" if obs.heldout is not None else "lacks"
            raise ValueError(
                f"The observation at step {obs.step} {present} a held-out score, unlike the first one (step "
                f"{self._first.step}). Pass the held-out judge ({self.heldout_name}) on every observation or "
                "on none."
            )

    def _update(self, obs: Observation) -> None:
        self._num_observations += 1
        if self._first is None:
            self._first = obs
        self._recent.append(obs)
        if self._baseline_length is None and obs.length > 0:
            self._baseline_length = (obs.step, obs.length)
        if self._max_kl is None or obs.kl > self._max_kl[1]:
            self._max_kl = (obs.step, obs.kl)
        if obs.heldout is None:
            return
        if self._best_heldout is None or obs.heldout > self._best_heldout[1]:
            self._best_heldout = (obs.step, obs.heldout)
        diverging = (
            obs.proxy > self._first.proxy
            and obs.heldout < self._best_heldout[1] - self.config.hacking_min_drop
        )
        if diverging:
            self._streak += 1
            self._streak_start = obs.step if self._streak == 1 else self._streak_start
        else:
            self._streak, self._streak_start = 0, None

    def _trend(self) -> tuple[float, float] | None:
        """Fitted (proxy, held-out) change over the full window, or None before it is full."""
        recent = list(self._recent)
        if len(recent) < self.config.hacking_window or recent[0].heldout is None:
            return None
        steps = [o.step for o in recent]
        span = steps[-1] - steps[0]
        proxy_change = float(least_squares_slope(steps, [o.proxy for o in recent])) * span
        heldout_change = (
            float(least_squares_slope(steps, [o.heldout for o in recent if o.heldout is not None])) * span
        )
        return proxy_change, heldout_change

    # --- the rules ---------------------------------------------------------------------------------------

    def _divergence(self, obs: Observation) -> str | None:
        first, min_drop, name = self._first, self.config.hacking_min_drop, self.heldout_name
        if obs.heldout is None or first is None or first.heldout is None or self._best_heldout is None:
            return None
        trend = self._trend()
        trend_hit = trend is not None and trend[0] > min_drop and trend[1] < -min_drop
        sustained_hit = self._streak >= self.config.hacking_window
        if not (trend_hit or sustained_hit):
            return None
        parts = [f"Reward hacking suspected at step {obs.step}:"]
        if trend is not None and trend_hit:
            start, end = self._recent[0], self._recent[-1]
            assert start.heldout is not None and end.heldout is not None, (
                "checked: held-out on every observation"
            )
            parts.append(
                f"the proxy reward rose from {start.proxy:.2f} to {end.proxy:.2f} over steps {start.step}-"
                f"{end.step} (fitted change {trend[0]:+.3g}) while the held-out {name} score fell from "
                f"{start.heldout:.2f} to {end.heldout:.2f} (fitted change {trend[1]:+.3g}, beyond "
                f"hacking_min_drop={min_drop:g})."
            )
        if sustained_hit:
            best_step, best = self._best_heldout
            parts.append(
                f"Since step {self._streak_start} the proxy reward has stayed above its first value "
                f"({first.proxy:.2f} at step {first.step}; now {obs.proxy:.2f}) while the held-out {name} score "
                f"has stayed more than {min_drop:g} below its best ({best:.2f} at step {best_step}; now "
                f"{obs.heldout:.2f})."
            )
        verb = "grew" if obs.length >= first.length else "shrank"
        parts.append(
            f"Responses {verb} from {first.length:.1f} to {obs.length:.1f} tokens and the KL to the reference "
            f"went from {first.kl:.2f} to {obs.kl:.2f} nats since step {first.step}. The policy is likely "
            "exploiting a blind spot of the proxy: read samples from these steps, keep an earlier checkpoint, "
            "or raise kl_coef, penalise length, or use an ensemble judge."
        )
        return " ".join(parts)

    def _length_drift(self, obs: Observation) -> str | None:
        drift, baseline = self.config.length_drift, self._baseline_length
        if drift == 0 or baseline is None:
            return None
        base_step, base_length = baseline
        ratio = obs.length / base_length
        if abs(ratio - 1) <= drift:
            return None
        verb, longer = ("grew", "longer") if ratio > 1 else ("shrank", "shorter")
        return (
            f"Response length drifted at step {obs.step}: the mean response length {verb} from "
            f"{base_length:.1f} tokens at step {base_step} to {obs.length:.1f} ({ratio:.2f}x), beyond the "
            f"+-{drift:.0%} allowed by length_drift={drift:g}. A judge that favours {longer} responses may be "
            "being gamed: compare samples and the held-out judge's scores by length (length_drift 0 turns "
            "this check off)."
        )

    def _kl_budget(self, obs: Observation) -> str | None:
        budget, first = self.config.kl_budget, self._first
        if budget is None or first is None or obs.kl <= budget:
            return None
        return (
            f"KL budget exceeded at step {obs.step}: the KL to the reference is {obs.kl:.2f} nats per sequence, "
            f"above kl_budget={budget:g} (it was {first.kl:.2f} at step {first.step}). The policy has moved far "
            "from the reference, where the proxy's scores are least trustworthy: raise kl_coef or set "
            "target_kl, lower the learning rate, or keep an earlier checkpoint."
        )

    # --- reporting ---------------------------------------------------------------------------------------

    @property
    def flagged(self) -> bool:
        """Whether any finding has been made so far."""
        return bool(self._findings)

    @property
    def findings(self) -> list[Finding]:
        """All findings so far, in the order they were made."""
        return list(self._findings)

    def metrics(self) -> dict[str, float]:
        """The monitor's state after the latest observation, for metrics.jsonl.

        Always ``hacking/flagged`` (0/1) and ``hacking/num_findings``; after the first observation also
        ``hacking/kl`` (latest KL) and ``hacking/length_ratio`` (latest / first length); from two
        observations on ``hacking/proxy_slope`` and ``hacking/heldout_slope`` (per step, fitted on the
        last ``hacking_window`` observations or all of them before that); with a held-out judge
        ``hacking/heldout_below_best`` (best held-out score so far minus the latest). A value not yet
        defined is left out rather than written as NaN.
        """
        out = {"hacking/flagged": float(self.flagged), "hacking/num_findings": float(len(self._findings))}
        if not self._recent:
            return out
        recent = list(self._recent)
        last = recent[-1]
        out["hacking/kl"] = last.kl
        if self._baseline_length is not None:
            out["hacking/length_ratio"] = last.length / self._baseline_length[1]
        if len(recent) >= 2:
            steps = [o.step for o in recent]
            out["hacking/proxy_slope"] = float(least_squares_slope(steps, [o.proxy for o in recent]))
            if last.heldout is not None:
                out["hacking/heldout_slope"] = float(
                    least_squares_slope(steps, [o.heldout for o in recent if o.heldout is not None])
                )
        if self._best_heldout is not None and last.heldout is not None:
            out["hacking/heldout_below_best"] = self._best_heldout[1] - last.heldout
        return out

    def summary(self) -> dict[str, Any]:
        """``{"flagged", "evidence", "findings"}`` for summary.json: the findings' messages as evidence,
        or, when quiet, how the watched quantities moved."""
        findings = [asdict(finding) for finding in self._findings]
        if self._findings:
            evidence = " ".join(finding.message for finding in self._findings)
        elif self._first is None:
            evidence = "No observations were made, so reward hacking was not checked."
        else:
            first, last = self._first, self._recent[-1]
            heldout = (
                f"held-out {self.heldout_name} {first.heldout:.2f} -> {last.heldout:.2f}"
                if first.heldout is not None and last.heldout is not None
                else "no held-out judge"
            )
            max_step, max_kl = self._max_kl if self._max_kl is not None else (last.step, last.kl)
            evidence = (
                f"No reward hacking detected over {self._num_observations} observations (steps {first.step}-"
                f"{last.step}): proxy {first.proxy:.2f} -> {last.proxy:.2f}, {heldout}, length "
                f"{first.length:.1f} -> {last.length:.1f} tokens, KL {last.kl:.2f} (max {max_kl:.2f} at step "
                f"{max_step})."
            )
        return {"flagged": self.flagged, "evidence": evidence, "findings": findings}

    # --- checkpointing -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state (plain lists, numbers and strings) for Engine.trainer_state."""
        return {
            "format": _STATE_FORMAT,
            "num_observations": self._num_observations,
            "first": None if self._first is None else asdict(self._first),
            "recent": [asdict(obs) for obs in self._recent],
            "baseline_length": None if self._baseline_length is None else list(self._baseline_length),
            "best_heldout": None if self._best_heldout is None else list(self._best_heldout),
            "max_kl": None if self._max_kl is None else list(self._max_kl),
            "streak": self._streak,
            "streak_start": self._streak_start,
            "findings": [asdict(finding) for finding in self._findings],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by `state_dict` (the config is the constructor's).

        With a smaller hacking_window than the saved run, only the newest observations are kept.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"Unknown hacking-monitor state format {state.get('format')!r} (this version reads "
                f"{_STATE_FORMAT}). Resume with the preftune version that wrote the checkpoint."
            )

        def pair(key: str) -> tuple[int, float] | None:
            value = state[key]
            return None if value is None else (int(value[0]), float(value[1]))

        self._reset()
        self._num_observations = int(state["num_observations"])
        self._first = None if state["first"] is None else Observation(**state["first"])
        self._recent.extend(Observation(**obs) for obs in state["recent"])
        self._baseline_length = pair("baseline_length")
        self._best_heldout = pair("best_heldout")
        self._max_kl = pair("max_kl")
        self._streak = int(state["streak"])
        self._streak_start = state["streak_start"]
        self._findings = [Finding(**finding) for finding in state["findings"]]


def observe_evaluation(
    monitor: HackingMonitor, step: int, eval_metrics: dict[str, float]
) -> dict[str, float]:
    """Feed a trainer's held-out evaluation (`eval/reward` = the proxy being optimised, `eval/gold_reward`
    or `eval/heldout_reward` = the held-out judge, else minus `eval/ensemble_std`, the ensemble judge's
    disagreement, `eval/length`, `eval/kl`) to the monitor; returns
    its `hacking/...` metrics for that step's metrics.jsonl line. Raises RewardHackingDetected when
    the config says to stop."""
    heldout = eval_metrics.get("eval/gold_reward", eval_metrics.get("eval/heldout_reward"))
    if heldout is None and "eval/ensemble_std" in eval_metrics:  # growing disagreement counts as a fall
        heldout = -eval_metrics["eval/ensemble_std"]
    observation = Observation(
        step=step,
        proxy=eval_metrics["eval/reward"],
        heldout=heldout,
        length=eval_metrics["eval/length"],
        kl=eval_metrics["eval/kl"],
    )
    monitor.observe(observation)
    return monitor.metrics()


def watch_evaluation(
    monitor: HackingMonitor, state: dict[str, Any], step: int, eval_metrics: dict[str, float]
) -> dict[str, float]:
    """`observe_evaluation`, then the monitor's state into a trainer's checkpointed `state["hacking"]`;
    returns the evaluation's metrics with the monitor's `hacking/...` ones."""
    hacking = observe_evaluation(monitor, step, eval_metrics)
    state["hacking"] = monitor.state_dict()
    return {**eval_metrics, **hacking}


def watch_start(
    monitor: HackingMonitor, state: dict[str, Any], evaluate: Callable[[], dict[str, float]] | None
) -> None:
    """Show the monitor the starting policy (step 0) before a new run's first step: `evaluate()` gives the
    held-out metrics. A resumed run already has its state (`state["hacking"]`), and without held-out
    prompts (`evaluate` None) there is nothing to watch."""
    if "hacking" in state or evaluate is None:
        return
    metrics = evaluate()
    watch_evaluation(monitor, state, 0, metrics)
    logger.info("Starting policy on the held-out prompts: %s", {k: round(v, 4) for k, v in metrics.items()})
