"""SFT end to end on a tiny random model: it learns, saves, reloads, resumes and stays exact."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.engine import TrainingDiverged, read_metrics
from preftune.models.loading import load_policy
from preftune.trainers.sft import SFTTrainer
from tests.integration.sft_helpers import sft_config

HH = Path(__file__).resolve().parents[2].parent / "shared/data/hh-rlhf-harmless/train.jsonl.gz"


def test_sft_trains_saves_and_final_model_generates(synth_world, tiny_base, tmp_path):
    config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / "run"), max_steps=12)
    config.data.eval_dataset = str(synth_world["sft"])
    config.train.eval_steps = 6
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_base).state_dict().items()}
    summary = SFTTrainer(config).train()

    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert [r["step"] for r in evals] == [6, 12]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert {"train/grad_norm", "train/learning_rate", "train/tokens_per_second", "train/epoch"} <= set(
        train[0]
    )
    assert train[-1]["loss"] < train[0]["loss"] - 0.5, "12 steps at lr 3e-3 should cut the loss clearly"
    assert (
        summary["steps"] == 12 and json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 12
    )
    assert "learning_rate: 0.003" in (tmp_path / "run" / "config.yaml").read_text()

    final = tmp_path / "run" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("Describe the garden.\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_gradient_accumulation_8x1_equals_1x8(synth_world, tiny_base, tmp_path):
    """One micro-batch of 8 and 8 micro-batches of 1 give the same steps (global token normalisation)."""
    losses = []
    for name, batch, accumulation in (("a", 8, 1), ("b", 1, 8)):
        config = sft_config(
            tiny_base,
            str(synth_world["sft"]),
            str(tmp_path / name),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=4,
        )
        SFTTrainer(config).train()
        losses.append([r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")])
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-5)


def test_packing_gives_the_same_loss_as_padding(synth_world, tiny_base, tmp_path):
    """Packed rows hold several examples and score them exactly as padded batches do."""
    losses = {}
    for packing in (False, True):
        config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / f"p{packing}"), max_steps=1)
        config.packing = packing
        config.data.max_length = 128
        config.data.eval_dataset = str(synth_world["sft"])
        trainer = SFTTrainer(config)
        if packing:
            assert len(trainer.train_items) < 400 / 3, "packing should put several examples in a row"
        losses[packing] = trainer.evaluate()["eval/loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_nan_guard_stops_with_a_clear_message_and_keeps_last_checkpoint(synth_world, tiny_base, tmp_path):
    config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / "nan"), max_steps=10, save_steps=2)
    model = load_policy(config.model)
    trainer = SFTTrainer(config, model=model)
    steps = trainer.engine.steps()

    def poisoned_steps():
        for i, micro in enumerate(steps):
            if i == 3:  # corrupt the weights before the 4th step
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            yield micro

    trainer.engine.steps = poisoned_steps
    with pytest.raises(TrainingDiverged, match=r"step 4: loss=nan.*last good checkpoint is .*step-2"):
        trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir())
    assert checkpoints == ["step-2"]


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF data not present")
def test_sft_on_real_hh_rlhf_chosen_dialogues(tmp_path):
    """The real data: chosen dialogues as plain SFT text, with a tokenizer trained on it."""
    from preftune.data import load_rows
    from preftune.models.tiny import make_tiny, texts_of_row

    rows = load_rows(str(HH)).rows[:300]
    base = make_tiny((t for r in rows for t in texts_of_row(r)), tmp_path / "base", vocab_size=1024)
    config = sft_config(str(base), str(HH), str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4)
    config.dataset_text_field = "chosen"
    config.data.max_length = 256
    trainer = SFTTrainer(config)
    assert len(trainer.train_items) == 1800
    trainer.train()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    ids = tokenizer("\n\nHuman: hi\n\nAssistant:", return_tensors="pt").input_ids
    assert (
        model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    )
