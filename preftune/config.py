"""Config dataclasses <-> YAML files <-> command-line flags.

A command's config is a dataclass whose fields are plain values (str, int, float, bool, Path,
`X | None`, `Literal[...]`, `list[X]`) or groups: fields whose type is itself a dataclass
(`model: ModelConfig`, `train: TrainConfig`), composed rather than inherited; groups may nest.
Flags and YAML keys are flat: every plain field of the config and of its groups is one flag named
after the field (`--learning_rate 1e-4`, dashes accepted), so plain field names must be unique
across the whole config. Each field is documented by the string literal right under it; `--help`
shows that text.

Precedence is dataclass default < YAML (`--config FILE.yaml`, flat keys named like the flags) <
command-line flags. YAML values are turned into flag strings and parsed by the same parser as the
command line, so both are converted and checked identically; then every dataclass is built, which
runs its `__post_init__` validation. `null` (or `None`) sets an optional field to None.

The parser is transformers' `HfArgumentParser` fed with flat dataclasses generated from the
config's groups. Where it falls short we adjust its argparse actions after it builds them (see
`_adapt_action`): optional fields accept `null`, list flags accept zero values (so `[]` and
empty lists round-trip), and required fields are checked after YAML and flags are merged (so a
YAML file may supply them).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import difflib
import enum
import functools
import inspect
import itertools
import json
import math
import re
import textwrap
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser

__all__ = [
    "build_parser",
    "config_to_flat_dict",
    "config_to_yaml",
    "field_docs",
    "flat_field_names",
    "load_config",
    "parse_config",
    "save_config",
]

ConfigT = TypeVar("ConfigT")

NULL_STRINGS = ("null", "None")
"""Flag values that mean None for an optional field (YAML's `null` is written as `null`)."""
_RESERVED_NAMES = ("config", "help")
_EPILOG = (
    "Every flag can also be a key of the YAML file given with --config (flat keys, named like the "
    "flags); flags on the command line override it. Use 'null' to set an optional value to None."
)
# argparse's own test for "this token is a negative number, not a flag".
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class _Required:
    """Default of a field that has none: it must come from YAML or a flag."""

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One flag: a plain field of the config or of one of its groups."""

    name: str
    type: Any  # the resolved annotation
    field: dataclasses.Field
    group: tuple[str, ...]  # group field names from the config down, () for the config's own fields
    owner: type  # the dataclass that declares the field


class _ParseError(Exception):
    """An argparse error raised instead of exiting (while checking YAML values)."""


class _Parser(HfArgumentParser):
    """HfArgumentParser that can raise its errors instead of printing usage and exiting."""

    raise_errors = False

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise _ParseError(message)
        super().error(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is _REQUIRED:
            return (action.help or "") + " (required)"
        if action.default == "":
            return (action.help or "") + " (default: '')"
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# Reading the dataclasses


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal written right under the field (PEP 257 attribute docstring).

    Read once per class from its source with `ast`; inherited dataclass fields are included.
    Whitespace is collapsed to single spaces.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue  # no source (class built with exec or make_dataclass): its flags get no help text
        class_def = ast.parse(source).body[0]
        if not isinstance(class_def, ast.ClassDef):
            continue
        body = class_def.body
        for stmt, after in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


@functools.cache
def _init_fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """(field, resolved annotation) for each field of `cls` that `__init__` takes."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"Expected a dataclass type, got {cls!r}.")
    hints = get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def _is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) is dict or annotation is dict


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _without_none(annotation: Any) -> Any:
    if not _is_optional(annotation):
        return annotation
    rest = [a for a in get_args(annotation) if a is not type(None)]
    return rest[0] if len(rest) == 1 else annotation


