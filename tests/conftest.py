"""Shared test fixtures (keep this file small)."""

from __future__ import annotations

import pytest

from preftune.models.tiny import train_tokenizer

_WORDS = "the quick brown fox jumps over a lazy dog hello world what is two plus two four sure sorry".split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (BOS on plain text, eos </s>, pad <pad>, chat template), trained in ms."""
    texts = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(1 + i % 9)) for i in range(300)]
    texts += [f"Human: question {i}?\n\nAssistant: answer {i}." for i in range(50)]
    return train_tokenizer(texts, vocab_size=512)


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory):
    """A small synthetic world on disk: sft.jsonl, pairs.jsonl, prompts, eval prompts."""
    from preftune.tasks import SynthConfig, write_task

    out = tmp_path_factory.mktemp("synth")
    return write_task(
        SynthConfig(
            out=str(out), num_sft=400, num_pairs=100, num_prompts=64, num_eval_prompts=16, num_eval_pairs=100
        )
    )


@pytest.fixture(scope="session")
def tiny_base(synth_world, tmp_path_factory):
    """A random-init tiny Llama + tokenizer trained on the synthetic SFT text (a folder path)."""
    from preftune.data import load_rows
    from preftune.models.tiny import make_tiny, texts_of_row

    texts = (t for row in load_rows(str(synth_world["sft"])).rows for t in texts_of_row(row))
    return str(make_tiny(texts, tmp_path_factory.mktemp("tiny") / "base", vocab_size=600, seed=0))


@pytest.fixture(scope="session")
def sft_model(synth_world, tiny_base, tmp_path_factory):
    """The tiny base after a short SFT (150 steps): it answers in the task's format, so gold rewards vary."""
    from preftune.data import DataConfig
    from preftune.engine import TrainConfig
    from preftune.models.loading import ModelConfig
    from preftune.trainers.sft import SFTTrainer
    from preftune.trainers.sft_config import SFTConfig

    out = tmp_path_factory.mktemp("sft_model")
    train = TrainConfig(output_dir=str(out), learning_rate=3e-3, per_device_train_batch_size=16, max_steps=150,
                        warmup_ratio=0.05, logging_steps=50, disable_tqdm=True)  # fmt: skip
    data = DataConfig(dataset=str(synth_world["sft"]), max_length=64)
    SFTTrainer(SFTConfig(model=ModelConfig(model=tiny_base), data=data, train=train)).train()
    return str(out / "final")


@pytest.fixture(scope="session")
def random_rm(tiny_base, tmp_path_factory):
    """A reward model with a random head on the tiny base: distinct responses get distinct scores, so
    RL advantages are not 0 and a ranking judge finds pairs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("random_rm") / "rm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
