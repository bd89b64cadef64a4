"""The four model roles load from any checkpoint folder; LoRA trains adapters only; final/ is plain transformers."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.engine import read_metrics
from preftune.models.loading import ModelConfig, load_policy, load_reference, load_scalar_model
from preftune.trainers.sft import SFTTrainer
from tests.integration.sft_helpers import sft_config


def test_reference_is_frozen_and_in_eval_mode(tiny_base):
    reference = load_reference(tiny_base)
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())


def test_scalar_model_reads_the_score_at_the_last_real_token(tiny_base):
    model = load_scalar_model(tiny_base)
    assert model.config.num_labels == 1
    pad = model.config.pad_token_id
    ids = torch.tensor([[0, 5, 6, 7, pad, pad], [0, 5, 6, 7, 8, 9]])
    mask = (ids != pad).long()
    scores = model(input_ids=ids, attention_mask=mask).logits  # (2, 1)
    alone = model(input_ids=ids[:1, :4]).logits
    torch.testing.assert_close(scores[0], alone[0], rtol=1e-5, atol=1e-6)


def test_dtype_and_device_options_are_applied(tiny_base):
    model = load_policy(ModelConfig(model=tiny_base, dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    reference = load_reference(tiny_base, dtype="bfloat16", device="meta")
    assert {p.device.type for p in reference.parameters()} == {"meta"}
    scorer = load_scalar_model(tiny_base, device="meta")
    assert {p.device.type for p in scorer.parameters()} == {"meta"}


def test_missing_or_non_model_folder_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_policy(ModelConfig(model=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="no config.json"):
        load_policy(ModelConfig(model=str(tmp_path)))


def test_lora_sft_trains_adapters_only_and_final_is_merged(synth_world, tiny_base, tmp_path):
    config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / "lora"), max_steps=4)
    config.model.use_peft = True
    config.model.lora_r = 4
    trainer = SFTTrainer(config)
    trainable = [n for n, p in trainer.engine.unwrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    final = tmp_path / "lora" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed, "merging the trained adapter must change the base weights"


def test_bf16_mixed_precision_runs_on_cpu(synth_world, tiny_base, tmp_path):
    runs = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}"
        SFTTrainer(sft_config(tiny_base, str(synth_world["sft"]), str(out), max_steps=3, bf16=bf16)).train()
        runs[bf16] = torch.tensor([r["loss"] for r in read_metrics(out / "metrics.jsonl")])
    assert torch.isfinite(runs[True]).all()
    torch.testing.assert_close(runs[True], runs[False], rtol=0.05, atol=0.05)  # same run, lower precision
    assert not torch.equal(runs[True], runs[False]), "autocast had no effect: bf16 was ignored"


def test_conversational_sft_trains_through_the_chat_template(tiny_base, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Describe the garden {i}."},
                      {"role": "assistant", "content": "the garden is warm ."}]}
        for i in range(16)
    ]  # fmt: skip
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = sft_config(tiny_base, str(data), str(tmp_path / "chat"), max_steps=2)
    trainer = SFTTrainer(config)
    item = trainer.train_items[0]
    response = [t for t, m in zip(item.input_ids, item.loss_mask, strict=True) if m]
    assert trainer.tokenizer.decode(response) == "the garden is warm .</s>"
    trainer.train()
    losses = [r["loss"] for r in read_metrics(tmp_path / "chat" / "metrics.jsonl")]
    assert losses[1] < losses[0], "the same 16 chats twice: the second step must fit them better"


def test_fresh_run_refuses_an_output_dir_of_an_earlier_run(synth_world, tiny_base, tmp_path):
    out = str(tmp_path / "run")
    SFTTrainer(sft_config(tiny_base, str(synth_world["sft"]), out, max_steps=2, save_steps=1)).train()
    with pytest.raises(
        ValueError, match=r"already holds an earlier run \(checkpoints, final.*--resume true.*--overwrite"
    ):
        SFTTrainer(sft_config(tiny_base, str(synth_world["sft"]), out, max_steps=2))
    config = sft_config(tiny_base, str(synth_world["sft"]), out, max_steps=2, overwrite_output_dir=True)
    SFTTrainer(config).train()
    assert not (tmp_path / "run" / "checkpoints").exists()
    # a finished run without checkpoints is protected too, and nothing suggests resuming it
    with pytest.raises(ValueError, match="already holds an earlier run") as info:
        SFTTrainer(sft_config(tiny_base, str(synth_world["sft"]), out, max_steps=2))
    assert "--resume" not in str(info.value)


def test_resuming_a_finished_run_keeps_its_summary(synth_world, tiny_base, tmp_path):
    out = tmp_path / "run"
    first = SFTTrainer(
        sft_config(tiny_base, str(synth_world["sft"]), str(out), max_steps=3, save_steps=3)
    ).train()
    again = SFTTrainer(
        sft_config(tiny_base, str(synth_world["sft"]), str(out), max_steps=3, save_steps=3, resume=True)
    ).train()
    assert again["final_metrics"] == first["final_metrics"]
    state = json.loads((out / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert again["wall_seconds"] >= state["wall_seconds"] > 0, "wall time must span the interruption"


def test_lora_checkpoints_hold_only_the_adapters(synth_world, tiny_base, tmp_path):
    from safetensors.torch import load_file

    config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / "lora"), max_steps=2, save_steps=2)
    config.model.use_peft = True
    SFTTrainer(config).train()
    saved = load_file(str(tmp_path / "lora" / "checkpoints" / "step-2" / "model.safetensors"))
    assert saved and all("lora_" in name for name in saved)


def test_tensorboard_tracker_through_accelerate(synth_world, tiny_base, tmp_path):
    pytest.importorskip("tensorboard")
    config = sft_config(tiny_base, str(synth_world["sft"]), str(tmp_path / "tb"), max_steps=2)
    config.train.report_to = ["tensorboard"]
    SFTTrainer(config).train()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*")), (
        "accelerate's tensorboard tracker wrote nothing"
    )


def test_make_tiny_is_reproducible(synth_world, tmp_path):
    from preftune.data import load_rows
    from preftune.models.tiny import make_tiny, texts_of_row

    rows = load_rows(str(synth_world["sft"])).rows
    paths = [make_tiny((t for r in rows for t in texts_of_row(r)), tmp_path / n, seed=3) for n in "ab"]
    paths.append(make_tiny((t for r in rows for t in texts_of_row(r)), tmp_path / "c", seed=4))
    tokenizers = [AutoTokenizer.from_pretrained(p) for p in paths]
    assert tokenizers[0].get_vocab() == tokenizers[1].get_vocab()
    weights = [AutoModelForCausalLM.from_pretrained(p).state_dict() for p in paths]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0]), "the seed must matter"


def test_a_new_score_head_is_one_plain_log_line_not_a_coloured_report(tiny_base, caplog, capfd):
    import logging

    with caplog.at_level(logging.INFO, logger="preftune"):
        load_scalar_model(tiny_base, pad_token_id=0)
    captured = capfd.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert "LOAD REPORT" not in everything and "\x1b[" not in everything and "not sharded" not in everything
    assert "new score head ['score.weight'], randomly initialised" in caplog.text
