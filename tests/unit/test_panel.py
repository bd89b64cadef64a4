"""Tests of the simulated annotator panel: the choice model, and that each configured bias shows.

The statistical tests use a few thousand ratings with a fixed seed; their margins are
several standard errors wide (about 0.009 for a proportion over 3000 ratings).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from preftune.tasks import PanelConfig, choice_probability, flip_probability, get_task, rate_pairs
from preftune.tasks.kindness import NOUNS, POSITIVE
from preftune.tasks.panel import assign_groups
from preftune.tasks.synth import build_pairs

TASK = get_task("kindness")


@pytest.fixture(scope="module")
def corpus_pairs() -> tuple[list[str], list[tuple[str, str]]]:
    return build_pairs(TASK, 3000, np.random.default_rng(1))


def _equal_gold_pairs(n: int, seed: int, same_length: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Pairs of perfect responses (gold 1.0 both, the right noun, distinct positive adjectives):
    one adjective each (5 words each), or 1 vs 3 adjectives ("the x is b, c and d ." has 8 words)."""
    rng = np.random.default_rng(seed)
    prompts, pairs = [], []
    for prompt in TASK.sample_prompts(n, rng):
        noun = next(w for w in prompt.rstrip("?.\n").split() if w in NOUNS)
        a, b, c, d = (POSITIVE[i] for i in rng.permutation(len(POSITIVE))[:4])
        second = f"the {noun} is {b} ." if same_length else f"the {noun} is {b}, {c} and {d} ."
        pair = (f"the {noun} is {a} .", second)
        prompts.append(prompt)
        pairs.append(pair if rng.random() < 0.5 else pair[::-1])
    return prompts, pairs


def _gold_agreement(rows: list[dict]) -> float:
    """Share of ratings whose chosen response has the higher gold reward (ties left out)."""
    margins = [
        TASK.gold_reward(r["prompt"], r["chosen"]) - TASK.gold_reward(r["prompt"], r["rejected"])
        for r in rows
    ]
    return float(np.mean([m > 0 for m in margins if m != 0]))


