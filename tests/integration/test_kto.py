"""KTO end to end on a tiny model: the first loss is lambda_y / 2, pairs split in two, z_ref from mismatched pairs."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from preftune.data import DataConfig, EncodedExample
from preftune.engine import TrainConfig, read_metrics
from preftune.losses.unpaired import kto_recommended_weights
from preftune.models.loading import ModelConfig, token_id
from preftune.trainers.kto import KTOTrainer, mismatched_examples
from preftune.trainers.kto_config import KTOConfig


def kto_config(model, data, output_dir, eval_data=None, model_options=None, **overrides) -> KTOConfig:
    own = {k: overrides.pop(k) for k in ("beta", "desirable_weight", "undesirable_weight", "ref_model")
           if k in overrides}  # fmt: skip
    split = overrides.pop("dataset_split", "train[:8]")  # 8 pairs = 16 examples = one batch, repeated
    train = {"output_dir": str(output_dir), "learning_rate": 1e-3, "per_device_train_batch_size": 16,
             "max_steps": 1, "logging_steps": 1, "disable_tqdm": True, **overrides}  # fmt: skip
    return KTOConfig(
        model=ModelConfig(model=model, **(model_options or {})),
        data=DataConfig(dataset=str(data), dataset_split=split, eval_dataset=eval_data, max_length=96),
        train=TrainConfig(**train),
        **own,
    )


def closed_form_first_loss(record, desirable_weight, undesirable_weight) -> float:
    """policy == reference: every logratio is 0 and z_ref = max(0, 0) = 0, so each row's loss is
    lambda_y * sigmoid(0) = lambda_y / 2, and the step's loss is their mean over the batch's rows."""
    n_d, n_u = record["count/desirable"], record["count/undesirable"]
    return (desirable_weight * n_d + undesirable_weight * n_u) / (2 * (n_d + n_u))


def write_unpaired(pairs_path, out_path, num_desirable, num_undesirable) -> None:
    """prompt/completion/label rows: the chosen response of the first pairs (true), the rejected of others."""
    pairs = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    rows = [{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs[:num_desirable]]
    rows += [
        {"prompt": p["prompt"], "completion": p["rejected"], "label": False} for p in pairs[:num_undesirable]
    ]
    out_path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_first_loss_is_half_the_class_weight_when_policy_equals_reference(synth_world, tiny_base, tmp_path):
    config = kto_config(
        tiny_base, synth_world["pairs"], tmp_path, desirable_weight=2.0, undesirable_weight=1.0
    )
    KTOTrainer(config).train()
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert first["count/desirable"] == first["count/undesirable"] == 8
    assert first["loss"] == pytest.approx(closed_form_first_loss(first, 2.0, 1.0), abs=1e-5)  # 0.75
    assert first["kl/reference_point"] == pytest.approx(0.0, abs=1e-5)
    for key in ("rewards/desirable", "rewards/undesirable", "rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-5)
    assert first["logps/desirable"] < 0 and first["logps/undesirable"] < 0


def test_paired_data_gives_two_examples_per_pair(synth_world, tiny_base, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="preftune"):
        trainer = KTOTrainer(kto_config(tiny_base, synth_world["pairs"], tmp_path))
    examples = trainer.train_examples
    assert len(examples) == 16 and sum(e.label for e in examples) == 8
    for chosen, rejected in zip(examples[::2], examples[1::2], strict=True):
        assert (chosen.label, rejected.label, chosen.row) == (True, False, rejected.row)
        P = chosen.example.num_prompt_tokens
        assert chosen.example.input_ids[:P] == rejected.example.input_ids[:P]
    assert (trainer.desirable_weight, trainer.undesirable_weight) == (1.0, 1.0)
    assert "8 pairs -> 16 KTO examples" in caplog.text


def test_training_on_a_fixed_set_lowers_the_loss(synth_world, tiny_base, tmp_path):
    eval_data = str(synth_world["eval_pairs"])
    summary = KTOTrainer(
        kto_config(tiny_base, synth_world["pairs"], tmp_path, eval_data, max_steps=6)
    ).train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # lambda = (1, 1) on balanced pairs
    assert records[-1]["loss"] < records[0]["loss"] - 0.03
    assert records[-1]["rewards/margins"] > 0  # desirable responses gain on undesirable ones
    for key in ("eval/loss", "eval/rewards/margins", "eval/kl/reference_point", "eval/count/desirable"):
        assert key in records[-1]
    assert summary["train_examples"] == 16 and summary["desirable_weight"] == 1.0
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert final.config.vocab_size > 0


def test_unpaired_file_with_unbalanced_classes_uses_recommended_weights(
    synth_world, tiny_base, tmp_path, caplog
):
    data = tmp_path / "unpaired.jsonl"
    write_unpaired(synth_world["pairs"], data, num_desirable=12, num_undesirable=4)
    config = kto_config(tiny_base, data, tmp_path / "run", dataset_split="train")
    with caplog.at_level(logging.INFO, logger="preftune"):
        trainer = KTOTrainer(config)
    weights = kto_recommended_weights(12, 4)  # lambda_D = (4/3) * 4/12 = 4/9: the ratio is 4/3
    assert (trainer.desirable_weight, trainer.undesirable_weight) == pytest.approx(weights)
    assert weights[0] == pytest.approx(4 / 9)
    assert "desirable_weight=0.4444, undesirable_weight=1" in caplog.text
    trainer.train()
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert (first["count/desirable"], first["count/undesirable"]) == (12, 4)
    assert first["loss"] == pytest.approx(closed_form_first_loss(first, *weights), abs=1e-5)


def test_zero_undesirable_weight_trains_on_desirable_examples_only(synth_world, tiny_base, tmp_path, caplog):
    weights = {"desirable_weight": 1.0, "undesirable_weight": 0.0}
    with caplog.at_level(logging.WARNING, logger="preftune"):
        KTOTrainer(kto_config(tiny_base, synth_world["pairs"], tmp_path, **weights)).train()
    assert "= inf, outside the paper's recommended [1, 4/3]" in caplog.text
    first = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(0.25, abs=1e-5)  # half the rows at 1/2, half at 0


def test_one_class_only_trains_with_a_warning(synth_world, tiny_base, tmp_path, caplog):
    data = tmp_path / "good_only.jsonl"
    write_unpaired(synth_world["pairs"], data, num_desirable=6, num_undesirable=0)
    with caplog.at_level(logging.WARNING, logger="preftune"):
        KTOTrainer(kto_config(tiny_base, data, tmp_path / "run", dataset_split="train", max_steps=2)).train()
    assert "only desirable examples (6)" in caplog.text
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-5) and "rewards/undesirable" not in records[0]


def test_adapter_disabled_reference_matches_a_frozen_copy(synth_world, tiny_base, tmp_path):
    runs = {}
    for use_peft in (False, True):
        options = {"use_peft": True, "lora_r": 4} if use_peft else None
        out = tmp_path / str(use_peft)
        weights = {"desirable_weight": 1.5, "undesirable_weight": 1.0}
        KTOTrainer(kto_config(tiny_base, synth_world["pairs"], out, model_options=options, **weights)).train()
        runs[use_peft] = read_metrics(out / "metrics.jsonl")[0]
    for key in ("loss", "kl/reference_point", "rewards/margins", "logps/desirable", "logps/undesirable"):
        assert runs[True][key] == pytest.approx(runs[False][key], abs=1e-5), key
    assert runs[True]["loss"] == pytest.approx(closed_form_first_loss(runs[True], 1.5, 1.0), abs=1e-5)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "True" / "final")
    assert not any("lora" in k for k in final.state_dict())


def test_gradient_accumulation_does_not_change_the_step(synth_world, tiny_base, tmp_path):
    """z_ref and the loss use global sums and counts over the step, so 1 x 16 and 2 x 8 take the same steps
    (that z_ref does not depend on the forward chunks is checked on a moved policy below)."""
    runs = []
    for batch, accumulation in ((16, 1), (8, 2)):
        out = tmp_path / f"{batch}x{accumulation}"
        options = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
        KTOTrainer(kto_config(tiny_base, synth_world["pairs"], out, max_steps=2, **options)).train()
        runs.append(read_metrics(out / "metrics.jsonl"))
    for key in ("loss", "kl/reference_point", "rewards/margins", "train/grad_norm"):
        a = torch.tensor([r[key] for r in runs[0]], dtype=torch.float64)
        b = torch.tensor([r[key] for r in runs[1]], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_run(synth_world, tiny_base, tmp_path):
    options = {"dataset_split": "train[:24]", "max_steps": 3, "save_steps": 2, "save_total_limit": 0}
    KTOTrainer(kto_config(tiny_base, synth_world["pairs"], tmp_path / "whole", **options)).train()
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for name in ("checkpoints/step-3", "final"):
        shutil.rmtree(tmp_path / "resumed" / name)
    (tmp_path / "resumed" / "summary.json").unlink()
    KTOTrainer(
        kto_config(tiny_base, synth_world["pairs"], tmp_path / "resumed", resume=True, **options)
    ).train()
    whole, resumed = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("whole", "resumed"))
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for want, got in zip(whole, resumed, strict=True):
        for key in ("loss", "kl/reference_point", "rewards/margins", "train/grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (want["step"], key)


def test_reference_point_matches_a_plain_forward_of_the_mismatched_pairs(synth_world, tiny_base, tmp_path):
    trainer = KTOTrainer(kto_config(tiny_base, synth_world["pairs"], tmp_path, per_device_train_batch_size=5))
    policy = trainer.accelerator.unwrap_model(trainer.model).model
    assert trainer.reference is not None
    reference = trainer.reference.model
    torch.manual_seed(0)
    with torch.no_grad():  # a noisy reference fits the data worse than the policy: z_ref > 0
        for param in reference.parameters():
            param.add_(0.02 * torch.randn_like(param))

    def logps(model, example: EncodedExample) -> float:
        ids = torch.tensor([example.input_ids])
        token_logps = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]  # (T-1,)
        return token_logps[example.num_prompt_tokens - 1 :].sum().item()  # position t predicts t + 1

    examples = trainer.train_examples[:11]  # 3 forward chunks of <= 5
    pairs = mismatched_examples([e.example for e in examples], 96, token_id(trainer.tokenizer, "bos"))
    with torch.no_grad():
        expected = sum(logps(policy, e) - logps(reference, e) for e in pairs)
    everything = range(len(examples))
    assert trainer.mismatched_logratio_sum(examples, everything).item() == pytest.approx(
        expected, rel=1e-4, abs=1e-4
    )
    # a share scores its positions of the pairs built over the whole batch (what one of two processes does)
    with torch.no_grad():
        first_part = sum(logps(policy, e) - logps(reference, e) for e in pairs[:6])
    assert trainer.mismatched_logratio_sum(examples, range(6)).item() == pytest.approx(
        first_part, rel=1e-4, abs=1e-4
    )
    z_ref = trainer.reference_point(examples, everything)
    assert expected > 0
    assert z_ref.item() == pytest.approx(expected / 11, rel=1e-4)


def test_mismatched_examples_take_the_next_response_to_another_prompt():
    def example(prompt, response, row):
        ids = prompt + response
        return EncodedExample(ids, [False] * len(prompt) + [True] * len(response), len(prompt), 0, row)

    BOS = 1
    examples = [example([BOS, 5], [7, 8], 1), example([BOS, 5], [9], 1), example([BOS, 6, 6, 6], [4], 2)]
    pairs = mismatched_examples(examples, max_length=5, bos_token_id=BOS)
    # 0 and 1 share the prompt (one pair's two halves): both take 2's response; 2 takes 0's.
    assert [p.input_ids for p in pairs] == [[BOS, 5, 4], [BOS, 5, 4], [BOS, 6, 6, 7, 8]]
    assert [p.num_prompt_tokens for p in pairs] == [2, 2, 3]  # 2: one prompt token dropped after BOS
    assert pairs[2].num_truncated == 1 and pairs[2].loss_mask == [False, False, False, True, True]
    same = [example([BOS, 5], [7], 1), example([BOS, 5], [9], 2)]
    assert [p.input_ids for p in mismatched_examples(same, 8, BOS)] == [[BOS, 5, 9], [BOS, 5, 7]]


def test_bad_settings_fail_before_models_load(synth_world, tiny_base, tmp_path, monkeypatch):
    pairs = synth_world["pairs"]
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_config(tiny_base, pairs, tmp_path, beta=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_config(tiny_base, pairs, tmp_path, beta=-0.1)
    with pytest.raises(ValueError, match="must be >= 0"):
        kto_config(tiny_base, pairs, tmp_path, desirable_weight=-1.0, undesirable_weight=1.0)
    with pytest.raises(ValueError, match="Set both desirable_weight and undesirable_weight"):
        kto_config(tiny_base, pairs, tmp_path, desirable_weight=2.0)
    with pytest.raises(ValueError, match="both 0"):
        kto_config(tiny_base, pairs, tmp_path, desirable_weight=0.0, undesirable_weight=0.0)
    with pytest.raises(ValueError, match="at least 2 examples per step"):
        kto_config(tiny_base, pairs, tmp_path, per_device_train_batch_size=1)
    import preftune.trainers.inputs as inputs_module  # where the trainers load the policy

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was validated")

    monkeypatch.setattr(inputs_module, "load_policy", must_not_load)
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "hi\\n", "completion": "there", "label": "yes"}\n')
    with pytest.raises(ValueError, match="field 'label'"):
        KTOTrainer(kto_config(tiny_base, data, tmp_path / "run", dataset_split="train"))
