"""Best-of-n estimators (preftune/ops/best_of_n.py) and the pieces of `preftune bon` that need no model."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.data import DataConfig
from preftune.models.loading import ModelConfig
from preftune.ops.best_of_n import best_of_n_kl, best_of_n_probabilities, expected_best_of_n, kl_bound
from preftune.rollout.best_of_n import bon_curve, curve_sizes, distinct_response_ids
from preftune.rollout.config import BoNConfig


def _distinct(P: int, N: int) -> torch.Tensor:
    return torch.arange(N).expand(P, N).clone()  # every sample its own response


def test_kl_bound_closed_form():
    """log n - (n-1)/n: 0 at n = 1, log 2 - 1/2 = 0.193147 at 2, log 4 - 3/4 = 0.636294 at 4."""
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(0.193147, abs=1e-6)
    assert kl_bound(4) == pytest.approx(0.636294, abs=1e-6)
    with pytest.raises(ValueError, match="n must be >= 1"):
        kl_bound(0)


def test_selection_probabilities_without_ties():
    """N = 3, scores [3, 1, 2], n = 2: rank i gets (i/3)^2 - ((i-1)/3)^2, so the lowest (1) gets 1/9,
    the middle (2) 4/9 - 1/9 = 3/9 and the highest (3) 1 - 4/9 = 5/9; expected reward
    3 * 5/9 + 1 * 1/9 + 2 * 3/9 = 22/9."""
    scores = torch.tensor([[3.0, 1.0, 2.0]])
    probabilities = best_of_n_probabilities(scores, 2)
    torch.testing.assert_close(probabilities, torch.tensor([[5 / 9, 1 / 9, 3 / 9]], dtype=torch.float64))
    torch.testing.assert_close(
        expected_best_of_n(scores, probabilities), torch.tensor([22 / 9], dtype=torch.float64)
    )


def test_tied_scores_share_their_group_probability():
    """Scores [1, 1, 0], n = 2: the tie group {1, 1} is picked with (3/3)^2 - (1/3)^2 = 8/9, 4/9 each;
    the 0 with (1/3)^2 = 1/9. All tied: uniform whatever n."""
    probabilities = best_of_n_probabilities(torch.tensor([[1.0, 1.0, 0.0], [5.0, 5.0, 5.0]]), 2)
    expected = torch.tensor([[4 / 9, 4 / 9, 1 / 9], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(probabilities, expected)
    torch.testing.assert_close(
        best_of_n_probabilities(torch.full((1, 4), 2.0), 7), torch.full((1, 4), 0.25, dtype=torch.float64)
    )


def test_n_equal_one_is_the_mean_with_no_kl():
    scores = torch.randn(5, 9, generator=torch.Generator().manual_seed(0))
    scores[:, 3] = scores[:, 1]  # a tie
    probabilities = best_of_n_probabilities(scores, 1)
    torch.testing.assert_close(probabilities, torch.full((5, 9), 1 / 9, dtype=torch.float64))
    torch.testing.assert_close(expected_best_of_n(scores, probabilities), scores.double().mean(dim=1))
    torch.testing.assert_close(
        best_of_n_kl(probabilities, _distinct(5, 9)), torch.zeros(5, dtype=torch.float64)
    )


def test_gold_reward_of_the_judges_choice():
    """The judge prefers sample 2 (score 1 > 0) but gold prefers sample 1: with n = 2 the judge's
    choice is sample 2 with probability 3/4, so judge reward 3/4 and gold reward 1 * 1/4 + 0 * 3/4 = 1/4."""
    scores, gold = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    probabilities = best_of_n_probabilities(scores, 2)
    assert expected_best_of_n(scores, probabilities).item() == pytest.approx(0.75)
    assert expected_best_of_n(gold, probabilities).item() == pytest.approx(0.25)


def test_measured_kl_closed_form():
    """N = n = 2, distinct responses: p = (1/4, 3/4), q = (1/2, 1/2), so
    KL = 1/4 log(1/2) + 3/4 log(3/2) = -0.173287 + 0.304099 = 0.130812 (the bound is 0.193147)."""
    probabilities = best_of_n_probabilities(torch.tensor([[0.0, 1.0]]), 2)
    kl = best_of_n_kl(probabilities, _distinct(1, 2)).item()
    assert kl == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-12)
    assert kl == pytest.approx(0.130812, abs=1e-6)


def test_measured_kl_sums_over_distinct_responses():
    """Scores [0, 2, 1] (a non-deterministic judge scored two copies of one text differently), n = 2:
    p = (1/9, 5/9, 3/9). Over samples KL = 1/9 log(1/3) + 5/9 log(5/3) + 3/9 log(1) = 0.161724; merging the
    copies 0 and 1 gives p(A) = 6/9 = q(A) and p(B) = 3/9 = q(B), so KL = 0."""
    probabilities = best_of_n_probabilities(torch.tensor([[0.0, 2.0, 1.0]]), 2)
    per_sample = best_of_n_kl(probabilities, _distinct(1, 3)).item()
    assert per_sample == pytest.approx(math.log(1 / 3) / 9 + 5 / 9 * math.log(5 / 3), abs=1e-12)
    assert per_sample == pytest.approx(0.161724, abs=1e-6)
    assert best_of_n_kl(probabilities, torch.tensor([[0, 0, 2]])).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        best_of_n_kl(probabilities, torch.tensor([[0, 0]]))


def test_reward_and_kl_grow_with_n_and_stay_under_the_bounds():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (20, 16), generator=generator).float()  # many ties
    scores[:10] = torch.randn(10, 16, generator=generator)
    ids = _distinct(20, 16)
    previous_reward, previous_kl = -math.inf, -1.0
    for n in range(1, 17):
        probabilities = best_of_n_probabilities(scores, n)
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(20, dtype=torch.float64))
        reward = expected_best_of_n(scores, probabilities)
        kl = best_of_n_kl(probabilities, ids)
        assert (reward.mean() >= previous_reward - 1e-12).item()
        assert (kl.mean() >= previous_kl - 1e-12).item()
        assert (kl <= kl_bound(n) + 1e-12).all() and (kl <= math.log(n) + 1e-12).all()
        previous_reward, previous_kl = reward.mean().item(), kl.mean().item()


def test_measured_kl_tends_to_the_bound_for_large_n_samples_and_falls_below_near_n():
    """n fixed, N large: the plug-in KL approaches log n - (n-1)/n; at n = N it stays below it."""
    big = torch.arange(2048.0).unsqueeze(0)
    for n in (2, 4):
        kl = best_of_n_kl(best_of_n_probabilities(big, n), _distinct(1, 2048)).item()
        assert kl == pytest.approx(kl_bound(n), abs=1e-3)
    small = torch.arange(16.0).unsqueeze(0)
    kl = best_of_n_kl(best_of_n_probabilities(small, 16), _distinct(1, 16)).item()
    assert kl == pytest.approx(1.794, abs=1e-3) and kl_bound(16) - kl > 0.03


def test_prompts_are_independent():
    scores = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    together = best_of_n_probabilities(scores, 3)
    for row in range(4):
        torch.testing.assert_close(together[row], best_of_n_probabilities(scores[row : row + 1], 3)[0])


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match=r"shape \(P, N\)"):
        best_of_n_probabilities(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="finite"):
        best_of_n_probabilities(torch.tensor([[0.0, math.nan]]), 2)


def test_curve_sizes_are_powers_of_two_then_n():
    assert curve_sizes(1) == [1]
    assert curve_sizes(2) == [1, 2]
    assert curve_sizes(12) == [1, 2, 4, 8, 12]
    assert curve_sizes(16) == [1, 2, 4, 8, 16]


def test_distinct_response_ids_name_the_first_copy():
    ids = distinct_response_ids(["a", "b", "a", "c", "x", "x", "x", "x"], 4)
    assert ids.tolist() == [[0, 1, 0, 3], [0, 0, 0, 0]]


def test_bon_curve_points():
    scores, gold = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    curve = bon_curve(scores, _distinct(1, 2), gold)
    assert [point["n"] for point in curve] == [1, 2]
    assert curve[0] == pytest.approx(
        {"n": 1, "judge_reward": 0.5, "gold_reward": 0.5, "kl_bound": 0.0, "kl_measured": 0.0}
    )
    assert curve[1]["judge_reward"] == pytest.approx(0.75) and curve[1]["gold_reward"] == pytest.approx(0.25)
    assert "gold_reward" not in bon_curve(scores, _distinct(1, 2))[0]


def _config(**overrides) -> BoNConfig:
    data = DataConfig(dataset="prompts.jsonl", **overrides.pop("data", {}))
    base = {"judge": "gold", "output_dir": "out"}
    return BoNConfig(
        model=ModelConfig(model="model", **overrides.pop("model", {})), data=data, **{**base, **overrides}
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"judge": ""}, "--judge is required"),
        ({"output_dir": ""}, "--output_dir is required"),
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"max_prompts": -1}, "max_prompts must be >= 0"),
        ({"temperature": 0.0}, "greedy decoding"),
        ({"top_p": 0.0}, "top_p"),
        ({"task": "nope"}, "Unknown task 'nope'"),
        ({"data": {"eval_dataset": "x.jsonl"}}, "--eval_dataset 'x.jsonl' is not used"),
        ({"data": {"max_length": 33}}, "no room for a prompt"),
        ({"model": {"use_peft": True}}, "untrained LoRA adapter"),
    ],
)
def test_config_errors_say_what_and_how_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_config_defaults_and_greedy_single_sample():
    config = _config()
    assert (config.n, config.max_new_tokens, config.temperature, config.top_p, config.top_k) == (
        16,
        32,
        1.0,
        1.0,
        0,
    )
    assert (config.generation_batch_size, config.seed, config.task, config.max_prompts) == (64, 0, "auto", 0)
    assert config.judge_batch_size == 32
    _config(temperature=0.0, n=1)  # greedy is fine for one sample


def test_bon_command_is_wired_with_flat_flags():
    from preftune.cli import COMMANDS
    from preftune.config import parse_config

    assert COMMANDS["bon"].load is not None
    config_cls, _ = COMMANDS["bon"].load()
    assert config_cls is BoNConfig
    argv = [
        "--model",
        "m",
        "--dataset",
        "p.jsonl",
        "--judge",
        "rm:r",
        "--n",
        "4",
        "--output_dir",
        "o",
        "--top_k",
        "5",
    ]
    config = parse_config(BoNConfig, argv)
    assert (config.model.model, config.data.dataset, config.judge, config.n, config.top_k) == (
        "m",
        "p.jsonl",
        "rm:r",
        4,
        5,
    )
