"""Constitutions for `preftune cai`: principles with critique and revision requests, read from YAML.

Imports neither torch nor transformers: CAIConfig checks its --constitution with `load_constitution`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import yaml

BUILTIN = Path(__file__).parent / "constitutions"
"""The constitutions shipped with preftune, by file stem (`--constitution kindness`)."""


PLACEHOLDERS = {"critique": {"prompt", "response"}, "revision": {"prompt", "response", "critique"}}


@dataclass(frozen=True)
class Principle:
    name: str
    description: str
    critique: str
    """Critique request template ({prompt}, {response})."""
    revision: str
    """Revision request template ({prompt}, {response}, {critique})."""
    no_issue: str = ""
    """Text that, found in a critique, means the answer already follows the principle: it is then kept as
    its own revision (no revision is generated, and it yields no pair). Empty: always revise."""


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    source: str


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def load_constitution(source: str = "") -> Constitution:
    """Read and validate a constitution: a YAML path, or the name of a built-in one (default kindness)."""
    path = Path(source) if source else BUILTIN / "kindness.yaml"
    if source and not path.exists() and (BUILTIN / f"{source}.yaml").exists():
        path = BUILTIN / f"{source}.yaml"
    if not path.is_file():
        builtins = ", ".join(sorted(p.stem for p in BUILTIN.glob("*.yaml")))
        raise ValueError(
            f"--constitution {source!r}: no such file, nor a built-in constitution ({builtins})."
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    fix = "see docs/cai.md for the format (name, principles: [{name, description, critique, revision}])"
    if not isinstance(raw, dict) or not isinstance(raw.get("principles"), list) or not raw["principles"]:
        raise ValueError(f"{path}: a constitution needs a non-empty 'principles' list; {fix}.")
    principles = []
    for i, item in enumerate(raw["principles"]):
        where = f"{path}: principles[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a mapping; {fix}.")
        unknown = sorted(set(item) - {"name", "description", "critique", "revision", "no_issue"})
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; {fix}.")
        for key in ("critique", "revision"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"{where}.{key} must be a non-empty request template; {fix}.")
            try:
                names = _placeholders(item[key])
            except ValueError as error:
                raise ValueError(
                    f"{where}.{key} is not a valid template ({error}); write literal braces as {{{{ }}}}."
                ) from None
            if names - PLACEHOLDERS[key]:
                raise ValueError(
                    f"{where}.{key} uses unknown placeholders {sorted(names - PLACEHOLDERS[key])}; it may use "
                    f"{sorted(PLACEHOLDERS[key])}."
                )
            if "response" not in names:
                raise ValueError(f"{where}.{key} must contain {{response}}, the answer it is about.")
        principles.append(
            Principle(
                name=str(item.get("name") or f"principle-{i}"),
                description=str(item.get("description") or ""),
                critique=item["critique"],
                revision=item["revision"],
                no_issue=str(item.get("no_issue") or ""),
            )
        )
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: principle names must be unique, got {names}.")
    return Constitution(str(raw.get("name") or path.stem), tuple(principles), str(path))
