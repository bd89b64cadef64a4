"""Pair construction, margin and confidence filters, prompt rotation and the trend line of `preftune loop`."""

import math

import pytest
import torch

from preftune.judges import GroupRanking, PairVerdicts, rank_groups
from preftune.pipelines.loop import build_pairs, pair_confidence, round_prompt_indices, trend

PROMPTS = ["p0", "p1"]
RESPONSES = ["a", "b", "c", "d", "e", "f"]  # k = 3: p0 -> a b c, p1 -> d e f


def _scores(rows):
    return GroupRanking(torch.tensor(rows, dtype=torch.float64))


def test_best_worst_pairs_take_the_first_highest_and_lowest():
    rows, counts = build_pairs(
        PROMPTS, RESPONSES, _scores([[0.2, 0.9, 0.9], [1.0, -1.0, 0.0]]), "best_worst", 0.0, 0.0
    )
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b", "a"), ("d", "e")]
    assert [(r["chosen_score"], r["rejected_score"]) for r in rows] == [(0.9, 0.2), (1.0, -1.0)]
    assert [(r["chosen_sample"], r["rejected_sample"], r["prompt_index"]) for r in rows] == [
        (1, 0, 0),
        (0, 1, 1),
    ]
    assert counts == {
        "prompts": 2,
        "empty_samples": 0,
        "candidates": 2,
        "ties": 0,
        "below_margin": 0,
        "below_confidence": 0,
        "pairs": 2,
    }


def test_all_tied_group_is_counted_not_dropped_silently():
    rows, counts = build_pairs(
        PROMPTS, RESPONSES, _scores([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]), "best_worst", 0.0, 0.0
    )
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("d", "e")]
    assert counts["ties"] == 1 and counts["pairs"] == 1


def test_all_pairs_above_the_margin():
    ranking = _scores([[0.0, 0.5, 1.0], [0.0, 0.0, 0.3]])
    rows, counts = build_pairs(PROMPTS, RESPONSES, ranking, "all", 0.4, 0.0)
    # p0: (a,b) diff 0.5 kept as b>a, (a,c) 1.0 kept, (b,c) 0.5 kept; p1: (d,e) tie, (d,f) 0.3 and (e,f) 0.3 below
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [("b", "a"), ("c", "a"), ("c", "b")]
    assert counts == {
        "prompts": 2,
        "empty_samples": 0,
        "candidates": 6,
        "ties": 1,
        "below_margin": 2,
        "below_confidence": 0,
        "pairs": 3,
    }


def test_identical_responses_never_form_a_pair():
    rows, counts = build_pairs(["p"], ["x", "x"], _scores([[1.0, 0.0]]), "all", 0.0, 0.0)
    assert rows == [] and counts["ties"] == 1


def test_pointwise_confidence_is_the_bradley_terry_probability():
    ranking = _scores([[2.0, 0.0, 1.0]])
    assert pair_confidence(ranking, 0, 0, 1) == pytest.approx(2 * torch.sigmoid(torch.tensor(2.0)).item() - 1)
    rows, counts = build_pairs(["p"], ["a", "b", "c"], ranking, "all", 0.0, 0.5)
    # differences 2 (conf 0.76), 1 (0.46), 1 (0.46): only the first passes 0.5
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b")]
    assert counts["below_confidence"] == 2


class _TableJudge:
    """P(first better) from a fixed table; NaN for pairs it cannot judge."""

    def __init__(self, table):
        self.table = table

    def compare(self, prompts, first, second):
        return PairVerdicts(
            torch.tensor(
                [self.table[(f, s)] for f, s in zip(first, second, strict=True)], dtype=torch.float64
            )
        )


def test_pairwise_confidence_comes_from_the_direct_verdict():
    ranking = rank_groups(
        _TableJudge({("a", "b"): 0.9, ("a", "c"): 0.6, ("b", "c"): float("nan")}), ["p"], ["a", "b", "c"], 3
    )
    # Borda: a = (0.9 + 0.6) / 2, b = 0.1 (its NaN comparison is left out), c = 0.4
    assert ranking.scores[0].tolist() == pytest.approx([0.75, 0.1, 0.4])
    assert pair_confidence(ranking, 0, 0, 1) == pytest.approx(0.8)
    assert math.isnan(pair_confidence(ranking, 0, 2, 1))
    rows, counts = build_pairs(["p"], ["a", "b", "c"], ranking, "all", 0.0, 0.5)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b")]  # (a,c) 0.2 < 0.5; (c,b) not judged
    assert counts["below_confidence"] == 2


def test_a_pair_the_judge_decided_against_is_never_kept():
    # P(a>b) = 0.1, P(a>c) = 1, P(b>c) = 0: Borda a = 0.55, b = 0.45, c = 0.5, so a is "best" and b "worst",
    # though the judge preferred b to a at 0.9.
    ranking = rank_groups(
        _TableJudge({("a", "b"): 0.1, ("a", "c"): 1.0, ("b", "c"): 0.0}), ["p"], ["a", "b", "c"], 3
    )
    assert pair_confidence(ranking, 0, 0, 1) == pytest.approx(-0.8)
    rows, counts = build_pairs(["p"], ["a", "b", "c"], ranking, "best_worst", 0.0, 0.0)
    assert rows == [] and counts["below_confidence"] == 1


def test_empty_samples_are_left_out_before_pairing_and_counted():
    ranking = _scores([[0.9, 0.5, -1.0], [1.0, 0.0, 0.2]])
    responses = ["a", "b", "  ", "d", "", [{"role": "assistant", "content": " "}]]
    rows, counts = build_pairs(PROMPTS, responses, ranking, "best_worst", 0.0, 0.0)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b")]  # not "a" over the empty worst
    assert counts["empty_samples"] == 3 and counts["ties"] == 1  # p1 has one non-empty sample left
    rows, counts = build_pairs(PROMPTS, responses, ranking, "all", 0.0, 0.0)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b")] and counts["candidates"] == 1


def test_round_prompts_are_fresh_until_the_pool_is_used():
    rounds = [round_prompt_indices(10, 4, r, seed=0) for r in (1, 2, 3)]
    assert len(set(rounds[0]) | set(rounds[1])) == 8  # disjoint
    assert set(rounds[0]) | set(rounds[1]) | set(rounds[2]) == set(range(10))  # round 3 wraps around
    assert round_prompt_indices(10, 4, 1, seed=0) == rounds[0]  # reproducible
    assert round_prompt_indices(10, 0, 2, seed=0) == list(range(10))


def test_trend_names_improvement_and_drift():
    def rounds(values):
        return [{"gold_reward": v, "judge_reward": 0.0} for v in values]

    assert trend(rounds([0.1, 0.3, 0.5])).startswith("improving")
    assert trend(rounds([0.1, 0.5, 0.4])).startswith("drifting")
    assert trend(rounds([0.1, 0.1, 0.4])).startswith("mixed")
    assert "judge_reward" in trend([{"gold_reward": None, "judge_reward": 0.0}, {"judge_reward": 1.0}])