@functools.cache
def _leaves(config_cls: type) -> tuple[_Leaf, ...]:
    """Every flag of `config_cls`, in field order, groups expanded in place.

    Raises TypeError (a programming error) when two plain fields share a name, when a field is
    named like a built-in flag, or when a field has a type flags cannot express.
    """
    leaves: list[_Leaf] = []
    declared_in: dict[str, str] = {}

    def visit(cls: type, group: tuple[str, ...], defaults: Any) -> None:
        """`defaults`: the group's default instance when its parent sets one (e.g. `train:
        TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-6))`), whose values
        then replace the group class's own field defaults."""
        for f, annotation in _init_fields(cls):
            where = ".".join((config_cls.__name__, *group, f.name))
            if _is_group(annotation):
                if defaults is not None:
                    child = getattr(defaults, f.name)
                elif f.default_factory is not dataclasses.MISSING:
                    child = f.default_factory()
                else:
                    child = None
                visit(annotation, (*group, f.name), child)
                continue
            if any(_is_group(arg) for arg in get_args(annotation)):
                raise TypeError(f"{where}: a group must be typed as a plain dataclass, got {annotation}.")
            if get_origin(_without_none(annotation)) in (tuple, set):
                raise TypeError(f"{where}: {annotation} cannot be a flag; use list[...] or a plain type.")
            if f.name in _RESERVED_NAMES:
                raise TypeError(f"{where}: '--{f.name}' is a built-in flag; rename the field.")
            if f.name in declared_in:
                raise TypeError(
                    f"Flag name clash: '{f.name}' is both {declared_in[f.name]} and {where}. Flags and "
                    f"YAML keys are flat, so field names must be unique across {config_cls.__name__} "
                    "and its groups; rename one."
                )
            declared_in[f.name] = where
            own = f if defaults is None else _with_default(f, getattr(defaults, f.name))
            leaves.append(_Leaf(f.name, annotation, own, group, cls))

    visit(config_cls, (), None)
    return tuple(leaves)


def _with_default(f: dataclasses.Field, value: Any) -> dataclasses.Field:
    """A copy of field `f` whose default is `value` (lists and dicts through a factory)."""
    if isinstance(value, list | dict):
        made = dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=f.metadata)
    else:
        made = dataclasses.field(default=value, metadata=f.metadata)
    new = cast(dataclasses.Field, made)  # field() is typed as returning the value, for class bodies
    new.name, new.type = f.name, f.type
    return new


def flat_field_names(config_cls: type) -> list[str]:
    """The flags (= YAML keys) of `config_cls`: its plain fields and those of its groups, in order."""
    return [leaf.name for leaf in _leaves(config_cls)]


# ---------------------------------------------------------------------------------------------
# The parser


def _flat_dataclass(config_cls: type, group: tuple[str, ...], leaves: list[_Leaf]) -> type:
    """A dataclass holding just `leaves`, with help text, as HfArgumentParser expects.

    We do not pass the group classes themselves: HfArgumentParser rewrites `field.type` in place on
    the classes it is given, and it has no way to read attribute docstrings.
    """
    specs = []
    for leaf in leaves:
        metadata = dict(leaf.field.metadata)
        doc = field_docs(leaf.owner).get(leaf.name)
        if doc is not None:
            metadata.setdefault("help", doc.replace("%", "%%"))  # argparse %-formats help strings
        if _is_mapping(leaf.type):
            # A mapping is one flag holding JSON (YAML gives a mapping, written as JSON for the parser).
            metadata["help"] = metadata.get("help", "") + " Given as JSON on the command line."
            default = leaf.field.default
            if leaf.field.default_factory is not dataclasses.MISSING:
                default = json.dumps(leaf.field.default_factory())
            spec = dataclasses.field(default=default, metadata=metadata)
            specs.append((leaf.name, str, spec))
            continue
        spec = dataclasses.field(
            default=leaf.field.default, default_factory=leaf.field.default_factory, metadata=metadata
        )
        specs.append((leaf.name, leaf.type, spec))
    namespace = {"_argument_group_name": ".".join(group)} if group else {}
    name = config_cls.__name__ + "".join(part.title() for part in group) + "Flags"
    return dataclasses.make_dataclass(name, specs, namespace=namespace, kw_only=True)


