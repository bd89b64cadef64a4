"""Config dataclasses <-> YAML <-> flags (preftune/config.py)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from preftune.config import (
    build_parser,
    config_to_flat_dict,
    field_docs,
    flat_field_names,
    load_config,
    parse_config,
    save_config,
)


@dataclass
class ToyModel:
    model: str = "tiny"
    """Checkpoint to train (a group field may share its name with one of its leaves)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the weights are loaded in."""
    attn_implementation: str | None = None
    """Attention kernel; None lets transformers choose."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get LoRA adapters."""


@dataclass
class ToyTrain:
    learning_rate: float = 1e-4
    """Peak learning rate, reached at 100% of warmup."""
    max_steps: int | None = None
    """Optimizer steps to run; None runs whole epochs."""
    bf16: bool = False
    """bfloat16 mixed precision."""
    log_completions: bool = True
    """Log sampled completions."""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")


@dataclass
class ToyConfig:
    model: ToyModel = field(default_factory=ToyModel)
    train: ToyTrain = field(default_factory=ToyTrain)
    beta: float = 0.1
    """Weight of the KL anchor to the reference policy."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """Pairwise objective."""
    output_dir: Path = Path("out")
    """Where outputs go."""
    mix_weights: list[float] = field(default_factory=lambda: [1.0])
    """Sampling weight of each dataset."""


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def exit_code_and_stderr(capsys, config_cls, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        parse_config(config_cls, argv, prog="preftune toy")
    return exc.value.code, capsys.readouterr().err


def test_no_arguments_gives_the_defaults():
    assert parse_config(ToyConfig, [], prog="preftune toy") == ToyConfig()


def test_flat_field_names_expand_groups_in_order():
    assert flat_field_names(ToyConfig) == [
        "model",
        "dtype",
        "attn_implementation",
        "lora_target_modules",
        "learning_rate",
        "max_steps",
        "bf16",
        "log_completions",
        "beta",
        "loss_type",
        "output_dir",
        "mix_weights",
    ]


def test_precedence_default_then_yaml_then_cli(tmp_path):
    path = write(tmp_path, "beta: 0.2\nlearning_rate: 0.001\nloss_type: ipo\n")
    cfg = parse_config(ToyConfig, ["--beta", "0.3", "--config", str(path)], prog="preftune toy")
    assert cfg.beta == 0.3  # CLI beats YAML, even when written before --config
    assert cfg.train.learning_rate == 0.001  # YAML beats the default
    assert cfg.loss_type == "ipo"
    assert cfg.model == ToyModel() and cfg.train.max_steps is None  # untouched defaults


def test_later_yaml_files_override_earlier_ones(tmp_path):
    first = write(tmp_path, "beta: 0.2\nmax_steps: 5\n", "a.yaml")
    second = write(tmp_path, "beta: 0.4\n", "b.yaml")
    cfg = parse_config(ToyConfig, ["--config", str(first), "--config", str(second)], prog="p")
    assert (cfg.beta, cfg.train.max_steps) == (0.4, 5)


def test_dashes_are_accepted_in_flags_and_yaml_keys(tmp_path):
    path = write(tmp_path, "max-steps: 4\nloss-type: hinge\n")
    cfg = parse_config(ToyConfig, ["--config", str(path), "--learning-rate", "0.5"], prog="p")
    assert (cfg.train.learning_rate, cfg.train.max_steps, cfg.loss_type) == (0.5, 4, "hinge")


def test_yaml_values_are_converted_like_flags(tmp_path):
    text = (
        "learning_rate: 1e-4\n"  # PyYAML reads this as a string
        "bf16: true\nlog_completions: false\nmax_steps: 7\n"
        "lora_target_modules: [q_proj, v_proj]\nmix_weights: []\n"
        "attn_implementation: null\noutput_dir: runs/x\n"
    )
    assert yaml.safe_load(text)["learning_rate"] == "1e-4"
    cfg = load_config(ToyConfig, write(tmp_path, text))
    assert isinstance(cfg.train.learning_rate, float) and cfg.train.learning_rate == 1e-4
    assert cfg.train.bf16 is True and cfg.train.log_completions is False and cfg.train.max_steps == 7
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.mix_weights == []
    assert cfg.model.attn_implementation is None and cfg.output_dir == Path("runs/x")


def test_cli_bools_lists_and_null():
    argv = ["--bf16", "--no_log_completions", "--max_steps", "3", "--lora_target_modules", "q", "k"]
    argv += ["--mix_weights", "0.5", "-1.5", "--attn_implementation", "sdpa"]
    cfg = parse_config(ToyConfig, argv, prog="p")
    assert cfg.train.bf16 is True and cfg.train.log_completions is False and cfg.train.max_steps == 3
    assert cfg.model.lora_target_modules == ["q", "k"] and cfg.mix_weights == [0.5, -1.5]
    assert cfg.model.attn_implementation == "sdpa"
    cfg = parse_config(ToyConfig, ["--bf16", "false", "--max_steps", "null"], prog="p")
    assert cfg.train.bf16 is False and cfg.train.max_steps is None


def test_unknown_yaml_key_suggests_the_closest_name(tmp_path):
    path = write(tmp_path, "betta: 0.2\n")
    with pytest.raises(ValueError, match=r"Unknown key 'betta' in .*cfg\.yaml\. Did you mean 'beta'\?"):
        load_config(ToyConfig, path)


def test_unknown_yaml_key_is_a_clean_cli_error(tmp_path, capsys):
    path = write(tmp_path, "learning_rat: 0.2\n")
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--config", str(path)])
    assert code == 2
    assert "Unknown key 'learning_rat'" in err and "Did you mean 'learning_rate'?" in err


def test_unknown_cli_flag_suggests_the_closest_flag(capsys):
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--learning-rat", "1e-4"])
    assert code == 2
    assert "Unknown flag '--learning-rat'. Did you mean '--learning_rate'?" in err
    assert "--help" in err


def test_prefixes_of_flags_are_not_accepted(capsys):
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--learning", "1e-4"])
    assert code == 2 and "Unknown flag '--learning'" in err


def test_extra_value_after_a_scalar_flag_is_an_error(capsys):
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--beta", "0.1", "0.2"])
    assert code == 2 and "Unexpected argument '0.2'" in err


def test_nested_yaml_is_rejected_with_the_flat_key(tmp_path):
    path = write(tmp_path, "train:\n  learning_rate: 0.001\n")
    with pytest.raises(ValueError, match="flat") as exc:
        load_config(ToyConfig, path)
    assert "learning_rate: 0.001" in str(exc.value)


def test_yaml_type_error_names_the_key_and_file(tmp_path):
    path = write(tmp_path, "learning_rate: abc\n")
    with pytest.raises(ValueError, match=r"'learning_rate' in .*cfg\.yaml.*invalid float value: 'abc'"):
        load_config(ToyConfig, path)


def test_yaml_null_for_a_non_optional_field_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'beta' in .* is null, but beta is not optional"):
        load_config(ToyConfig, write(tmp_path, "beta: null\n"))


def test_yaml_list_or_mapping_for_a_scalar_field_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'beta' in .* takes a single value"):
        load_config(ToyConfig, write(tmp_path, "beta: [0.1, 0.2]\n"))
    with pytest.raises(ValueError, match="'beta' in .* not a mapping"):
        load_config(ToyConfig, write(tmp_path, "beta: {a: 1}\n"))


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="mapping of flat keys"):
        load_config(ToyConfig, write(tmp_path, "- beta\n"))


def test_literal_choices_are_enforced(tmp_path, capsys):
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--loss_type", "nope"])
    assert code == 2 and "invalid choice: 'nope'" in err
    with pytest.raises(ValueError, match="'dtype' in .*invalid choice: 'int8'"):
        load_config(ToyConfig, write(tmp_path, "dtype: int8\n"))


def test_post_init_errors_surface(tmp_path, capsys):
    code, err = exit_code_and_stderr(capsys, ToyConfig, ["--learning_rate", "-1"])
    assert code == 2 and "learning_rate must be > 0, got -1.0." in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match=r"learning_rate must be > 0, got 0\.0\."):
        load_config(ToyConfig, write(tmp_path, "learning_rate: 0\n"))


@dataclass
class NeedsDataset:
    dataset: str
    """Training data."""
    seed: int = 0
    """Random seed."""


def test_required_fields_come_from_yaml_or_flags(tmp_path, capsys):
    code, err = exit_code_and_stderr(capsys, NeedsDataset, [])
    assert code == 2 and "Missing required setting(s): dataset" in err
    assert load_config(NeedsDataset, write(tmp_path, "dataset: d.jsonl\n")).dataset == "d.jsonl"
    assert parse_config(NeedsDataset, ["--dataset", "x"], prog="p") == NeedsDataset("x")


def test_save_config_round_trips_through_parse_config(tmp_path):
    cfg = ToyConfig(
        model=ToyModel(
            model="ckpt/policy", dtype="bfloat16", attn_implementation="sdpa", lora_target_modules=[]
        ),
        train=ToyTrain(learning_rate=3e-7, max_steps=12, bf16=True, log_completions=False),
        beta=0.05,
        loss_type="hinge",
        output_dir=Path("runs/dpo"),
        mix_weights=[0.25, -0.75, 1e-10],
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert path.read_text().startswith("# ")
    assert parse_config(ToyConfig, ["--config", str(path)], prog="p") == cfg
    assert load_config(ToyConfig, path) == cfg
    save_config(ToyConfig(), path)  # defaults too: None values, True bools
    assert load_config(ToyConfig, path) == ToyConfig()


def test_config_to_flat_dict_is_plain_yaml():
    flat = config_to_flat_dict(ToyConfig())
    assert list(flat) == flat_field_names(ToyConfig)
    assert flat["output_dir"] == "out" and flat["learning_rate"] == 1e-4 and flat["max_steps"] is None
    assert yaml.safe_load(yaml.safe_dump(flat)) == flat


@dataclass
class SeedA:
    seed: int = 0
    """Seed of A."""


@dataclass
class SeedB:
    seed: int = 1
    """Seed of B."""


@dataclass
class Clashing:
    a: SeedA = field(default_factory=SeedA)
    b: SeedB = field(default_factory=SeedB)


def test_leaf_name_clash_is_detected_when_the_parser_is_built():
    with pytest.raises(TypeError, match=r"'seed' is both Clashing\.a\.seed and Clashing\.b\.seed"):
        build_parser(Clashing)
    with pytest.raises(TypeError, match="clash"):
        parse_config(Clashing, [], prog="p")


@dataclass
class Inner:
    kl_coef: float = 0.05
    """KL penalty coefficient."""


@dataclass
class Middle:
    inner: Inner = field(default_factory=Inner)
    gamma: float = 1.0
    """Discount."""


@dataclass
class Outer:
    middle: Middle = field(default_factory=Middle)
    seed: int = 0
    """Seed."""


@dataclass
class Optionals:
    tags: list[str] | None = None
    """Tags, or None for no filtering."""
    flag: bool | None = None
    """Tri-state switch."""
    mode: Literal["a", "b"] | None = None
    """Mode, or None for automatic."""
    prefix: str = "x"
    """Text prepended to prompts."""


def test_null_sets_optional_lists_bools_and_literals_to_none(tmp_path):
    cfg = parse_config(Optionals, ["--tags", "a", "--flag", "--mode", "b"], prog="p")
    assert cfg == Optionals(tags=["a"], flag=True, mode="b")
    cfg = parse_config(
        Optionals, ["--config", str(write(tmp_path, "tags: [a]\nflag: false\nmode: a\n"))], prog="p"
    )
    assert cfg == Optionals(tags=["a"], flag=False, mode="a")
    assert (
        parse_config(Optionals, ["--tags", "null", "--flag", "null", "--mode", "null"], prog="p")
        == Optionals()
    )
    assert load_config(Optionals, write(tmp_path, "tags: null\nflag: null\nmode: null\n")) == Optionals()


def test_values_starting_with_a_dash_round_trip(tmp_path):
    cfg = Optionals(prefix="-> ")
    save_config(cfg, tmp_path / "c.yaml")
    assert parse_config(Optionals, ["--config", str(tmp_path / "c.yaml")], prog="p") == cfg


def test_nested_groups_are_flattened(tmp_path):
    assert flat_field_names(Outer) == ["kl_coef", "gamma", "seed"]
    cfg = parse_config(Outer, ["--kl_coef", "0.2"], prog="p")
    assert cfg == Outer(middle=Middle(inner=Inner(kl_coef=0.2)))
    path = tmp_path / "o.yaml"
    save_config(cfg, path)
    assert load_config(Outer, path) == cfg


def test_help_shows_docstrings_defaults_and_groups(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(ToyConfig, ["--help"], prog="preftune toy")
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "Weight of the KL anchor to the reference policy. (default: 0.1)" in out
    assert "Peak learning rate, reached at 100% of warmup. (default: 0.0001)" in out
    assert "train:" in out and "model:" in out and "--config FILE.yaml" in out


def test_field_docs_reads_attribute_docstrings():
    assert field_docs(ToyTrain)["max_steps"] == "Optimizer steps to run; None runs whole epochs."
    assert "model" not in field_docs(ToyConfig)  # groups have no docstring here


@dataclass
class _WithMapping:
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})
    """Weight per name."""
    name: str = "x"
    """A name."""


def test_mapping_field_from_json_flag_and_yaml_mapping(tmp_path):
    assert parse_config(_WithMapping, []).weights == {"a": 1.0}
    assert parse_config(_WithMapping, ["--weights", '{"b": 2.5}']).weights == {"b": 2.5}
    path = tmp_path / "m.yaml"
    path.write_text("weights:\n  c: 3.0\n")
    assert load_config(_WithMapping, path).weights == {"c": 3.0}
    config = parse_config(_WithMapping, ["--weights", '{"d": 4}'])
    save_config(config, tmp_path / "back.yaml")
    assert load_config(_WithMapping, tmp_path / "back.yaml") == config


def test_mapping_field_rejects_non_object_json(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(_WithMapping, ["--weights", "[1, 2]"])
    assert exit_info.value.code == 2
    assert "--weights takes a JSON object" in capsys.readouterr().err


@dataclass
class ToyWithGroupDefaults:
    """A command whose groups start from its own defaults (like PPOConfig's TrainConfig(learning_rate=1e-5))."""

    model: ToyModel = field(default_factory=lambda: ToyModel(model="sft", lora_target_modules=["q_proj"]))
    train: ToyTrain = field(default_factory=lambda: ToyTrain(learning_rate=1e-6, max_steps=200))


def test_a_groups_default_instance_sets_the_flag_defaults(tmp_path):
    """Regression: flags used the group class's own defaults (1e-4), not the command's (1e-6)."""
    config = parse_config(ToyWithGroupDefaults, [])
    assert config.train.learning_rate == 1e-6 and config.train.max_steps == 200
    assert config.model.model == "sft" and config.model.lora_target_modules == ["q_proj"]
    assert config.model.dtype == "float32"  # fields the factory leaves alone keep the class default
    overridden = parse_config(ToyWithGroupDefaults, ["--learning_rate", "3e-4"])
    assert overridden.train.learning_rate == 3e-4 and overridden.train.max_steps == 200
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 5\n")
    assert load_config(ToyWithGroupDefaults, path).train.learning_rate == 1e-6
