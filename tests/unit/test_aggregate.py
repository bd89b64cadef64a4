"""Aggregating repeated ratings into one pair per item, and the label-noise estimate (Dawid-Skene)."""

from __future__ import annotations

import json

import pytest

from preftune.data import load_rows, parse_pairs
from preftune.feedback.aggregate import (
    aggregate_ratings,
    estimate_label_noise,
    resolve_label_smoothing,
    write_aggregated,
)
from preftune.feedback.dawid_skene import dawid_skene


def rating(prompt, chosen, rejected, annotator=None, pair_id=None):
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if annotator is not None:
        row["annotator"] = annotator
    if pair_id is not None:
        row["pair_id"] = pair_id
    return row


# Item 1 (pair_id 7): " x" twice, " y" once. Item 2 (no pair_id, keyed by prompt + responses, either
# order): " v" once, " u" once, a tie. Item 3: a single rating for " m".
RATINGS = [
    rating("p", " x", " y", "a1", 7),
    rating("p", " y", " x", "a2", 7),
    rating("q", " u", " v", "a1"),
    rating("p", " x", " y", "a3", 7),
    rating("q", " v", " u", "a2"),
    rating("r", " m", " n", "a3"),
]


def test_majority_by_hand():
    """Item 1: 2 of 3 for " x" -> p = 2/3, weight 2p - 1 = 1/3. Item 2: 1-1, dropped. Item 3: p = 1, weight 1."""
    rows, counts = aggregate_ratings(RATINGS, "majority")
    assert counts == {"ratings": 6, "items": 3, "multiply_rated": 2, "ties_dropped": 1, "rows": 2}
    first, third = rows
    assert (first["prompt"], first["chosen"], first["rejected"], first["pair_id"]) == ("p", " x", " y", 7)
    assert first["chosen_probability"] == pytest.approx(2 / 3)
    assert first["weight"] == pytest.approx(1 / 3)
    assert first["num_ratings"] == 3
    assert third == {"prompt": "r", "chosen": " m", "rejected": " n", "weight": 1.0,
                     "chosen_probability": 1.0, "num_ratings": 1}  # fmt: skip


def test_majority_prefers_the_larger_text_when_it_wins_and_keeps_conversations():
    """The winner is whichever response more raters chose, not the canonical "a" (the smaller text)."""
    prompt = [{"role": "user", "content": "hi"}]
    big, small = [{"role": "assistant", "content": "zzz"}], [{"role": "assistant", "content": "aaa"}]
    rows, counts = aggregate_ratings(
        [
            rating(prompt, big, small, "a1"),
            rating(prompt, big, small, "a2"),
            rating(prompt, small, big, "a3"),
        ],
        "majority",
    )
    assert counts["rows"] == 1
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == (prompt, big, small)
    assert rows[0]["chosen_probability"] == pytest.approx(2 / 3)


def test_dawid_skene_uses_the_posterior_of_the_colleagues_em():
    rows, counts = aggregate_ratings(RATINGS, "dawid_skene")
    # by hand: items p (pair_id 7), q, r; "a" = the smaller text (" x", " u", " m"); vote 1 = chose "a"
    expected = dawid_skene([0, 0, 1, 0, 1, 2], ["a1", "a2", "a1", "a3", "a2", "a3"], [1, 0, 1, 1, 0, 1])
    assert counts["items"] == 3 and counts["ties_dropped"] == int((expected.posterior == 0.5).sum())
    by_prompt = {row["prompt"]: row for row in rows}
    for i, (prompt, a, b) in enumerate([("p", " x", " y"), ("q", " u", " v"), ("r", " m", " n")]):
        q = expected.posterior[expected.items.index(i)]
        if q == 0.5:
            assert prompt not in by_prompt
            continue
        row = by_prompt[prompt]
        assert (row["chosen"], row["rejected"]) == ((a, b) if q > 0.5 else (b, a))
        assert row["chosen_probability"] == pytest.approx(max(q, 1 - q))
        assert row["weight"] == pytest.approx(2 * max(q, 1 - q) - 1)
        assert 0.5 <= row["chosen_probability"] <= 1.0


