"""A simulated panel of human annotators who compare two responses to one prompt.

Each annotator belongs to a rater group, which weighs the gold-reward components its own
way, and sees pairs one after the other in a session. For the item at position `order`
of a session of `session_length` items, with the response `first` shown before `second`:

    u(y)            = sum_c group_weight[c] * gold_component_c(x, y) + length_bias * num_words(y)
    P(first wins)   = sigmoid((u(first) - u(second)) / temperature + position_bias)   (Bradley-Terry)
    P(flip)         = min(0.5, flip_rate + fatigue * order / session_length)

and the verdict is flipped with probability P(flip). The defaults are moderate,
realistic biases: raters mostly follow the gold reward (temperature 0.3 on a reward scale
of about 2), make 5% careless errors growing to 20% by the end of a session, like each
extra word by 0.05 (one adjective ~ 2 words is worth 0.1, whereas gold charges 0.25 per
adjective beyond 3), favour the first response by 0.3 logits, and half of them (group B)
ignore relevance and care more about sentiment. These are the structures the feedback
audits should find, and the length bias is the blind spot a proxy reward model learns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from preftune.tasks.kindness import GoldWeights
from preftune.tasks.registry import Task


def _default_groups() -> dict[str, dict[str, float]]:
    gold = asdict(GoldWeights())
    return {"A": gold, "B": {**gold, "sentiment": 1.5, "relevance": 0.0}}


def _default_group_shares() -> dict[str, float]:
    return {"A": 0.5, "B": 0.5}


@dataclass
class PanelConfig:
    """How the simulated annotators rate pairs (see the module docstring for the model)."""

    num_annotators: int = 12
    """Number of annotators; their ids are "a00", "a01", ..."""
    temperature: float = 0.3
    """Bradley-Terry temperature on utility differences; smaller means more decisive raters."""
    flip_rate: float = 0.05
    """Probability of a careless, flipped verdict at the start of a session, in [0, 0.5]."""
    length_bias: float = 0.05
    """Utility added per response word; > 0 means raters like longer answers, 0 means no bias."""
    position_bias: float = 0.3
    """Logit bonus of the response shown first; 0 means no position bias."""
    fatigue: float = 0.15
    """Extra flip probability reached at the end of a session (grows linearly with the item's order)."""
    groups: dict[str, dict[str, float]] = field(default_factory=_default_groups)
    """Rater groups: name -> weight of every gold component in that group's utility.
    Default: "A" weighs them as the gold reward does; "B" ignores relevance and weighs sentiment 1.5."""
    group_shares: dict[str, float] = field(default_factory=_default_group_shares)
    """Share of annotators in each group (same keys as groups); annotators are assigned in blocks."""
    ratings_per_pair: int = 3
    """Number of distinct annotators who rate each overlap pair (the other pairs are rated once)."""
    overlap: float = 0.2
    """Share of pairs rated by ratings_per_pair annotators, so inter-rater agreement can be measured."""
    panel_seed: int = 0
    """Seed of the rating noise when rate_pairs gets no generator."""

    def __post_init__(self) -> None:
        if self.num_annotators < 1:
            raise ValueError(f"num_annotators must be >= 1, got {self.num_annotators}.")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}. Typical range: 0.1 to 1.")
        if not 0.0 <= self.flip_rate <= 0.5:
            raise ValueError(f"flip_rate must be in [0, 0.5], got {self.flip_rate}. Use 0 for no flips.")
        if not (math.isfinite(self.length_bias) and math.isfinite(self.position_bias)):
            raise ValueError(
                f"length_bias and position_bias must be finite numbers, got {self.length_bias} and "
                f"{self.position_bias}. Use 0 for no bias."
            )
        if not (math.isfinite(self.fatigue) and self.fatigue >= 0):
            raise ValueError(f"fatigue must be >= 0, got {self.fatigue}. Use 0 for no fatigue.")
        self._validate_groups()
        if not 1 <= self.ratings_per_pair <= self.num_annotators:
            raise ValueError(
                f"ratings_per_pair must be in [1, num_annotators={self.num_annotators}], "
                f"got {self.ratings_per_pair}. Each rating of a pair comes from a different annotator."
            )
        if not 0.0 <= self.overlap <= 1.0:
            raise ValueError(f"overlap must be in [0, 1], got {self.overlap}.")

    def _validate_groups(self) -> None:
        if not self.groups:
            raise ValueError("groups must name at least one rater group, got none. Example: {'A': {...}}.")
        if set(self.group_shares) != set(self.groups):
            raise ValueError(
                f"group_shares must have the same keys as groups: got {sorted(self.group_shares)} "
                f"for groups {sorted(self.groups)}."
            )
        if any(not (math.isfinite(s) and s >= 0) for s in self.group_shares.values()):
            raise ValueError(f"group_shares must be finite and >= 0, got {self.group_shares}.")
        if sum(self.group_shares.values()) <= 0:
            raise ValueError(f"group_shares must not all be 0, got {self.group_shares}.")
        for group, weights in self.groups.items():
            if any(not math.isfinite(w) for w in weights.values()):
                raise ValueError(f"groups[{group!r}] weights must be finite numbers, got {weights}.")


