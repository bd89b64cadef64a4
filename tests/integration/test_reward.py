"""Reward modelling end to end on the synthetic world: train, save, load with plain transformers, score, evaluate."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from preftune.cli import main
from preftune.data import DataConfig, load_rows
from preftune.engine import TrainConfig, read_metrics
from preftune.judges import RewardModelJudge, load_judge
from preftune.models.loading import ModelConfig
from preftune.trainers.reward import RewardTrainer
from preftune.trainers.reward_config import RewardConfig


def rm_config(model, synth_world, output_dir, eval_data=True, **overrides) -> RewardConfig:
    heads = {
        k: overrides.pop(k) for k in ("num_heads", "prefix_sharing", "label_smoothing") if k in overrides
    }
    train = {
        "output_dir": str(output_dir),
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 16,
        "max_steps": 4,
        "logging_steps": 1,
        "disable_tqdm": True,
        **overrides,
    }
    data = DataConfig(
        dataset=str(synth_world["pairs"]),
        eval_dataset=str(synth_world["eval_pairs"]) if eval_data else None,
        max_length=96,
    )
    return RewardConfig(model=ModelConfig(model=model), data=data, train=TrainConfig(**train), **heads)


@pytest.fixture(scope="module")
def trained_rm(synth_world, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    summary = RewardTrainer(rm_config(tiny_base, synth_world, out, max_steps=40, eval_steps=20)).train()
    return out, summary


def _eval_responses(synth_world):
    rows = load_rows(str(synth_world["eval_pairs"])).rows
    prompts = [r["prompt"] for r in rows] * 2
    return prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def test_reward_model_learns_and_logs_pair_metrics(trained_rm):
    out, summary = trained_rm
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 40
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "train/grad_norm",
    ):
        assert key in records[0]
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert first == pytest.approx(0.693, abs=0.05)  # random head: rewards near 0, loss near log 2
    assert last < first - 0.1
    # held-out pairs rated by the same panel: far above chance after 40 small steps
    assert records[-1]["eval/rewards/accuracies"] > 0.6


def test_final_loads_with_plain_transformers_and_matches_the_judge(trained_rm, synth_world):
    out, summary = trained_rm
    final = out / "final"
    plain = AutoModelForSequenceClassification.from_pretrained(final).eval()
    judge = RewardModelJudge(str(final), batch_size=7)
    prompts, responses = _eval_responses(synth_world)
    scores = judge.score(prompts, responses)
    # plain transformers on one unpadded sequence reads the last token: the same score
    for i in (0, 5, len(prompts) - 1):
        ids = torch.tensor([judge.encode([prompts[i]], [responses[i]])[0].input_ids])
        with torch.no_grad():
            assert plain(input_ids=ids).logits[0, 0].item() == pytest.approx(scores[i].item(), abs=1e-4)
    # the statistics saved next to the model are those of the eval responses (packed path in training)
    stats = json.loads((final / "reward_stats.json").read_text())
    assert stats["source"] == "eval_dataset" and stats["count"] == len(responses)
    assert stats["mean"] == pytest.approx(scores.mean().item(), abs=1e-4)
    assert stats["std"] == pytest.approx(scores.std(correction=0).item(), abs=1e-4)
    assert summary["reward_stats"]["mean"] == pytest.approx(stats["mean"])


def test_eval_command_writes_accuracy_length_probe_and_gold_agreement(trained_rm, synth_world, tmp_path):
    out, _ = trained_rm
    final = out / "final"
    code = main(["eval", "--reward_model", f"rm:{final}", "--dataset", str(synth_world["eval_pairs"]),
                 "--output_dir", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    lo, hi = result["rm/accuracy_ci"]
    assert lo < result["rm/accuracy"] < hi and result["rm/accuracy"] > 0.6
    assert 0 <= result["rm/ece"] < 0.5
    for key in (
        "length/prefer_longer_accuracy",
        "length/accuracy_chosen_longer",
        "length/length_correlation",
    ):
        assert key in result
    # task.json beside the pairs names the synthetic task: agreement with its gold reward is reported
    assert result["data/task"] == "kindness"
    assert 0.5 < result["data/label_gold_agreement"] < 1.0
    assert result["rm/gold_agreement"] > 0.6
    assert result["rm/max_length"] == 96  # the judge cuts sequences as training did (from reward_stats.json)
    written = json.loads((tmp_path / "eval" / "reward_stats.json").read_text())
    assert (
        written["source"] == str(synth_world["eval_pairs"]) and written["count"] == 2 * result["rm/num_pairs"]
    )
    # the trainer's statistics next to the model are kept unless --write_stats true
    assert json.loads((final / "reward_stats.json").read_text())["source"] == "eval_dataset"


def test_the_sycophancy_probe_scores_the_chosen_responses_with_and_without_an_opener(
    trained_rm, synth_world, tmp_path
):
    out, _ = trained_rm
    final = out / "final"
    code = main(["eval", "--reward_model", f"rm:{final}", "--dataset", str(synth_world["eval_pairs"]),
                 "--output_dir", str(tmp_path / "eval"), "--probe_sycophancy", "true"])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["sycophancy/num_responses"] == result["rm/num_pairs"]
    judge = RewardModelJudge(str(final))
    prompts = [json.loads(line)["prompt"] for line in synth_world["eval_pairs"].read_text().splitlines()][:3]
    chosen = [json.loads(line)["chosen"] for line in synth_world["eval_pairs"].read_text().splitlines()][:3]
    for name in ("flattery", "agreement"):
        low, high = result[f"sycophancy/{name}/score_change_ci"]
        assert low <= result[f"sycophancy/{name}/score_change"] <= high
        assert 0.0 <= result[f"sycophancy/{name}/share_raised"] <= 1.0
        assert "gold_change" in " ".join(k for k in result if k.startswith(f"sycophancy/{name}/"))
    # the change is the reward model's own: score(opener + r) - score(r), checked on the first responses
    opened = judge.score(prompts, ["What a great question! " + c for c in chosen]) - judge.score(
        prompts, chosen
    )
    assert opened.abs().sum().item() > 0  # an opener the model has never seen moves its score


def test_prefix_sharing_trains_exactly_like_padded_batches(synth_world, tiny_base, tmp_path):
    runs = {}
    for sharing in (True, False):
        out = tmp_path / str(sharing)
        RewardTrainer(rm_config(tiny_base, synth_world, out, eval_data=False, prefix_sharing=sharing)).train()
        runs[sharing] = read_metrics(out / "metrics.jsonl")
    for key in ("loss", "rewards/margins", "train/grad_norm"):
        a = torch.tensor([r[key] for r in runs[True]], dtype=torch.float64)
        b = torch.tensor([r[key] for r in runs[False]], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # fewer tokens computed: the prompt once per pair and no padding
    assert runs[True][-1]["train/num_tokens"] < runs[False][-1]["train/num_tokens"]


def test_ensemble_heads_train_on_their_own_bootstrap(synth_world, tiny_base, tmp_path):
    trainer = RewardTrainer(rm_config(tiny_base, synth_world, tmp_path / "ens", num_heads=3, eval_data=False))
    counts = trainer.bootstrap  # (N, 3)
    assert counts.shape == (len(trainer.train_pairs), 3)
    assert torch.all(counts.sum(dim=0) == len(trainer.train_pairs))  # each head: a resample of N pairs
    assert not torch.equal(counts[:, 0], counts[:, 1])
    trainer.train()
    final = tmp_path / "ens" / "final"
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 3
    judge = load_judge(f"rm:{final}")
    scores = judge.score_ensemble(*_eval_responses(synth_world))
    assert scores.heads.shape[1] == 3
    torch.testing.assert_close(scores.mean, scores.heads.mean(dim=-1))
    torch.testing.assert_close(scores.std, scores.heads.std(dim=-1))
    assert scores.std.mean() > 0
    # two separately trained models form an ensemble too: heads are concatenated
    pair = load_judge(f"rm:{final},{final}")
    assert pair.score_ensemble(["Describe the garden.\n"], ["the garden is kind ."]).heads.shape == (1, 6)
    with pytest.raises(ValueError, match="3 head"):
        RewardTrainer(rm_config(str(final), synth_world, tmp_path / "again", num_heads=2))


def test_lora_reward_model_trains_adapters_and_head_and_merges(synth_world, tiny_base, tmp_path):
    config = rm_config(tiny_base, synth_world, tmp_path / "lora", eval_data=False)
    config.model.use_peft, config.model.lora_r = True, 4
    trainer = RewardTrainer(config)
    trainable = [n for n, p in trainer.engine.unwrapped.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    trainer.train()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lora" / "final")
    assert not any("lora" in k for k in plain.state_dict())
    stats = json.loads((tmp_path / "lora" / "final" / "reward_stats.json").read_text())
    judge = RewardModelJudge(str(tmp_path / "lora" / "final"))
    rows = load_rows(str(synth_world["pairs"])).rows
    scores = judge.score(
        [r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    assert stats["mean"] == pytest.approx(scores.mean().item(), abs=1e-4)  # merged == trained adapter


def test_bad_settings_fail_before_training(synth_world, tiny_base, tmp_path):
    with pytest.raises(ValueError, match="label_smoothing"):
        rm_config(tiny_base, synth_world, tmp_path, label_smoothing=0.5)
    with pytest.raises(ValueError, match="num_heads"):
        rm_config(tiny_base, synth_world, tmp_path, num_heads=0)
    with pytest.raises(ValueError, match="compares pairs"):
        load_judge("llm:some/model")
    with pytest.raises(ValueError, match="is not a reward model"):  # a causal LM's score head would be random
        RewardModelJudge(tiny_base)
    weightless = tmp_path / "weightless.jsonl"
    rows = load_rows(str(synth_world["pairs"])).rows[:8]
    weightless.write_text("".join(json.dumps({**row, "weight": 0.0}) + "\n" for row in rows))
    config = rm_config(tiny_base, synth_world, tmp_path / "w", eval_data=False)
    config.data.dataset = str(weightless)
    with pytest.raises(ValueError, match="weight 0"):
        RewardTrainer(config)
    with pytest.raises(SystemExit) as exit_info:  # config errors exit 2 with a usage line
        main(["rm", "--model", tiny_base, "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_resume_continues_the_run_exactly(synth_world, tiny_base, tmp_path):
    import shutil

    out = tmp_path / "rm"
    config = rm_config(
        tiny_base, synth_world, out, eval_data=False, num_heads=2, save_steps=2, save_total_limit=3
    )
    RewardTrainer(config).train()
    uninterrupted = read_metrics(out / "metrics.jsonl")
    # as if the run had died after step 2: only the step-2 checkpoint survives
    shutil.rmtree(out / "checkpoints" / "step-4")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    config.train.resume = True
    RewardTrainer(config).train()
    resumed = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("loss", "rewards/margins", "rewards/ensemble_std", "train/grad_norm"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in uninterrupted], rel=1e-6)


HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless" / "train.jsonl.gz"


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF data not present")
def test_implicit_prompt_pairs_of_hh_rlhf_train_as_they_are(tiny_base, tmp_path, caplog):
    """chosen/rejected only: the shared prefix is the prompt; long prompts are cut on the left and counted."""
    losses = {}
    for sharing in (True, False):
        data = DataConfig(dataset=str(HH), dataset_split="train[:48]", max_length=256, skip_invalid=True)
        train = TrainConfig(output_dir=str(tmp_path / str(sharing)), learning_rate=1e-3, max_steps=2,
                            per_device_train_batch_size=8, logging_steps=1, disable_tqdm=True)  # fmt: skip
        config = RewardConfig(
            model=ModelConfig(model=tiny_base), data=data, train=train, prefix_sharing=sharing
        )
        caplog.clear()
        with caplog.at_level("INFO", logger="preftune"):
            trainer = RewardTrainer(config)
        skipped = int(re.search(r"Skipped (\d+) of 48 rows", caplog.text).group(1))  # type: ignore[union-attr]
        assert len(trainer.train_pairs) == 48 - skipped and skipped < 8  # responses too long: counted skips
        truncated = [p for p in trainer.train_pairs if p.num_truncated > 0]
        assert truncated, "some HH prompts are too long for 256 tokens"
        assert f"{len(truncated)} truncated" in caplog.text  # reported, not silent
        for pair in truncated:  # the responses are kept whole; the prompt lost its left part
            assert max(len(pair.chosen), len(pair.rejected)) == 256
        trainer.train()
        losses[sharing] = [r["loss"] for r in read_metrics(tmp_path / str(sharing) / "metrics.jsonl")]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def _aggregated_pairs(synth_world, path: Path) -> Path:
    """The fixture's ratings aggregated by Dawid-Skene: one row per pair with weight and chosen_probability."""
    from preftune.feedback.aggregate import aggregate_ratings, write_aggregated

    rows, _ = aggregate_ratings(load_rows(str(synth_world["pairs"])).rows, "dawid_skene")
    return write_aggregated(path, rows)


