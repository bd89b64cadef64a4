"""PPO, RLOO and GRPO end to end on a tiny model: a learnable reward rises, first steps are exact,
resume reproduces, the shared-backbone layout works, the value model starts from the reward model."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from preftune.cli import main
from preftune.data import DataConfig
from preftune.engine import TrainConfig, read_metrics
from preftune.models.loading import ModelConfig
from preftune.rollout.config import SamplingConfig, ScoringConfig
from preftune.trainers.ppo import PPOTrainer
from preftune.trainers.ppo_config import PPOConfig
from preftune.trainers.rloo_grpo import RLOOTrainer
from preftune.trainers.rloo_grpo_config import GRPOConfig, RLOOConfig


class LetterJudge:
    """A trivially learnable reward: the share of a response's letters that are in a-m. Every token's
    text has a fixed share, so the policy only has to move probability towards some tokens."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        shares = []
        for text in responses:
            letters = [c for c in text.lower() if c.isalpha()]
            shares.append(sum(c in "abcdefghijklm" for c in letters) / max(len(letters), 1))
        return torch.tensor(shares)


def _train(output_dir, steps: int, batch: int, **overrides) -> TrainConfig:
    return TrainConfig(
        output_dir=str(output_dir), learning_rate=overrides.pop("learning_rate", 2e-3), max_steps=steps,
        per_device_train_batch_size=batch, logging_steps=1, disable_tqdm=True, **overrides,
    )  # fmt: skip


def _common(
    tiny_base, synth_world, output_dir, steps, batch, judge="custom", eval_data=False, model=None, **train
):
    return {
        "model": ModelConfig(model=tiny_base, **(model or {})),
        "data": DataConfig(
            dataset=str(synth_world["prompts"]), max_length=64,
            eval_dataset=str(synth_world["eval_prompts"]) if eval_data else None,
        ),
        "train": _train(output_dir, steps, batch, **train),
        "sampling": SamplingConfig(max_new_tokens=8),
        # the random-init model never writes a well-formed response: its gold reward is always -1
        "scoring": ScoringConfig(judge=judge, reward_norm_samples=32,
                                 reward_normalization="none" if judge == "gold" else "initial_policy"),
    }  # fmt: skip


def _first_last(records, key, window=3):
    first = sum(r[key] for r in records[:window]) / window
    last = sum(r[key] for r in records[-window:]) / window
    return first, last


# A random-init model samples nearly uniformly from its vocabulary; a large constant learning rate
# lets 8-10 steps show the rise (measured: share 0.54 -> 0.95-1.0 in 10 steps for all three).
FAST = {"learning_rate": 3e-2, "lr_scheduler_type": "constant"}


def test_ppo_raises_a_learnable_reward(synth_world, tiny_base, tmp_path):
    config = PPOConfig(**_common(tiny_base, synth_world, tmp_path, steps=8, batch=32, **FAST), ppo_epochs=2,
                       kl_coef=0.01)  # fmt: skip
    PPOTrainer(config, judge=LetterJudge()).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    first, last = _first_last(records, "reward/raw")
    assert last > first + 0.15, (first, last)


@pytest.mark.parametrize("config_cls", [RLOOConfig, GRPOConfig], ids=["rloo", "grpo"])
def test_critic_free_raises_a_learnable_reward(synth_world, tiny_base, tmp_path, config_cls):
    config = config_cls(**_common(tiny_base, synth_world, tmp_path, steps=10, batch=32, **FAST),
                        num_generations=4, kl_coef=0.01)  # fmt: skip
    RLOOTrainer(config, judge=LetterJudge()).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    first, last = _first_last(records, "reward/raw")
    assert last > first + 0.15, (first, last)