def _nullable(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    @functools.wraps(convert, updated=())  # keep the name argparse shows in "invalid float value"
    def convert_or_none(text: str) -> Any:
        return None if text in NULL_STRINGS else convert(text)

    return convert_or_none


def _adapt_action(action: argparse.Action, leaf: _Leaf) -> None:
    """Fill the gaps of HfArgumentParser (transformers 5.x) for one flag's argparse action."""
    # HfArgumentParser drops None from `X | None` and converts with X alone, so `null` (YAML's None)
    # would be an invalid int or an invalid choice: accept the null strings.
    if _is_optional(leaf.type):
        assert callable(action.type), "HfArgumentParser sets a converter on every field's flag"
        action.type = _nullable(action.type)
        if action.choices is not None:
            action.choices = [*action.choices, None]
        if _without_none(leaf.type) is bool and action.nargs is None:
            action.nargs, action.const = "?", True  # bare `--flag` means True, as for a plain bool
    # It gives lists nargs="+", so an empty list (YAML `[]`, or a saved empty list) has no spelling.
    if action.nargs == "+":
        action.nargs = "*"
    # It marks fields without a default required, which argparse checks before the YAML values and
    # the flags are merged; we check them ourselves after the merge (see `_assemble`).
    if action.required:
        action.required = False
        action.default = _REQUIRED


def build_parser(config_cls: type, prog: str | None = None) -> HfArgumentParser:
    """The argument parser for `config_cls`: one flag per plain field, in argument groups named
    after the group fields, plus `--config FILE.yaml` (repeatable; later files win).

    Raises TypeError if the config cannot be expressed as flat flags (e.g. two fields share a name).
    """
    return _make_parser(config_cls, prog)


def _make_parser(config_cls: type, prog: str | None) -> _Parser:
    leaves = _leaves(config_cls)
    by_group: dict[tuple[str, ...], list[_Leaf]] = {}
    for leaf in leaves:
        by_group.setdefault(leaf.group, []).append(leaf)
    flat_classes = [_flat_dataclass(config_cls, group, members) for group, members in by_group.items()]
    parser = _Parser(
        cast(list[Any], flat_classes),  # made by make_dataclass, which type checkers cannot see through
        prog=prog,
        # argparse's generated usage lists every flag, which buries error messages under it.
        usage="%(prog)s [-h] [--config FILE.yaml] [--FLAG VALUE ...]",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
        epilog=_EPILOG,
    )
    parser.add_argument(
        "--config",
        action="append",
        default=argparse.SUPPRESS,
        metavar="FILE.yaml",
        help="YAML file of settings, keys named like the flags. Repeatable: later files override "
        "earlier ones, and flags override all files.",
    )
    by_name = {leaf.name: leaf for leaf in leaves}
    for action in parser._actions:  # argparse has no public accessor for its actions
        leaf = by_name.get(action.dest)
        if leaf is None:
            continue
        if action.option_strings[0] != f"--{leaf.name}":  # the `--no_<name>` twin of a True bool
            action.help, action.default = f"Same as --{leaf.name} false.", argparse.SUPPRESS
            continue
        _adapt_action(action, leaf)
    return parser


def _long_flag_names(parser: argparse.ArgumentParser) -> list[str]:
    names = [s[2:].replace("-", "_") for a in parser._actions for s in a.option_strings if s.startswith("--")]
    return list(dict.fromkeys(names))


def _closest(name: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, candidates, n=1)
    return matches[0] if matches else None


def _unexpected_arguments_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    help_hint = f"Run '{parser.prog} --help' to list every flag."
    flag = next((token for token in extras if token.startswith("-")), None)
    if flag is None:
        return f"Unexpected argument '{extras[0]}': settings are flags (--name value). {help_hint}"
    flag = flag.split("=", 1)[0]
    match = _closest(flag.lstrip("-").replace("-", "_"), _long_flag_names(parser))
    suggestion = f" Did you mean '--{match}'?" if match else ""
    return f"Unknown flag '{flag}'.{suggestion} {help_hint}"


# ---------------------------------------------------------------------------------------------
# YAML -> flag strings


def _read_yaml(path: str | Path) -> dict[Any, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a mapping of flat keys (key: value), got a {type(data).__name__}.")
    return data


def _flatten(mapping: dict[Any, Any]) -> dict[Any, Any]:
    flat: dict[Any, Any] = {}
    for key, value in mapping.items():
        flat.update(_flatten(value) if isinstance(value, dict) else {key: value})
    return flat


def _flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _yaml_value_tokens(key: str, value: Any, leaf: _Leaf, path: str | Path) -> list[str]:
    """Flag strings for one YAML entry, e.g. ['--learning_rate=1e-4'] or ['--tags', 'a', 'b']."""
    if value is None and not _is_optional(leaf.type):
        raise ValueError(
            f"Key '{key}' in {path} is null, but {key} is not optional ({leaf.type}). Give a value, "
            "or remove the key to keep the default."
        )
    if not isinstance(value, list):
        return [f"--{key}={_flag_text(value)}"]  # `=` so a value starting with '-' is not read as a flag
    texts = []
    for item in value:
        text = _flag_text(item)
        if isinstance(item, (dict, list)):
            raise ValueError(f"Key '{key}' in {path}: list items must be plain values, got {item!r}.")
        if text.startswith("-") and not _NEGATIVE_NUMBER.match(text):
            # argparse would read such an item as a flag; a list flag has no escape for it.
            raise ValueError(f"Key '{key}' in {path}: list item {text!r} cannot start with '-'.")
        texts.append(text)
    return [f"--{key}", *texts]


def _yaml_tokens(config_cls: type, parser: _Parser, path: str | Path) -> list[str]:
    """The settings of one YAML file as flag strings, each entry checked with `parser`.

    Raises ValueError naming the key and the file for unknown keys (with the closest name), nested
    mappings and values the flag would reject.
    """
    leaves = {leaf.name: leaf for leaf in _leaves(config_cls)}
    tokens: list[str] = []
    seen: dict[str, Any] = {}
    for raw_key, value in _read_yaml(path).items():
        key = str(raw_key).replace("-", "_")
        if isinstance(value, dict) and key in leaves and _is_mapping(leaves[key].type):
            value = json.dumps(value)
        elif isinstance(value, dict) and key in leaves:
            raise ValueError(f"Key '{raw_key}' in {path} must be a single value or a list, not a mapping.")
        if isinstance(value, dict):
            flat = yaml.safe_dump(_flatten(value), sort_keys=False, default_flow_style=False)
            raise ValueError(
                f"Key '{raw_key}' in {path} holds a nested mapping, but config keys are flat: one key per "
                f"field, named like its flag, without group prefixes. Write instead, at the top level:\n"
                + textwrap.indent(flat, "  ")
            )
        if key not in leaves:
            match = _closest(key, list(leaves))
            suggestion = f" Did you mean '{match}'?" if match else ""
            raise ValueError(
                f"Unknown key '{raw_key}' in {path}.{suggestion} Keys are the flag names listed by --help."
            )
        if key in seen:
            raise ValueError(f"Key '{key}' appears twice in {path} ('{seen[key]}' and '{raw_key}').")
        seen[key] = raw_key
        key_tokens = _yaml_value_tokens(key, value, leaves[key], path)
        parser.raise_errors = True
        try:
            _, extras = parser.parse_known_args(key_tokens)
        except _ParseError as err:
            reason = str(err).split(": ", 1)[1] if str(err).startswith("argument ") else str(err)
            raise ValueError(f"Invalid value for key '{raw_key}' in {path}: {reason}") from None
        finally:
            parser.raise_errors = False
        if extras:
            raise ValueError(f"Key '{raw_key}' in {path} takes a single value, got {value!r}.")
        tokens += key_tokens
    return tokens


# ---------------------------------------------------------------------------------------------
# Namespace -> nested config


def _instantiate(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f, annotation in _init_fields(cls):
        if _is_group(annotation):
            kwargs[f.name] = _instantiate(annotation, values)
            continue
        value = values[f.name]
        if _is_mapping(annotation) and isinstance(value, str):
            value = _json_mapping(f.name, value)
        if value == [None] and _is_optional(annotation):
            value = None  # `--tags null` for a `list[str] | None` field
        kwargs[f.name] = value
    return cls(**kwargs)  # runs __post_init__, groups first


def _json_mapping(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--{name} takes a JSON object, e.g. '{{\"a\": 1}}'; got {text!r} ({err})."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name} takes a JSON object, got {text!r}.")
    return value


def _assemble(config_cls: type[ConfigT], namespace: argparse.Namespace) -> ConfigT:
    values = vars(namespace)
    missing = [leaf.name for leaf in _leaves(config_cls) if values[leaf.name] is _REQUIRED]
    if missing:
        raise ValueError(
            f"Missing required setting(s): {', '.join(missing)}. Pass --{missing[0]} VALUE, or set "
            "the key in the --config YAML."
        )
    for name, value in values.items():  # argparse's float() reads "inf" and "nan"; no setting takes them
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise ValueError(f"--{name} must be a finite number, got {value}.")
    return _instantiate(config_cls, values)


# ---------------------------------------------------------------------------------------------
# Public entry points


def parse_config(config_cls: type[ConfigT], argv: Sequence[str], prog: str | None = None) -> ConfigT:
    """Build `config_cls` from command-line arguments: defaults < `--config` YAML files < flags.

    Any problem in the user's input (unknown flag or key, bad value, failed `__post_init__` check,
    unreadable YAML) is reported argparse-style on stderr with exit code 2; `--help` exits with 0.
    """
    argv = list(argv)
    parser = _make_parser(config_cls, prog)
    namespace, extras = parser.parse_known_args(argv)  # command-line errors and --help stop here
    if extras:
        parser.error(_unexpected_arguments_message(parser, extras))
    yaml_tokens: list[str] = []
    for path in vars(namespace).get("config", []):  # absent (SUPPRESS) when no --config was given
        try:
            yaml_tokens += _yaml_tokens(config_cls, parser, path)
        except (ValueError, OSError) as err:
            parser.error(str(err))
    namespace, _ = parser.parse_known_args(yaml_tokens + argv)  # later values win: flags override YAML
    try:
        return _checked(_assemble(config_cls, namespace))
    except (ValueError, TypeError) as err:
        parser.error(str(err))


def make_config(config_cls: type[ConfigT], **settings: Any) -> ConfigT:
    """Build `config_cls` from flat settings named like its flags and YAML keys, e.g.
    `make_config(DPOConfig, model="models/smollm2", output_dir="runs/dpo", beta=0.1, max_steps=100)`:
    the command line's names and defaults, from Python. Unknown names are refused with the closest one.
    A trainer given objects (a model, a dataset) needs no `model` or `dataset` here."""
    leaves = {leaf.name: leaf for leaf in _leaves(config_cls)}
    unknown = [name for name in settings if name not in leaves]
    if unknown:
        close = _closest(unknown[0], list(leaves))
        hint = f" Did you mean {close!r}?" if close else ""
        raise TypeError(f"{config_cls.__name__} has no setting {unknown[0]!r}.{hint}")
    values: dict[str, Any] = {}
    for name, leaf in leaves.items():
        if name in settings:
            values[name] = settings[name]
        elif leaf.field.default_factory is not dataclasses.MISSING:
            values[name] = leaf.field.default_factory()
        elif leaf.field.default is not dataclasses.MISSING:
            values[name] = leaf.field.default
        else:
            raise TypeError(f"{config_cls.__name__} needs the setting {name!r}.")
    return _instantiate(config_cls, values)


def load_config(config_cls: type[ConfigT], path: str | Path) -> ConfigT:
    """Build `config_cls` from one YAML file (defaults < YAML), as `--config path` would.

    Raises ValueError for unknown keys, bad values and failed `__post_init__` checks, and
    FileNotFoundError when the file is missing.
    """
    parser = _make_parser(config_cls, None)
    tokens = _yaml_tokens(config_cls, parser, path)
    namespace, _ = parser.parse_known_args(tokens)  # every token was already checked
    return _checked(_assemble(config_cls, namespace))


def _checked(config: ConfigT) -> ConfigT:
    """`config` after its `check_run_inputs`, where it has one: the inputs a file-based run needs (a training
    config's --model, --dataset and --output_dir), which Python callers may give as objects instead."""
    check = getattr(config, "check_run_inputs", None)
    if check is not None:
        check()
    return config


def _plain(value: Any) -> Any:
    if hasattr(value, "column_names") or (
        isinstance(value, (list, tuple)) and value and all(isinstance(item, dict) for item in value)
    ):  # data given in memory (a datasets.Dataset, a list of rows) is named, not written out
        from preftune.data.io import describe_source

        return describe_source(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"Cannot write {value!r} ({type(value).__name__}) as a YAML config value.")


def config_to_flat_dict(config: Any) -> dict[str, Any]:
    """Flag name -> plain YAML-able value (Path and Enum as str, tuples as lists) for every flag."""
    if isinstance(config, type) or not dataclasses.is_dataclass(config):
        raise TypeError(f"Expected a config dataclass instance, got {config!r}.")
    flat = {}
    for leaf in _leaves(type(config)):
        owner = functools.reduce(getattr, leaf.group, config)
        flat[leaf.name] = _plain(getattr(owner, leaf.name))
    return flat


def config_to_yaml(config: Any) -> str:
    """The flat YAML text of `config`; passed back with `--config` it rebuilds the same config."""
    return yaml.safe_dump(
        config_to_flat_dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def save_config(
    config: Any, path: str | Path, header: str | None = None, leave_out: Sequence[str] = ()
) -> None:
    """Write `config` as flat YAML to `path` (parent folders created), under a comment `header`,
    without the flags named in `leave_out` (run-control flags such as `resume`, which must not replay)."""
    if header is None:
        header = (
            f"Resolved {type(config).__name__}: pass this file with --config to rerun with these settings."
        )
        if leave_out:
            header += f"\nNot saved (they say how a run starts): {', '.join(leave_out)}."
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    flat = {k: v for k, v in config_to_flat_dict(config).items() if k not in leave_out}
    text = yaml.safe_dump(flat, sort_keys=False, default_flow_style=False, allow_unicode=True)
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(comment + text, encoding="utf-8")