def test_soft_labels_and_weights_enter_the_loss_and_train(synth_world, tiny_base, tmp_path):
    import torch.nn.functional as F

    config = rm_config(tiny_base, synth_world, tmp_path / "run", eval_data=False, max_steps=3)
    config.data.dataset = str(_aggregated_pairs(synth_world, tmp_path / "agg.jsonl"))
    trainer = RewardTrainer(config)
    pairs = trainer.train_pairs[:6]
    p = torch.tensor([pair.meta["chosen_probability"] for pair in pairs])
    assert p.min() >= 0.5 and p.max() <= 1.0 and len(set(p.tolist())) > 1
    assert {pair.weight for pair in pairs} != {None}
    with torch.no_grad():
        chosen, rejected = trainer._rewards(trainer.model, trainer._collate(pairs))  # (6, 1) each
        losses, _ = trainer._loss(pairs, chosen, rejected)
    gap = (chosen - rejected)[:, 0]
    torch.testing.assert_close(losses[:, 0], p * F.softplus(-gap) + (1 - p) * F.softplus(gap))
    summary = trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    assert "rewards/accuracies" in records[-1] and "label_noise" not in summary


def test_label_noise_auto_estimates_the_flip_rate_and_records_it(synth_world, tiny_base, tmp_path):
    config = dataclasses.replace(
        rm_config(tiny_base, synth_world, tmp_path / "auto", eval_data=False, max_steps=2), label_noise="auto"
    )
    trainer = RewardTrainer(config)
    trainer.train()
    record = json.loads((tmp_path / "auto" / "summary.json").read_text())["label_noise"]
    # the panel flips 5% of verdicts plus fatigue and disagrees with gold on about 24% of pairs
    assert 0.02 < record["flip_rate"] < 0.4
    assert trainer.label_smoothing == record["label_smoothing"] == record["flip_rate"]
    assert record["num_multiply_rated"] > 0 and record["num_ratings"] > record["num_items"]
    config.data.dataset = str(_aggregated_pairs(synth_world, tmp_path / "agg.jsonl"))  # one rating per item
    config.train.output_dir = str(tmp_path / "fails")
    with pytest.raises(ValueError, match="needs an 'annotator'"):
        RewardTrainer(config)


