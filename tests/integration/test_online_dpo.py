"""Online DPO end to end on tiny models: pairs are ranked by the judge, the first step is DPO computed by
hand, resume reproduces, a pairwise judge works, and the gold reward rises from a briefly SFT'd model."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from preftune.data import Completion, DataConfig, Prompt
from preftune.engine import TrainConfig, read_metrics
from preftune.judges import PairVerdicts
from preftune.losses.registry import LOSSES, SORTED_LOSSES
from preftune.models.loading import ModelConfig
from preftune.rollout.config import SamplingConfig, ScoringConfig
from preftune.rollout.generate import RolloutBatch
from preftune.trainers.online_dpo import (
    ONLINE_LOSSES,
    OnlineDPOTrainer,
    load_ranking_judge,
    pairwise_ranking_scores,
)
from preftune.trainers.online_dpo_config import OnlineDPOConfig


def letter_share(text: str) -> float:
    """Share of a text's letters in a-m: a reward every token moves a little (varied, rarely tied)."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "abcdefghijklm" for c in letters) / max(len(letters), 1)


class LetterJudge:
    """Pointwise: the letter share."""

    def score(self, prompts: Sequence[Prompt], responses: Sequence[Completion]) -> torch.Tensor:
        return torch.tensor([letter_share(str(r)) for r in responses])


class PairwiseLetterJudge:
    """Pairwise only (no score): prefers the higher letter share; cannot judge a response without letters."""

    def __init__(self) -> None:
        self.calls = 0

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts:
        self.calls += 1
        probs = []
        for a, b in zip(map(str, first), map(str, second), strict=True):
            if not any(c.isalpha() for c in a + b):
                probs.append(math.nan)
            else:
                probs.append(float(torch.sigmoid(torch.tensor(20.0 * (letter_share(a) - letter_share(b))))))
        return PairVerdicts(torch.tensor(probs, dtype=torch.float64))


def odpo_config(model, synth_world, output_dir, steps=2, batch=8, judge="custom", eval_data=False, own=None,
                temperature=1.0, **train) -> OnlineDPOConfig:  # fmt: skip
    settings = {"learning_rate": 1e-3, "logging_steps": 1, "disable_tqdm": True, **train}
    return OnlineDPOConfig(
        model=ModelConfig(model=model),
        data=DataConfig(dataset=str(synth_world["prompts"]), max_length=64,
                        eval_dataset=str(synth_world["eval_prompts"]) if eval_data else None),
        train=TrainConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch, **settings),
        sampling=SamplingConfig(max_new_tokens=8, temperature=temperature),
        scoring=ScoringConfig(judge=judge, reward_normalization="none"),  # the trainer's default
        **(own or {}),
    )  # fmt: skip