def test_ppo_first_update_is_on_policy_and_metrics_are_logged(synth_world, tiny_base, tmp_path):
    config = PPOConfig(**_common(tiny_base, synth_world, tmp_path, steps=2, batch=8, eval_data=True,
                                 judge="gold"), ppo_epochs=1)  # fmt: skip
    trainer = PPOTrainer(config)
    before = trainer.evaluate()
    assert before["eval/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert "eval/gold_reward" in before  # the prompts come from the synthetic world
    trainer.train()
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    # one epoch, one mini-batch: the update's policy is the sampling policy
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert first["policy/clipfrac"] == 0.0
    assert first["policy/approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["kl/mean"] == pytest.approx(0.0, abs=1e-5)  # reference == starting policy
    assert first["rollout/logp_gap"] < 1e-4  # sampling-time and training-time log-probs agree
    expected = {
        "reward/raw", "reward/normalized", "kl/per_token", "kl/coef", "policy/entropy", "value/clipfrac",
        "value/error", "value/explained_variance", "response/length", "response/ended", "train/grad_norm",
    }  # fmt: skip
    assert expected <= set(first)
    assert first["policy/entropy"] > 0
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert final.config.vocab_size > 0


def test_ppo_resume_reproduces_the_uninterrupted_run(synth_world, tiny_base, tmp_path):
    def run(out, steps, resume=False):
        # a constant learning rate: the 2-step run's first steps are the 4-step run's
        config = PPOConfig(**_common(tiny_base, synth_world, out, steps=steps, batch=8, save_steps=2,
                                     resume=resume, judge="gold", lr_scheduler_type="constant"),
                           target_kl=1.0)  # fmt: skip
        PPOTrainer(config).train()

    run(tmp_path / "full", 4)
    run(tmp_path / "cut", 2)
    run(tmp_path / "cut", 4, resume=True)
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for key in ("loss", "reward/raw", "kl/coef", "value/error"):
        assert [r[key] for r in cut] == pytest.approx([r[key] for r in full], rel=1e-4, abs=1e-6), key


def test_ppo_shared_backbone_has_one_copy_of_the_weights(synth_world, tiny_base, tmp_path):
    config = PPOConfig(
        **_common(tiny_base, synth_world, tmp_path, steps=2, batch=8, judge="gold",
                  model={"use_peft": True, "lora_r": 4}),
        share_backbone=True, ppo_epochs=2,
    )  # fmt: skip
    trainer = PPOTrainer(config)
    assert trainer.reference is None  # the base with adapters disabled
    base_weights = [
        n for n, _ in trainer.model.named_parameters() if "lora_" not in n and "value_head" not in n
    ]
    assert len(base_weights) == len({n.replace("base_layer.", "") for n in base_weights})
    trainer.train()
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert first["kl/mean"] == pytest.approx(0.0, abs=1e-5)
    assert first["value/error"] > 0
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in final.state_dict())


def test_value_model_starts_from_the_reward_model(synth_world, tiny_base, tmp_path):
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    reward_model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_base).pad_token_id
    reward_model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(tmp_path / "rm")
    config = PPOConfig(**_common(tiny_base, synth_world, tmp_path / "run", steps=1, batch=8,
                                 judge=f"rm:{tmp_path / 'rm'}"))  # fmt: skip
    trainer = PPOTrainer(config)
    value = trainer.accelerator.unwrap_model(trainer.model).value
    assert value is not None
    torch.testing.assert_close(value.classifier.score.weight.cpu(), reward_model.score.weight)


def test_value_model_from_an_ensemble_reward_model_is_one_head_their_mean(synth_world, tiny_base, tmp_path):
    """`rm --num_heads 2` saves num_labels=2; PPO's default value model (from --judge rm:PATH) gets one
    head, the mean of the two, whose score is the ensemble's mean score (the reward the judge gives)."""
    from preftune.trainers.reward import RewardTrainer
    from preftune.trainers.reward_config import RewardConfig

    data = DataConfig(dataset=str(synth_world["pairs"]), max_length=96)
    rm = RewardConfig(
        model=ModelConfig(model=tiny_base), data=data, train=_train(tmp_path / "rm", 2, 8), num_heads=2
    )
    RewardTrainer(rm).train()
    final = tmp_path / "rm" / "final"
    heads = AutoModelForSequenceClassification.from_pretrained(final).score.weight  # (2, H)
    assert heads.shape[0] == 2
    config = PPOConfig(
        **_common(tiny_base, synth_world, tmp_path / "run", steps=2, batch=8, judge=f"rm:{final}")
    )
    trainer = PPOTrainer(config)
    value = trainer.accelerator.unwrap_model(trainer.model).value
    assert value is not None and value.num_heads == 1
    torch.testing.assert_close(value.classifier.score.weight.cpu(), heads.mean(dim=0, keepdim=True))
    trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)