# ---------------------------------------------------------------- choice model
def test_choice_probability_closed_form() -> None:
    """sigmoid((1 - 0) / 0.5 + 0) = sigmoid(2) = 0.880797; sigmoid(0 / T + 0.3) = 0.574443."""
    assert choice_probability(1.0, 0.0, 0.5, 0.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert choice_probability(0.4, 0.4, 0.3, 0.3) == pytest.approx(1 / (1 + math.exp(-0.3)))
    assert choice_probability(0.2, 0.7, 0.3, 0.0) + choice_probability(0.7, 0.2, 0.3, 0.0) == pytest.approx(
        1.0
    )
    assert choice_probability(1e6, 0.0, 0.01, 0.0) == 1.0 and choice_probability(-1e6, 0.0, 0.01, 0.0) == 0.0


def test_flip_probability_grows_with_order_and_is_clipped() -> None:
    """0.05 + 0.15 * 0/100 = 0.05; 0.05 + 0.15 * 50/100 = 0.125; 0.4 + 0.6 * 99/100 -> clipped to 0.5."""
    assert flip_probability(0, 100, 0.05, 0.15) == pytest.approx(0.05)
    assert flip_probability(50, 100, 0.05, 0.15) == pytest.approx(0.125)
    assert flip_probability(99, 100, 0.4, 0.6) == 0.5


def test_assign_groups_in_proportion() -> None:
    assert Counter(assign_groups(12, {"A": 0.5, "B": 0.5})) == {"A": 6, "B": 6}
    assert assign_groups(4, {"A": 3.0, "B": 1.0}) == ["A", "A", "A", "B"]


# ------------------------------------------------------------- biases show up
def test_length_bias_makes_longer_responses_win() -> None:
    prompts, pairs = _equal_gold_pairs(3000, seed=2, same_length=False)

    def longer_wins(config: PanelConfig) -> float:
        rows = rate_pairs(TASK, prompts, pairs, config)
        return float(np.mean([len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows]))

    # Equal gold: a 3-word difference is worth 0.05 * 3 / 0.3 = 0.5 logits -> P(longer) ~ 0.62 before flips.
    assert longer_wins(PanelConfig(length_bias=0.05)) > 0.56
    assert 0.46 < longer_wins(PanelConfig(length_bias=0.0)) < 0.54


def test_length_bias_on_corpus_pairs(corpus_pairs) -> None:
    prompts, pairs = corpus_pairs

    def longer_wins(config: PanelConfig) -> float:
        lengths = [
            (len(r["chosen"].split()), len(r["rejected"].split()))
            for r in rate_pairs(TASK, prompts, pairs, config)
        ]
        return float(np.mean([c > r for c, r in lengths if c != r]))

    assert longer_wins(PanelConfig(length_bias=0.2)) > longer_wins(PanelConfig(length_bias=0.0)) + 0.05


def test_position_bias_makes_the_first_shown_win() -> None:
    prompts, pairs = _equal_gold_pairs(3000, seed=3, same_length=True)  # equal utility for every group

    def first_wins(config: PanelConfig) -> float:
        return float(
            np.mean([r["shown_first"] == "chosen" for r in rate_pairs(TASK, prompts, pairs, config)])
        )

    assert first_wins(PanelConfig(position_bias=0.3)) > 0.53  # sigmoid(0.3) = 0.574 before flips
    assert 0.47 < first_wins(PanelConfig(position_bias=0.0)) < 0.53


def test_fatigue_lowers_agreement_late_in_sessions(corpus_pairs) -> None:
    prompts, pairs = corpus_pairs

    def early_minus_late(fatigue: float) -> float:
        rows = rate_pairs(TASK, prompts, pairs, PanelConfig(flip_rate=0.0, fatigue=fatigue))
        session_length = Counter(r["annotator"] for r in rows)
        progress = [r["order"] / session_length[r["annotator"]] for r in rows]
        early = [r for r, p in zip(rows, progress, strict=True) if p < 1 / 3]
        late = [r for r, p in zip(rows, progress, strict=True) if p >= 2 / 3]
        return _gold_agreement(early) - _gold_agreement(late)

    assert early_minus_late(1.0) > 0.15
    assert abs(early_minus_late(0.0)) < 0.05


def test_flip_noise_lowers_agreement(corpus_pairs) -> None:
    prompts, pairs = corpus_pairs
    clean = _gold_agreement(rate_pairs(TASK, prompts, pairs, PanelConfig(flip_rate=0.0, fatigue=0.0)))
    noisy = _gold_agreement(rate_pairs(TASK, prompts, pairs, PanelConfig(flip_rate=0.3, fatigue=0.0)))
    assert clean > 0.8
    assert noisy < clean - 0.15


def test_group_b_ignores_relevance() -> None:
    """Pairs differing only in the noun: gold prefers the right noun by 0.5. Group A sees that
    (sigmoid(0.5 / 0.3) = 0.84 before flips), group B weighs relevance 0 and is at chance."""
    rng = np.random.default_rng(4)
    prompts, pairs = [], []
    for prompt in TASK.sample_prompts(3000, rng):
        noun = next(w for w in prompt.rstrip("?.\n").split() if w in NOUNS)
        others = [n for n in NOUNS if n != noun]
        other = others[int(rng.integers(len(others)))]
        adjectives = ", ".join(POSITIVE[i] for i in rng.permutation(len(POSITIVE))[:2])
        prompts.append(prompt)
        pairs.append((f"the {noun} is {adjectives} .", f"the {other} is {adjectives} ."))
    rows = rate_pairs(TASK, prompts, pairs, PanelConfig())
    agreement = {g: _gold_agreement([r for r in rows if r["annotator_group"] == g]) for g in ("A", "B")}
    assert agreement["A"] > 0.72
    assert 0.4 < agreement["B"] < 0.6
    assert agreement["A"] > agreement["B"] + 0.2


# ------------------------------------------------------------------ rating rows
def test_rating_rows_carry_metadata(corpus_pairs) -> None:
    prompts, pairs = corpus_pairs
    prompts, pairs = prompts[:500], pairs[:500]
    rows = rate_pairs(TASK, prompts, pairs, PanelConfig(ratings_per_pair=3, overlap=0.2))
    assert len(rows) == 500 + 100 * 2
    for r in rows:
        assert r["annotator"] in {f"a{i:02d}" for i in range(12)}
        assert r["annotator_group"] in {"A", "B"}
        assert r["shown_first"] in {"chosen", "rejected"}
        assert {r["chosen"], r["rejected"]} == set(pairs[r["pair_id"]]) and r["prompt"] == prompts[
            r["pair_id"]
        ]
    by_annotator: dict[str, list[int]] = {}
    for r in rows:
        by_annotator.setdefault(r["annotator"], []).append(r["order"])
    for orders in by_annotator.values():  # each session is numbered 0..n-1
        assert sorted(orders) == list(range(len(orders)))
    raters = {}
    for r in rows:
        raters.setdefault(r["pair_id"], []).append(r["annotator"])
    repeated = [a for a in raters.values() if len(a) > 1]
    assert len(repeated) == 100 and all(len(a) == len(set(a)) == 3 for a in repeated)
    single = rate_pairs(TASK, prompts, pairs, PanelConfig(ratings_per_pair=3, overlap=0.0))
    assert len({r["pair_id"] for r in single}) == len(single) == 500


def test_rate_pairs_is_reproducible(corpus_pairs) -> None:
    prompts, pairs = corpus_pairs
    config = PanelConfig(panel_seed=7)
    assert rate_pairs(TASK, prompts[:300], pairs[:300], config) == rate_pairs(
        TASK, prompts[:300], pairs[:300], config
    )
    other = rate_pairs(TASK, prompts[:300], pairs[:300], PanelConfig(panel_seed=8))
    assert other != rate_pairs(TASK, prompts[:300], pairs[:300], config)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"flip_rate": 0.7}, "flip_rate"),
        ({"fatigue": -0.1}, "fatigue"),
        ({"ratings_per_pair": 13}, "ratings_per_pair"),
        ({"overlap": 1.5}, "overlap"),
        ({"group_shares": {"A": 1.0}}, "group_shares"),
        ({"num_annotators": 0}, "num_annotators"),
    ],
)
def test_panel_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PanelConfig(**kwargs)


def test_rate_pairs_input_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        rate_pairs(TASK, ["Describe the garden.\n"], [], PanelConfig())
    bad_groups = PanelConfig(groups={"A": {"sentiment": 1.0}}, group_shares={"A": 1.0})
    with pytest.raises(ValueError, match="components"):
        rate_pairs(TASK, [], [], bad_groups)