def test_gold_run_writes_artifacts_and_pairs_best_against_worst(synth_world, sft_model, tmp_path):
    config = odpo_config(sft_model, synth_world, tmp_path, steps=3, batch=4, judge="gold", eval_data=True,
                         gradient_accumulation_steps=2, save_steps=3, own={"num_generations": 3})  # fmt: skip
    OnlineDPOTrainer(config).train()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/step-3", "final/config.json"):
        assert (tmp_path / name).exists(), name
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    expected = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "judge/chosen", "judge/rejected", "pairs/count", "pairs/skipped_ties", "kl/mean", "response/length",
                "reward/raw", "train/grad_norm"}  # fmt: skip
    for record in records:
        assert expected <= set(record), expected - set(record)
        assert record["pairs/count"] + record["pairs/skipped_ties"] == 8  # 4 prompts x 2 micro-batches
        assert record["pairs/count"] > 0
        assert record["judge/chosen"] > record["judge/rejected"]  # best against worst, ties skipped
        assert math.isfinite(record["loss"])
    assert records[0]["kl/mean"] == pytest.approx(0.0, abs=1e-4)  # the reference is the starting policy
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert {"eval/gold_reward", "eval/kl", "eval/length", "hacking/flagged"} <= set(records[-1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "hacking" in summary and summary["loss_type"] == "sigmoid"


def _sequence_logps(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """Summed log-probs of `response` after `prompt`, computed plainly with the full logits."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # (len(response), V)
    return logits.log_softmax(-1).gather(1, torch.tensor(response)[:, None]).sum()


def test_first_step_is_the_dpo_loss_computed_by_hand(synth_world, tiny_base, tmp_path):
    reference = AutoModelForCausalLM.from_pretrained(tiny_base)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference unlike the policy, so the log-ratios are not 0
        for param in reference.parameters():
            param.add_(0.05 * torch.randn_like(param))
    reference.save_pretrained(tmp_path / "ref")
    beta, temperature = 0.5, 0.7
    own = {"beta": beta, "ref_model": str(tmp_path / "ref")}
    settings = {
        "batch": 4,
        "gradient_accumulation_steps": 2,
        "max_grad_norm": 0.0,
        "temperature": temperature,
    }
    OnlineDPOTrainer(odpo_config(tiny_base, synth_world, tmp_path / "run", steps=1, own=own, **settings),
                     judge=LetterJudge()).train()  # fmt: skip
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    # the same pairs again: sampling is keyed by seed, step and prompt position
    twin = OnlineDPOTrainer(odpo_config(tiny_base, synth_world, tmp_path / "twin", steps=1, own=own, **settings),
                            judge=LetterJudge())  # fmt: skip
    pairs, metrics = twin.make_pairs(next(twin.engine.steps()))
    assert len(pairs.chosen) == metrics["pairs/count"] == logged["pairs/count"] > 2
    policy = AutoModelForCausalLM.from_pretrained(tiny_base)
    margins, chosen_rewards = [], []
    for c, r in zip(pairs.chosen, pairs.rejected, strict=True):
        deltas = []
        for i in (c, r):
            example = pairs.examples[i]
            prompt, response = (
                example.input_ids[: example.num_prompt_tokens],
                example.input_ids[example.num_prompt_tokens :],
            )
            with torch.no_grad():
                ref = _sequence_logps(reference, prompt, response, temperature)
            deltas.append(_sequence_logps(policy, prompt, response, temperature) - ref)
        margins.append(beta * (deltas[0] - deltas[1]))
        chosen_rewards.append(beta * deltas[0].detach())
    loss = torch.stack([-F.logsigmoid(m) for m in margins]).mean()  # the global mean over both micro-batches
    loss.backward()
    grad_norm = torch.cat([p.grad.reshape(-1) for p in policy.parameters() if p.grad is not None]).norm()
    assert logged["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert logged["train/grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-3)
    assert logged["rewards/chosen"] == pytest.approx(
        torch.stack(chosen_rewards).mean().item(), rel=1e-4, abs=1e-6
    )
    assert logged["rewards/margins"] == pytest.approx(torch.stack(margins).mean().item(), rel=1e-4, abs=1e-6)


def test_resume_reproduces_the_uninterrupted_run(synth_world, tiny_base, tmp_path):
    def run(out, steps, resume=False):
        config = odpo_config(tiny_base, synth_world, out, steps=steps, save_steps=2, resume=resume,
                             lr_scheduler_type="constant", own={"loss_type": "ipo"})  # fmt: skip
        OnlineDPOTrainer(config, judge=LetterJudge()).train()

    run(tmp_path / "full", 4)
    run(tmp_path / "cut", 2)
    run(tmp_path / "cut", 4, resume=True)
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "kl/mean", "pairs/count", "judge/chosen", "train/grad_norm"):
        assert [r[key] for r in cut] == pytest.approx([r[key] for r in full], rel=1e-4, abs=1e-6), key
    assert full[-1]["kl/mean"] != 0.0  # the policy moved


def test_a_pairwise_judge_ranks_the_samples(synth_world, tiny_base, tmp_path):
    judge = PairwiseLetterJudge()
    config = odpo_config(tiny_base, synth_world, tmp_path, steps=2, eval_data=True,
                         own={"num_generations": 3, "loss_type": "cdpo", "label_smoothing": 0.1})  # fmt: skip
    trainer = OnlineDPOTrainer(config, judge=judge)
    start = trainer.evaluate()  # the starting policy against its own held-out samples: identical, so 0.5
    assert start["eval/reward"] == pytest.approx(0.5) and "eval/gold_reward" in start
    trainer.train()
    assert judge.calls > 0
    records = read_metrics(tmp_path / "metrics.jsonl")
    for record in records:
        assert record["pairs/count"] + record["pairs/skipped_ties"] == 8
        assert record["judge/chosen"] > record["judge/rejected"]  # mean win probabilities in the group
        assert "pairs/could_not_judge" in record and "reward/raw" not in record
    assert 0.0 <= records[-1]["eval/reward"] <= 1.0


def test_a_step_where_every_prompt_ties_is_counted_and_skipped(synth_world, tiny_base, tmp_path):
    class Constant:
        def score(self, prompts, responses):
            return torch.zeros(len(responses))

    config = odpo_config(tiny_base, synth_world, tmp_path, steps=1, own={"num_generations": 2})
    config.scoring.missing_eos_penalty = 0.0  # otherwise ended and cut samples differ
    trainer = OnlineDPOTrainer(config, judge=Constant())
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    record = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert record["pairs/count"] == 0 and record["pairs/skipped_ties"] == 8
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


class AlternatingJudge:
    """Pairwise, stochastic in effect: the pairs of each call are won by `first`, then `second`, then `first`..."""

    def compare(
        self, prompts: Sequence[Prompt], first: Sequence[Completion], second: Sequence[Completion]
    ) -> PairVerdicts:
        return PairVerdicts(torch.tensor([float(i % 2 == 0) for i in range(len(first))], dtype=torch.float64))


def _with_duplicates(rollout: RolloutBatch, k: int) -> RolloutBatch:
    """The rollout with each group's sample 1 replaced by a copy of its sample 0."""
    ids, logps, mask, ended = (
        list(rollout.response_ids),
        rollout.logps.clone(),
        rollout.mask.clone(),
        rollout.ended.clone(),
    )
    for g in range(0, len(ids), k):
        ids[g + 1], logps[g + 1], mask[g + 1], ended[g + 1] = ids[g], logps[g], mask[g], ended[g]
    return RolloutBatch(rollout.prompt_ids, ids, logps, mask, ended)


def test_duplicate_best_and_worst_samples_are_a_tie(synth_world, tiny_base, tmp_path):
    """Groups [x, x, y]: the judge prefers x over y once and y over x once, so the Borda scores are
    x 0.75, x 0.25, y 0.5 and best and worst are the same text: a tie, not a pair."""
    config = odpo_config(tiny_base, synth_world, tmp_path, steps=1, own={"num_generations": 3})
    config.scoring.missing_eos_penalty = 0.0  # rank by the judge alone
    trainer = OnlineDPOTrainer(config, judge=AlternatingJudge())
    sample = trainer.setup.rollout
    trainer.setup.rollout = lambda *args: _with_duplicates(sample(*args), 3)  # type: ignore[method-assign]
    pairs, metrics = trainer.make_pairs(next(trainer.engine.steps()))
    assert pairs.chosen == [] and metrics["pairs/count"] == 0 and metrics["pairs/skipped_ties"] == 8


def test_pairwise_missing_eos_penalty_ranks_cut_samples_strictly_below():
    scores = torch.tensor([[1.0, 0.0], [0.25, 0.75], [math.nan, 0.5]], dtype=torch.float64)
    ended = torch.tensor([[False, True], [True, False], [False, True]])
    ranked = pairwise_ranking_scores(scores, ended, 1.0)
    assert ranked[0, 0] < ranked[0, 1] == 0.0  # won every comparison but was cut: still below
    assert ranked[1].tolist() == [0.25, pytest.approx(0.75 - 1.0 - 1e-6)] and ranked[2, 0].isnan()
    assert pairwise_ranking_scores(scores, ended, 0.5)[0].tolist() == [0.5, 0.0]  # below 1: as given
    assert pairwise_ranking_scores(scores, ended, 2.0)[0].tolist() == [-1.0, 0.0]
    torch.testing.assert_close(pairwise_ranking_scores(scores, ended, 0.0), scores.float(), equal_nan=True)


def test_load_ranking_judge_takes_pairwise_specs():
    assert type(load_ranking_judge("panel", "cpu", 4)).__name__ == "PanelJudge"
    assert type(load_ranking_judge("gold", "cpu", 4)).__name__ == "GoldJudge"


def test_online_dpo_raises_the_gold_reward_of_an_sft_model(synth_world, sft_model, tmp_path):
    config = odpo_config(sft_model, synth_world, tmp_path, steps=12, batch=16, judge="gold", eval_data=True,
                         learning_rate=1e-3, lr_scheduler_type="constant", eval_steps=12,
                         own={"num_generations": 4, "beta": 0.1})  # fmt: skip
    trainer = OnlineDPOTrainer(config)
    before = trainer.evaluate()["eval/gold_reward"]
    trainer.train()
    after = read_metrics(tmp_path / "metrics.jsonl")[-1]["eval/gold_reward"]
    assert after > before + 0.1, (before, after)


def test_loss_choices_and_bad_settings(synth_world, tiny_base, tmp_path):
    for name, spec in ONLINE_LOSSES.items():  # only the two log-ratios (and label_smoothing) are given
        assert name in LOSSES and name not in SORTED_LOSSES and not spec.reference_free, name
        assert set(spec.params) <= {"label_smoothing"}, name
    with pytest.raises(ValueError, match="num_generations"):
        odpo_config(tiny_base, synth_world, tmp_path, own={"num_generations": 1})
    with pytest.raises(ValueError, match="cdpo needs --label_smoothing"):
        odpo_config(tiny_base, synth_world, tmp_path, own={"loss_type": "cdpo"})
    with pytest.raises(ValueError, match="not used by ipo"):
        odpo_config(tiny_base, synth_world, tmp_path, own={"loss_type": "ipo", "label_smoothing": 0.1})
    with pytest.raises(ValueError, match="beta"):
        odpo_config(tiny_base, synth_world, tmp_path, own={"beta": 0.0})
    config = odpo_config(tiny_base, synth_world, tmp_path)
    config.scoring.reward_normalization = "initial_policy"  # scores of a pointwise judge only
    with pytest.raises(ValueError, match="reward_normalization none"):
        OnlineDPOTrainer(config, judge=PairwiseLetterJudge())
