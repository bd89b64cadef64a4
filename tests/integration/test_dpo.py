"""DPO family end to end on a tiny model: the first loss is log 2, fast path == padded, final loads plainly."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from preftune.data import DataConfig
from preftune.engine import TrainConfig, read_metrics
from preftune.losses.registry import LOSSES
from preftune.models.loading import ModelConfig
from preftune.trainers.dpo import DPOTrainer
from preftune.trainers.dpo_config import DPOConfig


def dpo_config(model, synth_world, output_dir, eval_data=False, model_options=None, **overrides) -> DPOConfig:
    own = {k: overrides.pop(k) for k in ("beta", "loss_type", "loss_weights", "prefix_sharing", "ref_model", "gamma", "label_smoothing",
               "f_divergence_type")
           if k in overrides}  # fmt: skip
    train = {"output_dir": str(output_dir), "learning_rate": 1e-3, "per_device_train_batch_size": 8,
             "max_steps": 3, "logging_steps": 1, "disable_tqdm": True, **overrides}  # fmt: skip
    # 8 pairs = one batch: every step sees the same pairs, so the loss must go down
    data = DataConfig(
        dataset=str(synth_world["pairs"]),
        dataset_split="train[:8]",
        eval_dataset=str(synth_world["eval_pairs"]) if eval_data else None,
        max_length=96,
    )
    return DPOConfig(
        model=ModelConfig(model=model, **(model_options or {})), data=data, train=TrainConfig(**train), **own
    )


@pytest.mark.parametrize("use_peft", [False, True], ids=["frozen-copy", "adapter-disabled"])
def test_first_loss_is_log_2_when_policy_equals_reference(synth_world, tiny_base, tmp_path, use_peft):
    options = {"use_peft": True, "lora_r": 4} if use_peft else None
    config = dpo_config(tiny_base, synth_world, tmp_path, model_options=options, eval_data=True, max_steps=6)
    trainer = DPOTrainer(config)
    assert trainer.evaluate()["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    trainer.train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert records[0]["logps/chosen"] == pytest.approx(records[0]["ref_logps/chosen"], abs=1e-4)
    assert records[-1]["loss"] < math.log(2) - 0.03  # the policy moves towards the chosen responses
    assert "eval/rewards/accuracies" in records[-1]
    assert records[-1]["eval/kl"] > 0  # the policy moved away from the reference
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in final.state_dict())


def test_prefix_sharing_trains_exactly_like_padded_batches(synth_world, tiny_base, tmp_path):
    runs = {}
    for sharing in (True, False):
        DPOTrainer(
            dpo_config(tiny_base, synth_world, tmp_path / str(sharing), prefix_sharing=sharing)
        ).train()
        runs[sharing] = read_metrics(tmp_path / str(sharing) / "metrics.jsonl")
    for key in ("loss", "rewards/margins", "logps/chosen", "train/grad_norm"):
        a = torch.tensor([r[key] for r in runs[True]], dtype=torch.float64)
        b = torch.tensor([r[key] for r in runs[False]], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert runs[True][-1]["train/num_tokens"] < runs[False][-1]["train/num_tokens"]


@pytest.mark.parametrize(
    ("loss_type", "first_loss"),
    [(["ipo"], (1 / (2 * 0.1)) ** 2), (["sigmoid", "sft"], None), (["simpo"], None)],
    ids=["ipo", "rpo", "simpo"],
)
def test_other_objectives_train_end_to_end(synth_world, tiny_base, tmp_path, loss_type, first_loss):
    DPOTrainer(dpo_config(tiny_base, synth_world, tmp_path, loss_type=loss_type, max_steps=4)).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    if first_loss is not None:  # IPO at policy == reference: (0 - 1/(2 beta))^2
        assert records[0]["loss"] == pytest.approx(first_loss, rel=1e-4)
    assert records[-1]["loss"] < records[0]["loss"]
    for name in loss_type:
        assert f"loss/{name}" in records[0]


def test_bad_settings_fail_before_models_load(synth_world, tiny_base, tmp_path):
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_config(tiny_base, synth_world, tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="Unknown loss_type 'dpo'"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["dpo"])
    with pytest.raises(ValueError, match="reference-free"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["simpo"], ref_model=tiny_base)
    with pytest.raises(ValueError, match="cdpo needs --label_smoothing"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["cdpo"])
    with pytest.raises(ValueError, match="exo_pair needs --label_smoothing"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["exo_pair"])
    with pytest.raises(ValueError, match="needs a reference"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["simpo"], f_divergence_type="js")
    with pytest.raises(ValueError, match="one weight per"):
        dpo_config(tiny_base, synth_world, tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_type_trains_and_starts_from_its_value_at_the_reference(
    synth_world, tiny_base, tmp_path, name
):
    smoothing = {"cdpo": 0.1, "exo_pair": 1e-3}.get(name, 0.0)  # the two that need label noise
    loss_type = ["sft", name] if name == "orpo" else [name]  # ORPO is its odds-ratio term plus the NLL
    config = dpo_config(
        tiny_base, synth_world, tmp_path, loss_type=loss_type, max_steps=2, label_smoothing=smoothing
    )
    DPOTrainer(config).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in records)
    spec = LOSSES[name]
    if spec.reference_free:
        return
    # policy == reference at step 1: every log-ratio is 0 (and BCO's shift, the mean reward, too)
    zeros = torch.zeros(8)
    params = {"label_smoothing": smoothing, "gamma": 0.5, "tau": 0.05, "delta": 0.0,
              "ref_chosen_logps": zeros, "ref_rejected_logps": zeros}  # fmt: skip
    expected, _ = spec.fn(zeros, zeros, 0.1, **{p: params[p] for p in spec.params})
    assert records[0]["loss"] == pytest.approx(expected.mean().item(), abs=1e-4)


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha"])
def test_f_divergences_start_at_log_2_and_train(synth_world, tiny_base, tmp_path, divergence):
    config = dpo_config(tiny_base, synth_world, tmp_path, max_steps=6)
    config.f_divergence_type = divergence
    DPOTrainer(config).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # f'(1) = 0: policy == reference
    assert records[-1]["loss"] < records[0]["loss"]


def test_ld_dpo_with_alpha_1_is_dpo_and_wpo_weights_are_logged(synth_world, tiny_base, tmp_path):
    plain = dpo_config(tiny_base, synth_world, tmp_path / "plain")
    DPOTrainer(plain).train()
    ld = dpo_config(tiny_base, synth_world, tmp_path / "ld")
    ld.ld_alpha = 1.0
    DPOTrainer(ld).train()
    a, b = read_metrics(tmp_path / "plain" / "metrics.jsonl"), read_metrics(tmp_path / "ld" / "metrics.jsonl")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    short = dpo_config(tiny_base, synth_world, tmp_path / "ld0")
    short.ld_alpha = 0.0  # only the shorter response's length counts: smaller magnitudes
    DPOTrainer(short).train()
    c = read_metrics(tmp_path / "ld0" / "metrics.jsonl")
    assert abs(c[0]["logps/chosen"]) + abs(c[0]["logps/rejected"]) < abs(a[0]["logps/chosen"]) + abs(
        a[0]["logps/rejected"]
    )
    wpo = dpo_config(tiny_base, synth_world, tmp_path / "wpo")
    wpo.use_weighting = True
    DPOTrainer(wpo).train()
    first = read_metrics(tmp_path / "wpo" / "metrics.jsonl")[0]
    assert 0 < first["wpo/weight"] <= 1
    assert first["loss"] == pytest.approx(math.log(2) * first["wpo/weight"], rel=1e-4)


def test_precomputed_reference_log_probs_are_cached_and_give_the_same_run(
    synth_world, tiny_base, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    live = dpo_config(tiny_base, synth_world, tmp_path / "live", eval_data=True)
    DPOTrainer(live).train()
    runs = []
    for name in ("first", "second"):
        config = dpo_config(tiny_base, synth_world, tmp_path / name, eval_data=True)
        config.precompute_ref_log_probs = True
        caplog.clear()
        with caplog.at_level("INFO", logger="preftune"):
            trainer = DPOTrainer(config)
        assert trainer.reference is None  # freed after precomputing
        assert ("read from" in caplog.text) == (name == "second")  # the second run reuses the file
        trainer.train()
        runs.append(read_metrics(tmp_path / name / "metrics.jsonl"))
    files = list((tmp_path / "cache" / "ref_logps").glob("*.safetensors"))
    assert len(files) == 2  # one per (reference, data): the train and the eval pairs
    expected = read_metrics(tmp_path / "live" / "metrics.jsonl")
    for run in runs:
        for key in ("loss", "ref_logps/chosen", "eval/loss"):
            values = [r[key] for r in run if key in r]
            assert values and values == pytest.approx([r[key] for r in expected if key in r], rel=1e-5)


def test_tr_dpo_with_full_mixup_keeps_the_reference_at_the_policy(synth_world, tiny_base, tmp_path):
    config = dpo_config(tiny_base, synth_world, tmp_path, max_steps=4)
    config.sync_ref_model, config.ref_model_mixup_alpha, config.ref_model_sync_steps = True, 1.0, 1
    DPOTrainer(config).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    # alpha = 1 copies the policy into the reference after every step, so every step starts at log 2
    assert [r["loss"] for r in records] == pytest.approx([math.log(2)] * 4, abs=1e-5)
    bad = dpo_config(tiny_base, synth_world, tmp_path)
    bad.precompute_ref_log_probs, bad.sync_ref_model = True, True
    with pytest.raises(ValueError, match="sync_ref_model updates a separate reference"):
        bad.__post_init__()  # the checks dataclass construction runs


def test_tr_dpo_mixes_each_weight_once_even_when_tied(synth_world, tiny_base, tmp_path):
    config = dpo_config(tiny_base, synth_world, tmp_path, max_steps=1)
    config.sync_ref_model, config.ref_model_mixup_alpha, config.ref_model_sync_steps = True, 0.5, 1
    trainer = DPOTrainer(config)
    assert trainer.reference is not None
    before = {n: p.detach().clone() for n, p in trainer.reference.causal_lm.named_parameters()}
    trainer.train()
    policy = dict(trainer.accelerator.unwrap_model(trainer.model).causal_lm.named_parameters())
    for name, value in trainer.reference.causal_lm.named_parameters():
        torch.testing.assert_close(value, 0.5 * before[name] + 0.5 * policy[name].detach())


def test_options_that_do_not_fit_the_loss_fail_early(synth_world, tiny_base, tmp_path):
    for overrides, message in [
        ({"loss_type": ["nca_pair"], "f_divergence_type": "js"}, "margin"),
        ({"loss_type": ["orpo"]}, "sft orpo"),
        ({"loss_type": ["ipo"], "label_smoothing": 0.1}, "not used by"),
        ({"loss_type": ["simpo"], "gamma": -1.0}, "gamma"),
        ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, -1.0]}, "loss_weights"),
    ]:
        with pytest.raises(ValueError, match=message):
            dpo_config(tiny_base, synth_world, tmp_path, **overrides)
    ld = dpo_config(tiny_base, synth_world, tmp_path, loss_type=["simpo"])
    ld.ld_alpha = 0.5
    with pytest.raises(ValueError, match="ld_alpha"):
        ld.__post_init__()


def _aggregated_pairs(synth_world, path):
    """The fixture's ratings aggregated by Dawid-Skene: one row per pair with weight and chosen_probability."""
    from preftune.data import load_rows
    from preftune.feedback.aggregate import aggregate_ratings, write_aggregated

    rows, _ = aggregate_ratings(load_rows(str(synth_world["pairs"])).rows, "dawid_skene")
    return write_aggregated(path, rows)