def test_bad_rl_settings_fail_before_loading(synth_world, tiny_base, tmp_path):
    common = _common(tiny_base, synth_world, tmp_path, steps=1, batch=6)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        RLOOConfig(**common, num_generations=4)
    with pytest.raises(ValueError, match="use_peft"):
        PPOConfig(**_common(tiny_base, synth_world, tmp_path, steps=1, batch=8), share_backbone=True)
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(**{**_common(tiny_base, synth_world, tmp_path, steps=1, batch=8),
                     "sampling": SamplingConfig(temperature=0.0)})  # fmt: skip
    with pytest.raises(ValueError, match="lora_dropout"):
        PPOConfig(**_common(tiny_base, synth_world, tmp_path, steps=1, batch=8,
                            model={"use_peft": True, "lora_dropout": 0.1}))  # fmt: skip
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="generation_backend vllm needs a CUDA GPU"):
            PPOConfig(**{**_common(tiny_base, synth_world, tmp_path, steps=1, batch=8),
                         "sampling": SamplingConfig(generation_backend="vllm")})  # fmt: skip
    with pytest.raises(ValueError, match="Dr. GRPO"):
        RLOOConfig(**_common(tiny_base, synth_world, tmp_path, steps=1, batch=8), scale_rewards=False)


def test_grpo_command_line(synth_world, tiny_base, tmp_path):
    code = main([
        "grpo", "--model", tiny_base, "--dataset", str(synth_world["prompts"]), "--judge", "gold",
        "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_new_tokens", "8", "--max_length", "64", "--reward_normalization", "none",
        "--disable_tqdm", "true", "--scale_rewards", "false",
    ])  # fmt: skip
    assert code == 0
    assert (tmp_path / "final" / "config.json").exists()
    config = (tmp_path / "config.yaml").read_text()
    assert "advantage_estimator: grpo" in config and "kl_estimator: k3" in config


def test_sampling_time_log_probs_give_the_same_update_as_recomputed_ones(synth_world, tiny_base, tmp_path):
    runs = {}
    for mode in ("recompute", "sampling"):
        config = RLOOConfig(**_common(tiny_base, synth_world, tmp_path / mode, steps=2, batch=16),
                            num_generations=4, rollout_logps=mode)  # fmt: skip
        RLOOTrainer(config, judge=LetterJudge()).train()
        runs[mode] = read_metrics(tmp_path / mode / "metrics.jsonl")
    for mode, records in runs.items():
        assert records[0]["rollout/logp_gap"] < 1e-4, mode  # float32, transformers backend
        assert records[0]["policy/ratio"] == pytest.approx(1.0, abs=1e-5), mode
    for key in ("loss", "reward/raw", "kl/mean", "train/grad_norm"):
        assert [r[key] for r in runs["sampling"]] == pytest.approx([r[key] for r in runs["recompute"]],
                                                                   rel=1e-4, abs=1e-6), key  # fmt: skip