def choice_probability(
    utility_first: float, utility_second: float, temperature: float, position_bias: float
) -> float:
    """P(the response shown first wins), before flips: sigmoid((u1 - u2) / temperature + position_bias)."""
    logit = (utility_first - utility_second) / temperature + position_bias
    if logit >= 0:  # stable sigmoid
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def flip_probability(order: int, session_length: int, flip_rate: float, fatigue: float) -> float:
    """P(a verdict is flipped) for the item at 0-based `order` of a session.

    flip_rate + fatigue * order / session_length, clipped to [0, 0.5]: a tired rater ends up
    at chance, never adversarial.
    """
    return min(0.5, max(0.0, flip_rate + fatigue * order / max(session_length, 1)))


def annotator_utility(
    components: dict[str, float], weights: dict[str, float], num_words: int, length_bias: float
) -> float:
    """A rater group's utility of a response: its weighted gold components plus length_bias per word."""
    return sum(weights[name] * value for name, value in components.items()) + length_bias * num_words


def assign_groups(num_annotators: int, shares: dict[str, float]) -> list[str]:
    """The group of each annotator: annotator i joins the group whose cumulative share covers
    (i + 0.5) / num_annotators, so groups are contiguous blocks in the given proportions."""
    total = sum(shares.values())
    names, cumulative, running = list(shares), [], 0.0
    for name in names:
        running += shares[name] / total
        cumulative.append(running)
    groups = []
    for i in range(num_annotators):
        position = (i + 0.5) / num_annotators
        groups.append(next((n for n, c in zip(names, cumulative, strict=True) if position < c), names[-1]))
    return groups


def plan_sessions(
    num_pairs: int, config: PanelConfig, rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Who rates which pair, and when: rows (pair_index, annotator_index, order, session_length).

    A share `overlap` of the pairs goes to `ratings_per_pair` distinct annotators, the rest to
    one; each annotator then sees their items in a random order. Rows are sorted by pair.
    """
    num_overlap = round(config.overlap * num_pairs)
    overlap_pairs = set(rng.permutation(num_pairs)[:num_overlap].tolist())
    assignments: list[tuple[int, int]] = []  # (pair_index, annotator_index)
    for pair in range(num_pairs):
        r = config.ratings_per_pair if pair in overlap_pairs else 1
        for annotator in rng.choice(config.num_annotators, size=r, replace=False):
            assignments.append((pair, int(annotator)))
    sessions: dict[int, list[int]] = {}  # annotator -> indices into assignments
    for index, (_, annotator) in enumerate(assignments):
        sessions.setdefault(annotator, []).append(index)
    order_of = [0] * len(assignments)
    length_of = [0] * len(assignments)
    for annotator in sorted(sessions):
        items = sessions[annotator]
        for order, item in enumerate(rng.permutation(len(items))):
            order_of[items[item]] = order
            length_of[items[item]] = len(items)
    return [(p, a, order_of[i], length_of[i]) for i, (p, a) in enumerate(assignments)]


def rate_pairs(
    task: Task,
    prompts: Sequence[str],
    response_pairs: Sequence[tuple[str, str]],
    config: PanelConfig,
    rng: np.random.Generator | None = None,
) -> list[dict[str, Any]]:
    """Simulate the panel rating each (prompt, (response_a, response_b)).

    Returns one row per rating, sorted by pair: {"prompt", "chosen", "rejected", "annotator",
    "annotator_group", "order", "shown_first", "pair_id"}; "pair_id" is the pair's index, the
    same on every rating of one pair. `rng` defaults to one seeded with config.panel_seed.
    """
    if len(prompts) != len(response_pairs):
        raise ValueError(
            f"prompts and response_pairs must have the same length, got {len(prompts)} and "
            f"{len(response_pairs)}. Pass one prompt per pair."
        )
    for group, weights in config.groups.items():
        if set(weights) != set(task.components):
            raise ValueError(
                f"groups[{group!r}] must weigh exactly the components of task {task.name!r}: "
                f"{list(task.components)}, got {sorted(weights)}."
            )
    rng = np.random.default_rng(config.panel_seed) if rng is None else rng
    group_of = assign_groups(config.num_annotators, config.group_shares)
    width = max(2, len(str(config.num_annotators - 1)))
    rows = []
    for pair, annotator, order, session_length in plan_sessions(len(prompts), config, rng):
        prompt, (response_a, response_b) = prompts[pair], response_pairs[pair]
        weights = config.groups[group_of[annotator]]
        utility_a, utility_b = (
            annotator_utility(
                task.gold_components(prompt, response), weights, len(response.split()), config.length_bias
            )
            for response in (response_a, response_b)
        )
        a_first = bool(rng.random() < 0.5)
        u_first, u_second = (utility_a, utility_b) if a_first else (utility_b, utility_a)
        first_wins = rng.random() < choice_probability(
            u_first, u_second, config.temperature, config.position_bias
        )
        if rng.random() < flip_probability(order, session_length, config.flip_rate, config.fatigue):
            first_wins = not first_wins
        a_wins = first_wins == a_first
        rows.append(
            {
                "prompt": prompt,
                "chosen": response_a if a_wins else response_b,
                "rejected": response_b if a_wins else response_a,
                "annotator": f"a{annotator:0{width}d}",
                "annotator_group": group_of[annotator],
                "order": order,
                "shown_first": "chosen" if first_wins else "rejected",
                "pair_id": pair,
            }
        )
    return rows
