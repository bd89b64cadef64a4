"""The Python API takes objects: a model, a tokenizer, a `datasets.Dataset` or a list of rows stand in for the
config's paths, and the run is the one the paths give."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import preftune
from preftune import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer, make_config
from preftune.data import load_rows
from preftune.data.errors import DataError
from preftune.engine import read_metrics

STEPS = {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "disable_tqdm": True}


def _losses(folder) -> list[float]:
    return [record["loss"] for record in read_metrics(folder / "metrics.jsonl") if "loss" in record]


def test_dpo_with_a_model_object_and_a_dataset_is_the_run_the_paths_give(synth_world, tiny_base, tmp_path):
    pairs = str(synth_world["pairs"])
    DPOTrainer(make_config(DPOConfig, model=tiny_base, dataset=pairs, dataset_split="train[:40]",
                           eval_dataset=pairs, eval_dataset_split="train[40:48]", output_dir=str(tmp_path / "paths"),
                           **STEPS)).train()  # fmt: skip
    rows = load_rows(pairs).rows
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = DPOTrainer(
        args=make_config(DPOConfig, output_dir=str(tmp_path / "objects"), **STEPS),
        model=model,
        processing_class=AutoTokenizer.from_pretrained(tiny_base),
        train_dataset=datasets.Dataset.from_list(rows[:40]),
        eval_dataset=rows[40:48],  # a plain list of dicts
    )
    trainer.train()
    by_paths, by_objects = _losses(tmp_path / "paths"), _losses(tmp_path / "objects")
    assert len(by_objects) == 3 and by_objects == pytest.approx(by_paths, rel=1e-5, abs=1e-7)
    evals = [r for r in read_metrics(tmp_path / "objects" / "metrics.jsonl") if "eval/loss" in r]
    paths_evals = [r for r in read_metrics(tmp_path / "paths" / "metrics.jsonl") if "eval/loss" in r]
    assert evals[-1]["eval/loss"] == pytest.approx(paths_evals[-1]["eval/loss"], rel=1e-5)
    # the default reference is a copy taken before training: the object trained, the copy did not
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert trainer.reference is not None
    for name, value in trainer.reference.model.state_dict().items():
        torch.testing.assert_close(value, before[name])
    saved = (tmp_path / "objects" / "config.yaml").read_text()
    assert "<Dataset in memory, 40 rows>" in saved and "<list in memory, 8 rows>" in saved


def test_reward_model_object_trains_as_its_saved_folder_does(synth_world, tiny_base, tmp_path):
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    pairs = str(synth_world["pairs"])
    RewardTrainer(make_config(RewardConfig, model=str(tmp_path / "start"), dataset=pairs, dataset_split="train[:40]",
                              output_dir=str(tmp_path / "paths"), **STEPS)).train()  # fmt: skip
    dataset = datasets.Dataset.from_list(load_rows(pairs).rows[:40])
    RewardTrainer(args=make_config(RewardConfig, output_dir=str(tmp_path / "objects"), **STEPS), model=classifier,
                  processing_class=tokenizer, train_dataset=dataset).train()  # fmt: skip
    assert _losses(tmp_path / "objects") == pytest.approx(_losses(tmp_path / "paths"), rel=1e-5)
    with pytest.raises(TypeError, match="sequence classifier"):
        RewardTrainer(args=make_config(RewardConfig, output_dir=str(tmp_path / "lm"), **STEPS),
                      model=AutoModelForCausalLM.from_pretrained(tiny_base), processing_class=tokenizer,
                      train_dataset=dataset)  # fmt: skip


def test_sft_takes_a_dataset_dict_and_its_split(synth_world, tiny_base, tmp_path):
    rows = load_rows(str(synth_world["sft"])).rows[:32]
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:8])}
    )
    SFTTrainer(make_config(SFTConfig, model=tiny_base, dataset=str(synth_world["sft"]), dataset_split="train[:32]",
                           output_dir=str(tmp_path / "paths"), **STEPS)).train()  # fmt: skip
    SFTTrainer(args=make_config(SFTConfig, model=tiny_base, output_dir=str(tmp_path / "objects"), **STEPS),
               train_dataset=splits).train()  # fmt: skip
    assert _losses(tmp_path / "objects") == pytest.approx(_losses(tmp_path / "paths"), rel=1e-6)


def test_object_api_errors_say_what_to_pass(synth_world, tiny_base, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    config = make_config(DPOConfig, output_dir=str(tmp_path / "a"), **STEPS)
    with pytest.raises(ValueError, match="processing_class"):
        DPOTrainer(args=config, model=model, train_dataset=load_rows(str(synth_world["pairs"])).rows[:8])
    with pytest.raises(ValueError, match="--dataset is required"):
        DPOTrainer(args=make_config(DPOConfig, output_dir=str(tmp_path / "b")), model=model)
    with pytest.raises(DataError, match=r"row 2.*dict of columns"):
        DPOTrainer(args=make_config(DPOConfig, output_dir=str(tmp_path / "c")), model=model,
                   processing_class=AutoTokenizer.from_pretrained(tiny_base),
                   train_dataset=[{"prompt": "a", "chosen": "b", "rejected": "c"}, "not a row"])  # fmt: skip
    with pytest.raises(TypeError, match="Did you mean 'beta'"):
        make_config(DPOConfig, bta=0.1)
    sft = make_config(
        SFTConfig, model=tiny_base, dataset=str(synth_world["sft"]), output_dir=str(tmp_path / "d")
    )
    with pytest.raises(
        TypeError, match="SFTTrainer takes no ref_model, judge; it takes model, processing_class"
    ):
        SFTTrainer(args=sft, ref_model=model, judge=object())  # not quietly left unused
    with pytest.raises(TypeError, match="needs its config"):
        DPOTrainer(model=model)


def test_every_trainer_and_config_imports_from_the_top_level():
    for name in preftune.__all__:
        assert getattr(preftune, name) is not None, name
    for name in ("SFTTrainer", "RewardTrainer", "DPOTrainer", "KTOTrainer", "PPOTrainer", "RLOOTrainer",
                 "GRPOTrainer", "OnlineDPOTrainer"):  # fmt: skip
        assert name in preftune.__all__ and isinstance(getattr(preftune, name), type)
    with pytest.raises(AttributeError):
        preftune.NoSuchTrainer  # noqa: B018


def test_kto_with_objects_is_the_run_the_paths_give(synth_world, tiny_base, tmp_path):
    from preftune import KTOConfig, KTOTrainer

    pairs = str(synth_world["pairs"])
    KTOTrainer(make_config(KTOConfig, model=tiny_base, dataset=pairs, dataset_split="train[:24]",
                           output_dir=str(tmp_path / "paths"), **STEPS)).train()  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    KTOTrainer(args=make_config(KTOConfig, output_dir=str(tmp_path / "objects"), **STEPS), model=model,
               ref_model=AutoModelForCausalLM.from_pretrained(tiny_base),
               processing_class=AutoTokenizer.from_pretrained(tiny_base),
               train_dataset=load_rows(pairs).rows[:24]).train()  # fmt: skip
    by_paths, by_objects = _losses(tmp_path / "paths"), _losses(tmp_path / "objects")
    assert len(by_objects) == 3 and by_objects == pytest.approx(by_paths, rel=1e-5, abs=1e-7)


class _VowelJudge:
    """A pointwise judge object (any `score(prompts, responses)`): the share of vowels among the letters."""

    def score(self, prompts, responses) -> torch.Tensor:
        shares = []
        for text in responses:
            letters = [c for c in text.lower() if c.isalpha()]
            shares.append(sum(c in "aeiou" for c in letters) / max(len(letters), 1))
        return torch.tensor(shares)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["PPO", "RLOO", "OnlineDPO"])
def test_rl_trainers_with_objects_are_the_runs_the_paths_give(name, synth_world, tiny_base, tmp_path):
    trainer_class, config_class = getattr(preftune, f"{name}Trainer"), getattr(preftune, f"{name}Config")
    options = {"max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1, "disable_tqdm": True,
               "learning_rate": 1e-3, "max_new_tokens": 8, "max_length": 64, "judge": "custom",
               "reward_norm_samples": 8}  # fmt: skip
    if name != "PPO":
        options["num_generations"] = 2
    prompts = load_rows(str(synth_world["prompts"])).rows[:16]
    trainer_class(make_config(config_class, model=tiny_base, dataset=str(synth_world["prompts"]),
                              dataset_split="train[:16]", output_dir=str(tmp_path / "paths"), **options),
                  judge=_VowelJudge()).train()  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    # PPO's value model is always read from a folder: the run by paths started it from --model
    extra = {"value_model": tiny_base} if name == "PPO" else {}
    trainer = trainer_class(
        args=make_config(config_class, output_dir=str(tmp_path / "objects"), **options, **extra),
        model=model,
        processing_class=AutoTokenizer.from_pretrained(tiny_base),
        train_dataset=datasets.Dataset.from_list(prompts),
        judge=_VowelJudge(),
    )
    trainer.train()
    by_paths, by_objects = _losses(tmp_path / "paths"), _losses(tmp_path / "objects")
    assert len(by_objects) == 2 and by_objects == pytest.approx(by_paths, rel=1e-5, abs=1e-7)
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items())  # it trained
    for key, value in trainer.reference.model.state_dict().items():  # the reference: a copy from before
        torch.testing.assert_close(value, before[key])
    assert "<Dataset in memory, 16 rows>" in (tmp_path / "objects" / "config.yaml").read_text()


def test_ppo_with_a_model_object_and_no_value_model_path_says_what_to_pass(synth_world, tiny_base, tmp_path):
    config = make_config(preftune.PPOConfig, output_dir=str(tmp_path / "run"), judge="custom", max_length=64,
                         max_new_tokens=8, per_device_train_batch_size=4, max_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="--value_model PATH"):
        preftune.PPOTrainer(args=config, model=AutoModelForCausalLM.from_pretrained(tiny_base),
                            processing_class=AutoTokenizer.from_pretrained(tiny_base),
                            train_dataset=load_rows(str(synth_world["prompts"])).rows[:8], judge=_VowelJudge())  # fmt: skip