@pytest.mark.parametrize("use_peft", [False, True], ids=["frozen-copy", "adapter-disabled"])
def test_bf16_autocast_scores_policy_and_reference_in_one_precision(
    synth_world, tiny_base, tmp_path, use_peft
):
    """Regression: under --bf16 the rollout scoring ran partly in float32, so a policy equal to its
    reference showed a KL of about 3e-4 and a first ratio of 0.99995."""
    model = {"use_peft": True, "lora_r": 4} if use_peft else None
    common = _common(tiny_base, synth_world, tmp_path / "ppo", steps=1, batch=8, judge="gold", eval_data=True,
                     model=model, bf16=True)  # fmt: skip
    trainer = PPOTrainer(PPOConfig(**common, ppo_epochs=1))
    assert trainer.evaluate()["eval/kl"] == pytest.approx(0.0, abs=1e-6)
    trainer.train()
    assert read_metrics(tmp_path / "ppo" / "metrics.jsonl")[0]["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    common = _common(tiny_base, synth_world, tmp_path / "rloo", steps=1, batch=8, model=model, bf16=True)
    RLOOTrainer(RLOOConfig(**common, num_generations=4), judge=LetterJudge()).train()
    first = read_metrics(tmp_path / "rloo" / "metrics.jsonl")[0]
    assert first["kl/mean"] == pytest.approx(0.0, abs=1e-6)
    assert first["policy/ratio"] == pytest.approx(1.0, abs=1e-3)


def test_a_judge_that_returns_bad_scores_is_named(synth_world, tiny_base, tmp_path):
    class OneScore:
        def score(self, prompts, responses):
            return torch.tensor([0.5])

    class NotANumber:
        def score(self, prompts, responses):
            return torch.full((len(responses),), float("nan"))

    # the first scores are the 32 samples that measure the judge's mean and std on the starting policy
    with pytest.raises(ValueError, match=r"OneScore returned scores of shape \(1,\) for 32 responses"):
        RLOOTrainer(RLOOConfig(**_common(tiny_base, synth_world, tmp_path / "a", steps=1, batch=8),
                               num_generations=4), judge=OneScore())  # fmt: skip
    with pytest.raises(ValueError, match="NotANumber returned 32 non-finite scores"):
        RLOOTrainer(RLOOConfig(**_common(tiny_base, synth_world, tmp_path / "b", steps=1, batch=8),
                               num_generations=4), judge=NotANumber())  # fmt: skip


class OtherHalfJudge:
    """The share of letters in n-z: what LetterJudge's optimum gives up (a proxy's blind spot)."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return 1 - LetterJudge().score(prompts, responses)


@pytest.mark.parametrize("gamed", [True, False], ids=["gamed-proxy", "aligned-judges"])
def test_the_hacking_monitor_flags_a_gamed_proxy_and_stays_quiet_otherwise(
    synth_world, tiny_base, tmp_path, gamed
):
    common = _common(
        tiny_base, synth_world, tmp_path, steps=10, batch=32, eval_data=True, eval_steps=2, **FAST
    )
    common["scoring"].task = "none"  # the held-out judge is the one given below, not the gold reward
    trainer = RLOOTrainer(RLOOConfig(**common, num_generations=4, kl_coef=0.01), judge=LetterJudge(),
                          heldout_judge=OtherHalfJudge() if gamed else LetterJudge())  # fmt: skip
    trainer.train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    evaluated = [r for r in records if "eval/heldout_reward" in r]
    assert len(evaluated) == 5 and all("hacking/flagged" in r for r in evaluated)
    proxy_gain = evaluated[-1]["eval/reward"] - evaluated[0]["eval/reward"]
    assert proxy_gain > 0.1  # the policy learned the proxy in both runs
    hacking = json.loads((tmp_path / "summary.json").read_text())["hacking"]
    assert hacking["flagged"] is gamed, hacking["evidence"]
    assert evaluated[-1]["hacking/flagged"] == float(gamed)
    if gamed:
        assert "held-out" in hacking["evidence"] and any(
            f["kind"] == "divergence" for f in hacking["findings"]
        )


def test_an_ensemble_judges_disagreement_is_the_held_out_signal_without_gold(
    synth_world, tiny_base, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ensemble = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=2)  # two random heads
    ensemble.config.pad_token_id = tokenizer.pad_token_id
    ensemble.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    common = _common(tiny_base, synth_world, tmp_path / "run", steps=4, batch=8, judge=f"rm:{tmp_path / 'rm'}",
                     eval_data=True, eval_steps=2)  # fmt: skip
    common["scoring"].task = "none"
    RLOOTrainer(RLOOConfig(**common, num_generations=4)).train()
    evaluated = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/reward" in r]
    assert len(evaluated) == 2 and all(r["eval/ensemble_std"] > 0 for r in evaluated)
    assert "eval/gold_reward" not in evaluated[-1] and "hacking/heldout_slope" in evaluated[-1]


def test_held_out_samples_come_from_the_runs_generation_backend(synth_world, tiny_base, tmp_path):
    """The held-out evaluation samples through the run's backend (with vLLM: the engine that holds the
    policy's weights), as the training rollouts do, not through a second sampler."""
    common = _common(tiny_base, synth_world, tmp_path, steps=2, batch=8, eval_data=True, eval_steps=2)
    trainer = RLOOTrainer(RLOOConfig(**common, num_generations=2), judge=LetterJudge())
    backend, calls = trainer.setup.backend, []

    class Recording:
        def generate(self, prompts, config, seed, num_samples=1, prompt_keys=None):
            calls.append((len(prompts), num_samples))
            return backend.generate(prompts, config, seed, num_samples, prompt_keys=prompt_keys)

    trainer.setup.backend = Recording()
    trainer.train()
    held_out = len(trainer.setup.evaluator.prompts)
    # the starting policy's evaluation, two steps of 4 prompts x 2 samples, the evaluation at step 2
    assert calls == [(held_out, 1), (4, 2), (4, 2), (held_out, 1)], calls