def test_the_documented_plain_transformers_snippet_gives_the_judges_score(trained_rm, synth_world, capsys):
    """docs/reward_models.md's code, run as written on a trained model (its path swapped in), gives the
    rm: judge's scores for text and conversations; the naive call without the EOS does not."""
    out, _ = trained_rm
    final = str(out / "final")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "reward_models.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert '"runs/rm/final"' in block
    namespace: dict = {}
    exec(compile(block.replace('"runs/rm/final"', repr(final)), "docs/reward_models.md", "exec"), namespace)
    assert math.isfinite(float(capsys.readouterr().out))  # the block's own example prints one score
    rm_score = namespace["rm_score"]
    judge = RewardModelJudge(final)
    prompts, responses = _eval_responses(synth_world)
    prompts, responses = prompts[:3] + prompts[-3:], responses[:3] + responses[-3:]
    expected = judge.score(prompts, responses)
    documented = torch.tensor([rm_score(final, p, r) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(documented, expected, rtol=1e-5, atol=1e-5)
    messages = [[{"role": "user", "content": p.strip()}] for p in prompts]
    replies = [[{"role": "assistant", "content": r}] for r in responses]
    torch.testing.assert_close(
        torch.tensor([rm_score(final, m, r) for m, r in zip(messages, replies, strict=True)]),
        judge.score(messages, replies),
        rtol=1e-5,
        atol=1e-5,
    )
    tokenizer, model = judge.tokenizer, AutoModelForSequenceClassification.from_pretrained(final).eval()
    with torch.no_grad():
        naive = model(**tokenizer(prompts[0] + responses[0], return_tensors="pt")).logits[0, 0].item()
    assert abs(naive - expected[0].item()) > 1e-3  # without the EOS the model is read elsewhere
