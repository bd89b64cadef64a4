"""`preftune bon` end to end on the synthetic world with a random-init tiny model (a judge still ranks
its samples): the gold judge (many ties: most random responses do not parse) and a reward model."""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from preftune.cli import main
from preftune.data import DataConfig, DataError, load_rows, parse_pairs, parse_sft
from preftune.models.loading import ModelConfig, load_tokenizer
from preftune.rollout.best_of_n import run_best_of_n
from preftune.rollout.config import BoNConfig

SAMPLE_KEYS = {"prompt", "response", "judge_score", "gold_score", "sample", "row"}
PAIR_KEYS = {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"}


def bon_config(model: str, prompts: Path, judge: str, output_dir: Path, **overrides) -> BoNConfig:
    options = {"n": 8, "max_new_tokens": 12, "generation_batch_size": 64, "disable_tqdm": True, **overrides}
    data = DataConfig(dataset=str(prompts), max_length=64)
    return BoNConfig(
        model=ModelConfig(model=model), data=data, judge=judge, output_dir=str(output_dir), **options
    )


def _strict_json(path: Path) -> dict:
    def reject(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which strict JSON has no spelling for")

    return json.loads(path.read_text(), parse_constant=reject)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_rm(tiny_base, tmp_path_factory):
    """A reward model with a random score head on the tiny base: enough to rank samples, unlike gold."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    tokenizer = load_tokenizer(tiny_base)
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def runs(synth_world, tiny_base, tiny_rm, tmp_path_factory):
    out = tmp_path_factory.mktemp("bon")
    results = {}
    for name, judge in (("gold", "gold"), ("rm", f"rm:{tiny_rm}")):
        config = bon_config(tiny_base, synth_world["eval_prompts"], judge, out / name)
        results[name] = (run_best_of_n(config), out / name)
    return results


@pytest.mark.parametrize("name", ["gold", "rm"])
def test_files_columns_and_best_of_each_prompt(runs, synth_world, name):
    result, out = runs[name]
    P, N = len(load_rows(str(synth_world["eval_prompts"])).rows), 8
    assert (result["n"], result["num_prompts"], result["task"]) == (N, P, "kindness")
    samples = _rows(out / "samples.jsonl")
    assert len(samples) == P * N and all(set(row) == SAMPLE_KEYS for row in samples)
    by_prompt = defaultdict(list)
    for row in samples:
        by_prompt[row["row"]].append(row)
    best = _rows(out / "best.jsonl")
    assert len(best) == P and all(set(row) == {"prompt", "completion", "score", "gold_score"} for row in best)
    for row, chosen in zip(by_prompt.values(), best, strict=True):
        assert [s["sample"] for s in row] == list(range(N)) and chosen["prompt"] == row[0]["prompt"]
        assert all(chosen["score"] >= s["judge_score"] for s in row)
        assert {"response": chosen["completion"], "judge_score": chosen["score"]}.items() <= next(
            s for s in row if s["response"] == chosen["completion"]
        ).items()
    parse_sft(load_rows(str(out / "best.jsonl")))  # valid SFT data for `preftune sft`
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("name", ["gold", "rm"])
def test_pairs_are_best_vs_worst_and_ties_are_counted(runs, name):
    result, out = runs[name]
    samples = _rows(out / "samples.jsonl")
    scores = defaultdict(list)
    for row in samples:
        scores[row["row"]].append(row["judge_score"])
    num_tied = sum(max(s) == min(s) for s in scores.values())
    pairs = _rows(out / "pairs.jsonl")
    assert result["pairs_skipped_ties"] == num_tied and result["pairs_written"] == len(pairs)
    assert len(pairs) + num_tied == result["num_prompts"]
    untied = [s for s in scores.values() if max(s) > min(s)]
    for pair, prompt_scores in zip(pairs, untied, strict=True):
        assert set(pair) == PAIR_KEYS
        assert (pair["chosen_score"], pair["rejected_score"]) == (max(prompt_scores), min(prompt_scores))
    if pairs:
        parse_pairs(load_rows(str(out / "pairs.jsonl")))  # valid preference data for `preftune dpo`


def test_gold_judge_ties_on_unparsable_samples_and_rm_judge_does_not(runs):
    gold, _ = runs["gold"]
    rm, _ = runs["rm"]
    assert gold["pairs_skipped_ties"] > 0  # a random-init model's samples mostly score -1 (no format)
    assert rm["pairs_skipped_ties"] == 0 and rm["pairs_written"] == rm["num_prompts"]


@pytest.mark.parametrize("name", ["gold", "rm"])
def test_curve_reward_grows_and_kl_stays_under_its_bounds(runs, name):
    result, out = runs[name]
    assert _strict_json(out / "bon.json") == json.loads(json.dumps(result))
    curve = result["curve"]
    assert [point["n"] for point in curve] == [1, 2, 4, 8]
    samples = _rows(out / "samples.jsonl")
    mean_score = sum(row["judge_score"] for row in samples) / len(samples)
    assert curve[0]["judge_reward"] == pytest.approx(mean_score, abs=1e-5)
    assert curve[0]["kl_measured"] == pytest.approx(0.0, abs=1e-12) and curve[0]["kl_bound"] == 0.0
    for before, after in itertools.pairwise(curve):
        assert after["judge_reward"] >= before["judge_reward"] - 1e-9
    for point in curve:
        assert point["kl_measured"] <= math.log(point["n"]) + 1e-9
        assert point["kl_measured"] <= point["kl_bound"] + 1e-9
        assert "gold_reward" in point
    if name == "gold":  # the judge is the gold reward: both columns agree
        assert all(p["gold_reward"] == pytest.approx(p["judge_reward"]) for p in curve)
    assert (
        result["best_judge_reward"] >= curve[-1]["judge_reward"] - 1e-9
    )  # the max beats n draws with replacement


def test_cli_runs_and_reproduces_the_python_api(synth_world, tiny_base, tmp_path):
    argv = ["bon", "--model", tiny_base, "--dataset", str(synth_world["eval_prompts"]), "--judge", "gold",
            "--n", "4", "--max_new_tokens", "8", "--max_length", "64", "--max_prompts", "3",
            "--output_dir", str(tmp_path / "cli"), "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    result = _strict_json(tmp_path / "cli" / "bon.json")
    assert (result["n"], result["num_prompts"], [p["n"] for p in result["curve"]]) == (4, 3, [1, 2, 4])
    config = bon_config(tiny_base, synth_world["eval_prompts"], "gold", tmp_path / "api", n=4, max_new_tokens=8,
                        max_prompts=3)  # fmt: skip
    run_best_of_n(config)
    # the same seed samples the same responses
    assert (tmp_path / "api" / "samples.jsonl").read_text() == (
        tmp_path / "cli" / "samples.jsonl"
    ).read_text()
    assert main([*argv[:6], "panel", *argv[7:]]) == 2  # a planned judge: a clear error, not a traceback


def test_a_bad_prompt_row_is_named(tiny_base, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Describe the garden.\n"}) + "\n" + json.dumps({"text": "x"}) + "\n"
    )
    with pytest.raises(DataError, match=r"prompts.jsonl, row 2: no prompt-only format"):
        run_best_of_n(bon_config(tiny_base, prompts, "gold", tmp_path / "out"))
