"""Every YAML recipe under configs/ is a valid config of the command its folder is named after."""

from pathlib import Path

import pytest

from preftune.cli import COMMANDS
from preftune.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))


def test_recipes_are_found():
    assert len(RECIPES) == 27, [str(p.relative_to(CONFIGS)) for p in RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_is_valid_and_documented(path):
    command = path.relative_to(CONFIGS).parts[0]
    assert command in COMMANDS, f"{path}: folder must be a command name"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"preftune {command}" in first, (
        "first line: what it trains + the command"
    )
    config_cls, _ = COMMANDS[command].load()
    load_config(config_cls, path)
