"""--gradient_checkpointing trades compute for activation memory and changes nothing else."""

import pytest
import torch

from preftune import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer, make_config
from preftune.engine import read_metrics
from preftune.models.loading import enable_gradient_checkpointing

STEPS = {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "disable_tqdm": True}


def _losses(folder) -> list[float]:
    return [record["loss"] for record in read_metrics(folder / "metrics.jsonl") if "loss" in record]


@pytest.mark.parametrize("use_peft", [False, True])
def test_checkpointed_dpo_and_sft_give_the_same_losses(synth_world, tiny_base, tmp_path, use_peft):
    for trainer_cls, config_cls, data in ((SFTTrainer, SFTConfig, "sft"), (DPOTrainer, DPOConfig, "pairs")):
        runs = {}
        for checkpointing in (False, True):
            out = tmp_path / f"{data}-{checkpointing}"
            trainer = trainer_cls(make_config(config_cls, model=tiny_base, dataset=str(synth_world[data]),
                                              output_dir=str(out), use_peft=use_peft,
                                              gradient_checkpointing=checkpointing, **STEPS))  # fmt: skip
            layers = trainer.accelerator.unwrap_model(trainer.model)
            flags = {
                m.gradient_checkpointing for m in layers.modules() if hasattr(m, "gradient_checkpointing")
            }
            assert flags == {checkpointing}, (data, flags)
            trainer.train()
            runs[checkpointing] = _losses(out)
        assert len(runs[True]) == 3 and runs[True] == pytest.approx(runs[False], rel=1e-5, abs=1e-6), data


def test_a_model_that_cannot_checkpoint_is_refused(tiny_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    model.supports_gradient_checkpointing = False
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        enable_gradient_checkpointing(model)
    with pytest.raises(ValueError, match="trains no transformers model"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_a_lora_run_saves_its_adapter_beside_the_merged_model(synth_world, tiny_base, tmp_path):
    """final/ is the merged model (plain transformers loads it); final/adapter/ is the adapter alone, which
    peft puts back on the base model to give the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dpo"
    DPOTrainer(make_config(DPOConfig, model=tiny_base, dataset=str(synth_world["pairs"]), output_dir=str(out),
                           use_peft=True, lora_r=4, learning_rate=1e-2, **STEPS)).train()  # fmt: skip
    final = out / "final"
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    adapter = final / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert (adapter / "adapter_model.safetensors").stat().st_size < (
        final / "model.safetensors"
    ).stat().st_size / 2
    ids = torch.tensor([[1, 5, 9, 14, 20, 33]])
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        from_adapter = PeftModel.from_pretrained(base, adapter).eval()(ids).logits
        torch.testing.assert_close(from_adapter, merged(ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(from_adapter, AutoModelForCausalLM.from_pretrained(tiny_base)(ids).logits)