def test_soft_labels_are_per_pair_smoothing_and_train_with_weights(synth_world, tiny_base, tmp_path):
    from preftune.losses.pairwise import sigmoid_loss

    config = dpo_config(tiny_base, synth_world, tmp_path / "run", max_steps=3)
    data = DataConfig(dataset=str(_aggregated_pairs(synth_world, tmp_path / "agg.jsonl")), dataset_split="train[:8]",
                      max_length=96)  # fmt: skip
    config = dataclasses.replace(config, data=data)
    trainer = DPOTrainer(config)
    p = torch.tensor([pair.meta["chosen_probability"] for pair in trainer.train_pairs])
    assert len(set(p.tolist())) > 1 and all(pair.weight is not None for pair in trainer.train_pairs)
    logps, ref_logps, lengths = -torch.rand(16) * 10, -torch.rand(16) * 10, torch.ones(16)
    losses, _ = trainer.pair_losses(logps, ref_logps, lengths, p)
    expected, _ = sigmoid_loss(
        logps[:8] - ref_logps[:8], logps[8:] - ref_logps[8:], 0.1, label_smoothing=1 - p
    )
    torch.testing.assert_close(losses, expected)
    summary = trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # any soft label costs log 2 at z = 0
    assert records[-1]["loss"] < records[0]["loss"] and "label_noise" not in summary
    with pytest.raises(
        ValueError, match=r"'chosen_probability' column \(soft labels\), which \['ipo'\] cannot use"
    ):
        DPOTrainer(dataclasses.replace(config, loss_type=["ipo"]))