def test_dawid_skene_trusts_the_reliable_rater():
    """a1 and a2 agree on 6 overlap items; a3 disagrees with them on all 6. On a seventh item rated by
    a3 alone and an eighth rated by a1 alone, majority says p = 1 for both; Dawid-Skene believes a1 and
    doubts a3 (its verdict is read reversed when its flip rate is above 0.5)."""
    rows = []
    for i in range(6):  # the winner is response "a" (the smaller text) in half of the items: a prior near 0.5
        good, bad = (" good", " bad") if i % 2 else (" fine", " worse")
        rows += [rating(f"p{i}", good, bad, "a1"), rating(f"p{i}", good, bad, "a2"),
                 rating(f"p{i}", bad, good, "a3")]  # fmt: skip
    rows += [rating("solo3", " one", " two", "a3"), rating("solo1", " one", " two", "a1")]
    aggregated, _ = aggregate_ratings(rows, "dawid_skene")
    by_prompt = {row["prompt"]: row for row in aggregated}
    assert by_prompt["solo1"]["chosen"] == " one" and by_prompt["solo1"]["chosen_probability"] > 0.8
    assert by_prompt["solo3"]["chosen"] == " two" and by_prompt["solo3"]["chosen_probability"] > 0.6
    assert [by_prompt[f"p{i}"]["chosen"] for i in range(6)] == [" fine", " good"] * 3
    majority = {row["prompt"]: row for row in aggregate_ratings(rows, "majority")[0]}
    assert majority["solo3"]["chosen"] == " one" and majority["solo3"]["chosen_probability"] == 1.0
    estimate = estimate_label_noise(rows)
    assert estimate.per_annotator["a3"] > 0.5 > estimate.per_annotator["a1"]
    counts = {"a1": 7, "a2": 6, "a3": 7}
    mean = sum(n * estimate.per_annotator[a] for a, n in counts.items()) / 20
    assert estimate.flip_rate == pytest.approx(mean)
    assert (estimate.num_ratings, estimate.num_items, estimate.num_multiply_rated) == (20, 8, 6)


def test_dawid_skene_and_label_noise_need_annotators_and_overlap():
    with pytest.raises(ValueError, match="'annotator' id on every rating; row 2 has none"):
        aggregate_ratings([rating("p", " x", " y", "a1", 1), rating("p", " y", " x", None, 1)], "dawid_skene")
    with pytest.raises(ValueError, match="items rated more than once"):
        estimate_label_noise([rating("p", " x", " y", "a1"), rating("q", " x", " y", "a2")])
    with pytest.raises(ValueError, match="Unknown aggregation method 'mean'"):
        aggregate_ratings(RATINGS, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        aggregate_ratings([], "majority")


def test_written_file_is_a_training_set_with_soft_labels(tmp_path):
    rows, _ = aggregate_ratings(RATINGS, "majority")
    path = write_aggregated(tmp_path / "sub" / "agg.jsonl", rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    pairs = parse_pairs(load_rows(str(path))).examples
    assert [p.meta.get("chosen_probability") for p in pairs] == [pytest.approx(2 / 3), 1.0]
    assert [p.weight for p in pairs] == [pytest.approx(1 / 3), 1.0]


def test_label_noise_auto_reads_the_file_and_records_the_estimate(tmp_path):
    path = write_aggregated(tmp_path / "ratings.jsonl", RATINGS)
    smoothing, report = resolve_label_smoothing("auto", 0.0, str(path), "train")
    assert report is not None and report["label_noise"] == "auto"
    assert smoothing == report["label_smoothing"] == report["flip_rate"]
    assert report["flip_rate"] == pytest.approx(estimate_label_noise(RATINGS).flip_rate)
    aggregated = write_aggregated(tmp_path / "agg.jsonl", aggregate_ratings(RATINGS, "majority")[0])
    with pytest.raises(
        ValueError, match="label_noise 'auto' on .*agg.jsonl: Dawid-Skene needs an 'annotator'"
    ) as error:
        resolve_label_smoothing("auto", 0.0, str(aggregated), "train")
    assert "set --label_noise to a number (e.g. 0.1)" in str(error.value)
    assert "aggregated files (aggregate_ratings output) carry no annotator column" in str(error.value)


@pytest.mark.parametrize("solo", [(" one", " two"), (" two", " one")])
def test_dawid_skene_single_rating_does_not_depend_on_which_text_sorts_first(solo):
    """Response "a" (the smaller text) wins on all 8 overlap items; a single rating by a1 of a ninth item gets
    p = 1 - f(a1) whether a1 chose the smaller or the larger text. With the prior fitted (about 0.9)
    choosing the larger text gave a lower p, and a coin flip could even go to the other response."""
    rows = []
    for i in range(8):
        rows += [rating(f"p{i}", " aa", " zz", "a1"), rating(f"p{i}", " aa", " zz", "a2")]
    rows += [rating(f"p{i}", " zz", " aa", "a2") for i in range(8, 10)] + [rating("p8", " aa", " zz", "a1")]
    rows.append(rating("solo", solo[0], solo[1], "a1"))
    by_prompt = {row["prompt"]: row for row in aggregate_ratings(rows, "dawid_skene")[0]}
    flip = estimate_label_noise(rows).per_annotator["a1"]
    assert by_prompt["solo"]["chosen"] == solo[0]
    assert by_prompt["solo"]["chosen_probability"] == pytest.approx(1 - flip)
