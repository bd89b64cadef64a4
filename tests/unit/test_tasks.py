"""Tests of the synthetic "kindness" task (gold reward, corpus, critique/revise) and of write_task."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preftune.tasks import TASKS, PanelConfig, SynthConfig, get_task, parse_response, write_task
from preftune.tasks.kindness import NEGATIVE, NOUNS, POSITIVE, PROMPT_POOLS, VALENCE, KindnessTask

TASK = get_task("kindness")
GARDEN = "Describe the garden.\n"
NO_FORMAT = {"sentiment": 0.0, "relevance": 0.0, "length": 0.0, "repetition": 0.0, "format": -1.0}


def _corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    prompts = TASK.sample_prompts(n, rng)
    return prompts, [TASK.sample_response(p, rng) for p in prompts]


# ------------------------------------------------------------------ gold reward
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # sentiment 1, relevance 0, length 0 (k=1), repetition 0 -> 1.0
        ("the garden is kind .", 1.0),
        # sentiment (1 - 1) / 2 = 0 -> 0.0
        ("the garden is warm and dull .", 0.0),
        # sentiment (1 + 0 + 1) / 3 = 2/3 -> 0.6667
        ("the garden is bright, old and calm .", 2 / 3),
        # sentiment 1, length -0.25 * (5 - 3) = -0.5 -> 0.5
        ("the garden is kind, warm, calm, sweet and lovely .", 0.5),
        # sentiment (1 + 1 + 0) / 3, repetition -0.25 * (3 - 2) -> 2/3 - 0.25
        ("the garden is kind, kind and old .", 2 / 3 - 0.25),
        # sentiment -1, length -0.25 (k=4) -> -1.25
        ("the garden is rude, nasty, cold and grim .", -1.25),
        # wrong noun: sentiment 1 + 0.5 * relevance (-1) -> 0.5
        ("the river is kind .", 0.5),
        # lenient spacing/case/separators: same as "the garden is warm and kind ." -> 1.0
        ("  The Garden is warm,and kind.\n", 1.0),
    ],
)
def test_gold_reward_closed_form(response: str, expected: float) -> None:
    """Gold = 1.0 * sentiment + 0.5 * relevance + length + repetition + format (arithmetic per case)."""
    assert TASK.gold_reward(GARDEN, response) == pytest.approx(expected)


def test_gold_components_of_a_long_repetitive_reply() -> None:
    """k=6, adjectives kind x2, dull, old, warm, green: sentiment (1+1-1+0+1+0)/6 = 1/3,
    length -0.25 * 3 = -0.75, repetition -0.25 * (6 - 5) = -0.25, right noun; gold 1/3 - 1."""
    response = "the garden is kind, dull, kind, old, warm and green ."
    components = TASK.gold_components(GARDEN, response)
    assert components == pytest.approx(
        {"sentiment": 1 / 3, "relevance": 0.0, "length": -0.75, "repetition": -0.25, "format": 0.0}
    )
    assert list(components) == list(TASK.components)
    assert TASK.gold_reward(GARDEN, response) == pytest.approx(1 / 3 - 1.0)


@pytest.mark.parametrize(
    "response",
    [
        "",
        "   \n",
        "</s>",
        "the garden is .",
        "the garden is kind",
        "the garden is kind . the garden is kind .",
        "the garden is purple .",
        "the garden kind .",
        "the garden is , kind .",
        "the garden is kind and .",
        "the garden is kind and and warm .",
        "the , is kind .",
        "the garden is kind 3 .",
        "☃ the garden is kind .",
        "\x00\xff garbage ##",
    ],
)
def test_garbage_gets_format_penalty(response: str) -> None:
    assert parse_response(response) is None
    assert TASK.gold_components(GARDEN, response) == NO_FORMAT
    assert TASK.gold_reward(GARDEN, response) == -1.0


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_gold_reward_never_raises_and_is_bounded(response: str) -> None:
    reward = TASK.gold_reward(GARDEN, response)
    assert math.isfinite(reward)
    assert reward <= 1.0
    TASK.critique(response)
    TASK.revise(response)


def test_wrong_noun_is_penalised_by_half() -> None:
    for adjectives in ("kind", "warm and dull", "old, green and calm"):
        right = TASK.gold_reward(GARDEN, f"the garden is {adjectives} .")
        wrong = TASK.gold_reward(GARDEN, f"the river is {adjectives} .")
        assert right - wrong == pytest.approx(0.5)
    # A prompt that names no known noun cannot be answered off-topic.
    assert TASK.gold_reward("Say hello.\n", "the river is kind .") == 1.0


def test_more_than_three_adjectives_are_penalised() -> None:
    """All positive and distinct: 1.0 up to k=3, then 1 - 0.25 * (k - 3)."""
    rewards = [TASK.gold_reward(GARDEN, f"the garden is {', '.join(POSITIVE[:k])} .") for k in range(1, 7)]
    assert rewards == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_gold_weights_are_applied_and_validated() -> None:
    from preftune.tasks import GoldWeights

    no_relevance = KindnessTask(weights=GoldWeights(relevance=0.0))
    assert no_relevance.gold_reward(GARDEN, "the river is kind .") == 1.0
    with pytest.raises(ValueError, match="relevance"):
        GoldWeights(relevance=-1.0)


# --------------------------------------------------------------------- prompts
def test_train_and_eval_prompts_are_disjoint_and_cover_every_noun() -> None:
    train, held_out = set(PROMPT_POOLS["train"]), set(PROMPT_POOLS["eval"])
    assert (len(train), len(held_out)) == (768, 192)
    assert not train & held_out
    for noun in NOUNS:  # held out are combinations, not nouns: every noun is trained on
        assert any(f" {noun}" in p for p in train) and any(f" {noun}" in p for p in held_out)
    assert all(p.endswith("\n") for p in train | held_out)


def test_sample_prompts_is_without_replacement_until_the_pool_is_exhausted() -> None:
    rng = np.random.default_rng(0)
    assert len(set(TASK.sample_prompts(192, rng, split="eval"))) == 192
    assert set(TASK.sample_prompts(300, rng, split="eval")) == set(PROMPT_POOLS["eval"])
    with pytest.raises(ValueError, match="split"):
        TASK.sample_prompts(3, rng, split="test")  # type: ignore[arg-type]


def test_is_task_prompt_only_for_describe_prompts() -> None:
    assert all(TASK.is_task_prompt(p) for pool in PROMPT_POOLS.values() for p in pool)
    assert TASK.is_task_prompt("Describe the garden.")  # trailing newline optional
    reply = "the garden is dull ."
    assert not TASK.is_task_prompt(TASK.critique_prompt(reply))
    assert not TASK.is_task_prompt(TASK.revise_prompt(reply))
    assert not TASK.is_task_prompt("Describe the spaceship.\n")


def test_get_task_and_unknown_name() -> None:
    assert get_task("kindness") is TASKS["kindness"]
    with pytest.raises(ValueError, match="kindness"):
        get_task("rudeness")


# ---------------------------------------------------------------------- corpus
def test_corpus_is_of_mixed_quality_with_room_to_improve() -> None:
    prompts, responses = _corpus(4000)
    gold = np.array([TASK.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)])
    assert 0.0 <= gold.mean() <= 0.2
    assert gold.std() > 0.45
    assert gold.max() == 1.0 and np.quantile(gold, 0.9) == 1.0  # the best responses are perfect
    assert np.quantile(gold, 0.1) < -0.5
    parsed = [parse_response(r) for r in responses]
    assert all(p is not None for p in parsed)
    lengths = [len(p.adjectives) for p in parsed if p is not None]
    assert set(lengths) == {1, 2, 3, 4, 5}
    off_topic = np.mean(
        [TASK.gold_components(p, r)["relevance"] < 0 for p, r in zip(prompts, responses, strict=True)]
    )
    assert 0.07 < off_topic < 0.13
    repeats = np.mean(
        [TASK.gold_components(p, r)["repetition"] < 0 for p, r in zip(prompts, responses, strict=True)]
    )
    assert repeats > 0.05


def test_quality_controls_sentiment() -> None:
    rng = np.random.default_rng(0)
    best = [TASK.gold_components(GARDEN, TASK.sample_response(GARDEN, rng, quality=1.0)) for _ in range(200)]
    worst = [TASK.gold_components(GARDEN, TASK.sample_response(GARDEN, rng, quality=0.0)) for _ in range(200)]
    assert all(c["sentiment"] == 1.0 for c in best)
    assert all(c["sentiment"] <= 0.0 for c in worst)
    with pytest.raises(ValueError, match="quality"):
        TASK.sample_response(GARDEN, rng, quality=1.5)


# ------------------------------------------------------------- critique/revise
def test_critique_names_exactly_the_negative_words() -> None:
    assert TASK.critique("the garden is dull and warm .") == "the word dull is unkind ."
    assert TASK.critique("the garden is cold, dull and cold .") == "the words cold and dull are unkind ."
    assert TASK.critique("the garden is kind and old .") == "no unkind words ."
    _, responses = _corpus(1000)
    for response in responses:
        negatives = {w for w in response.replace(",", " ").split() if VALENCE.get(w) == -1}
        named = {w for w in TASK.critique(response).replace(",", " ").split() if w in VALENCE}
        assert named == negatives, response


def test_revise_removes_negative_words_and_never_lowers_gold() -> None:
    assert TASK.revise("the garden is dull and warm .") == "the garden is bright and warm ."
    assert TASK.revise("the garden is dull and bright .") == "the garden is kind and bright ."  # no repeat
    every_positive = f"the garden is {', '.join(POSITIVE)} and dull ."
    assert TASK.revise(every_positive) == f"the garden is {', '.join(POSITIVE)} and big ."
    prompts, responses = _corpus(1000, seed=1)
    cases = list(zip(prompts, responses, strict=True)) + [
        (GARDEN, every_positive),
        (GARDEN, f"the garden is {', '.join(NEGATIVE * 3)} ."),
        (GARDEN, "Dull garbage, cold"),
    ]
    for prompt, response in cases:
        revised = TASK.revise(response)
        assert not [w for w in revised.replace(",", " ").split() if VALENCE.get(w.lower()) == -1], revised
        before, after = TASK.gold_reward(prompt, response), TASK.gold_reward(prompt, revised)
        assert after >= before - 1e-12, (response, revised)
        parsed, parsed_revised = parse_response(response), parse_response(revised)
        if parsed is not None:
            assert parsed_revised is not None and parsed_revised.noun == parsed.noun
            if any(VALENCE[a] < 0 for a in parsed.adjectives):
                assert after > before


# ------------------------------------------------------------------ write_task
def _small_config(out: str, seed: int = 0) -> SynthConfig:
    return SynthConfig(
        out=out,
        seed=seed,
        num_sft=400,
        num_pairs=200,
        num_prompts=64,
        num_eval_prompts=32,
        num_eval_pairs=100,
        panel=PanelConfig(),
    )


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_write_task_is_reproducible(tmp_path) -> None:
    first = write_task(_small_config(str(tmp_path / "a")))
    second = write_task(_small_config(str(tmp_path / "b")))
    other = write_task(_small_config(str(tmp_path / "c"), seed=1))
    assert set(first) == {"sft", "pairs", "prompts", "eval_prompts", "eval_pairs", "task"}
    assert {path.name for path in (tmp_path / "a").iterdir()} == {path.name for path in first.values()}
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes(), name
    for name in ("sft", "pairs", "prompts", "eval_prompts", "eval_pairs"):
        assert first[name].read_bytes() != other[name].read_bytes(), name


def test_write_task_files_and_columns(tmp_path) -> None:
    paths = write_task(_small_config(str(tmp_path)))
    sft, pairs = _read_jsonl(paths["sft"]), _read_jsonl(paths["pairs"])
    prompts, eval_prompts = _read_jsonl(paths["prompts"]), _read_jsonl(paths["eval_prompts"])
    meta = json.loads(paths["task"].read_text())

    assert len(sft) == 400 and all(set(r) == {"prompt", "completion"} for r in sft)
    instructions = [r for r in sft if not TASK.is_task_prompt(r["prompt"])]
    assert len(instructions) == 80  # 20% of 400, a third critiques, the rest revisions
    assert sum(r["prompt"].startswith("Critique") for r in instructions) == 27
    assert sum(r["prompt"].startswith("Revise") for r in instructions) == 53
    assert meta["num_sft_instructions"] == 80

    rating_columns = {
        "prompt",
        "chosen",
        "rejected",
        "annotator",
        "annotator_group",
        "order",
        "shown_first",
        "pair_id",
    }
    assert all(set(r) == rating_columns for r in pairs)
    assert all(r["chosen"] != r["rejected"] for r in pairs)
    assert len(pairs) == 200 + 40 * 2  # 20% of pairs rated by 3 annotators
    assert len({r["pair_id"] for r in pairs}) == 200

    assert len(prompts) == 64 and len(eval_prompts) == 32
    assert all(set(r) == {"prompt"} for r in prompts + eval_prompts)
    train_side = {r["prompt"] for r in prompts} | {r["prompt"] for r in sft + pairs}
    assert not train_side & {r["prompt"] for r in eval_prompts}

    assert meta["task"] == "kindness" and meta["seed"] == 0 and meta["num_ratings"] == len(pairs)
    assert meta["panel"]["num_annotators"] == 12
    assert -0.2 < meta["corpus_gold_mean"] < 0.4 and meta["corpus_gold_std"] > 0.3


def test_write_task_eval_pairs_are_held_out_ratings(tmp_path) -> None:
    paths = write_task(_small_config(str(tmp_path)))
    pairs, eval_pairs = _read_jsonl(paths["pairs"]), _read_jsonl(paths["eval_pairs"])
    meta = json.loads(paths["task"].read_text())

    assert all(list(r) == list(pairs[0]) for r in eval_pairs)  # the columns of pairs.jsonl, in order
    assert all(r["chosen"] != r["rejected"] for r in eval_pairs)
    assert len(eval_pairs) == 100 + 20 * 2  # 20% of the pairs rated by 3 annotators, as in pairs.jsonl
    assert sorted({r["pair_id"] for r in eval_pairs}) == list(range(100))
    annotators: dict[int, list[str]] = {}
    for r in eval_pairs:
        annotators.setdefault(r["pair_id"], []).append(r["annotator"])
    overlap = [names for names in annotators.values() if len(names) > 1]
    assert len(overlap) == 20 and all(len(set(names)) == len(names) == 3 for names in overlap)
    held_out = set(TASK.prompt_pool("eval"))
    assert {r["prompt"] for r in eval_pairs} <= held_out
    assert not {r["prompt"] for r in pairs} & held_out

    assert (meta["num_eval_pairs"], meta["num_eval_ratings"]) == (100, len(eval_pairs))
    assert 0.5 < meta["eval_panel_gold_agreement"] < 1.0
    gold_margins = [TASK.gold_reward(r["prompt"], r["chosen"]) - TASK.gold_reward(r["prompt"], r["rejected"])
                    for r in eval_pairs]  # fmt: skip
    decided = [m > 0 for m in gold_margins if m != 0]
    assert meta["eval_panel_gold_agreement"] == round(sum(decided) / len(decided), 6)


def test_adding_eval_pairs_leaves_the_other_files_unchanged(tmp_path) -> None:
    """The eval pairs are a 5th spawned stream and get their own panel noise: the first 4 children
    of SeedSequence.spawn(5) equal those of spawn(4), so every other file stays byte-identical."""
    spawned_4 = [c.generate_state(4).tolist() for c in np.random.SeedSequence(7).spawn(4)]
    spawned_5 = [c.generate_state(4).tolist() for c in np.random.SeedSequence(7).spawn(5)]
    assert spawned_5[:4] == spawned_4

    few, many = _small_config(str(tmp_path / "few")), _small_config(str(tmp_path / "many"))
    few.num_eval_pairs, many.num_eval_pairs = 10, 20
    few_paths, many_paths = write_task(few), write_task(many)
    for name in ("sft", "pairs", "prompts", "eval_prompts"):
        assert few_paths[name].read_bytes() == many_paths[name].read_bytes(), name
    assert few_paths["eval_pairs"].read_bytes() != many_paths["eval_pairs"].read_bytes()


def test_eval_pair_ratings_follow_the_panel_seed(tmp_path) -> None:
    config = _small_config(str(tmp_path / "a"))
    other = _small_config(str(tmp_path / "b"))
    other.panel = PanelConfig(panel_seed=1)
    first, second = write_task(config), write_task(other)
    rows = _read_jsonl(first["eval_pairs"]), _read_jsonl(second["eval_pairs"])

    def pairs_of(ratings: list[dict]) -> set[tuple]:
        return {(r["pair_id"], r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in ratings}

    # Same prompts and responses (drawn from --seed), other raters and verdicts (from --panel_seed).
    assert pairs_of(rows[0]) == pairs_of(rows[1])
    assert rows[0] != rows[1]


def test_write_task_with_more_eval_prompts_than_the_pool(tmp_path) -> None:
    config = _small_config(str(tmp_path))
    config.num_eval_prompts = 200
    paths = write_task(config)
    meta = json.loads(paths["task"].read_text())
    assert (meta["num_eval_prompts"], meta["num_distinct_eval_prompts"]) == (200, 192)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "nope"}, "kindness"),
        ({"num_sft": 0}, "num_sft"),
        ({"num_eval_pairs": 0}, "num_eval_pairs"),
        ({"instruction_fraction": 1.0}, "instruction"),
    ],
)
def test_synth_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)