def test_label_noise_auto_sets_the_robust_flip_rate_and_records_it(synth_world, tiny_base, tmp_path):
    config = dpo_config(tiny_base, synth_world, tmp_path, loss_type=["robust"], max_steps=2)
    trainer = DPOTrainer(dataclasses.replace(config, data=DataConfig(dataset=str(synth_world["pairs"]), max_length=96),
                                             label_noise="auto"))  # fmt: skip
    trainer.train()
    record = json.loads((tmp_path / "summary.json").read_text())["label_noise"]
    assert 0.02 < record["flip_rate"] < 0.4  # about 24% of the panel's verdicts disagree with gold
    assert trainer.label_smoothing == record["label_smoothing"] == record["flip_rate"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # rDPO at z = 0 is log 2 for any eps


def test_final_evaluation_shows_its_progress(synth_world, tiny_base, tmp_path, capsys):
    # the held-out pass after the last step has its own bar: the training bar does not sit frozen at 100%
    config = dpo_config(
        tiny_base, synth_world, tmp_path / "o", eval_data=True, max_steps=1, disable_tqdm=False
    )
    config.data.eval_dataset_split = "train[:40]"
    DPOTrainer(config).train()
    err = capsys.readouterr().err
    assert "eval:   0%|          | 0/5" in err  # 40 pairs in batches of 8; cleared when done


def test_precompute_scores_with_the_policy_itself_and_copies_no_weights(
    synth_world, tiny_base, tmp_path, monkeypatch
):
    """With precomputed reference log-probs and no reference of its own, the policy before its first step is
    the reference: no second copy of the weights (benchmarks/memory_scaling.py), and the same run as with a
    separate frozen reference."""
    from preftune.trainers import dpo as dpo_module

    separate = dpo_config(tiny_base, synth_world, tmp_path / "separate", eval_data=True)
    separate.precompute_ref_log_probs = True
    DPOTrainer(
        separate,
        model=AutoModelForCausalLM.from_pretrained(tiny_base),
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_base),
    ).train()
    monkeypatch.setattr(dpo_module, "reference_for", lambda *args, **kwargs: pytest.fail("copied the policy"))
    own = dpo_config(tiny_base, synth_world, tmp_path / "own", eval_data=True)
    own.precompute_ref_log_probs = True
    trainer = DPOTrainer(own, model=AutoModelForCausalLM.from_pretrained(tiny_base))
    assert trainer.reference is None and not trainer.policy_is_reference
    trainable = [parameter.requires_grad for parameter in trainer.model.parameters()]
    assert trainable and all(trainable)  # scoring as the reference left the policy trainable
    trainer.train()
    expected = read_metrics(tmp_path / "separate" / "metrics.jsonl")
    got = read_metrics(tmp_path / "own" / "metrics.jsonl")
    for key in ("loss", "ref_logps/chosen", "ref_logps/rejected", "eval/loss"):
        values = [r[key] for r in got if key in r]
        assert values and values == pytest.approx([r[key] for r in expected if key in r], rel=1e-6)
