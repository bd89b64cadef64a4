"""pyproject.toml's lower bounds: each one installable and working (scripts/check_min_versions.sh checks
that in a fresh environment; docs/dependencies.md records the run), and none below a version found broken."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

pytest.importorskip(
    "tomllib", reason="scripts/min_versions.py reads pyproject.toml with tomllib (Python >= 3.11)"
)
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("min_versions", ROOT / "scripts" / "min_versions.py")
assert _spec is not None and _spec.loader is not None
min_versions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(min_versions)
floors, pins = min_versions.floors, min_versions.pins

FOUND_BROKEN = {
    "peft": "0.17.1",  # imports transformers.HybridCache, removed in transformers 5 (0.17.0 too)
    "tokenizers": "0.22.0",  # needs huggingface-hub < 1, transformers 5.0 needs >= 1.3: not installable together
    "safetensors": "0.4.2",  # below what transformers 5.0 and accelerate 1.5 require (0.4.3)
    "tqdm": "4.66.2",  # below what datasets 3.0 requires (4.66.3)
}
"""The newest version of each dependency that does not work with preftune's other floors (issue 18)."""


def test_every_main_dependency_has_a_floor_above_the_versions_found_broken():
    declared = floors()
    assert {"torch", "transformers", "peft", "datasets", "accelerate"} <= set(declared)
    for name, broken in FOUND_BROKEN.items():
        assert Version(declared[name]) > Version(broken), f"{name}>={declared[name]} admits {broken}"


def test_this_environment_satisfies_the_floors():
    for name, floor in floors().items():
        installed = Version(version(name))
        assert Version(installed.base_version) >= Version(floor), f"{name} {installed} < {floor}"


def test_the_check_script_pins_each_floor_and_torch_as_told():
    declared = floors()
    assert pins() == [f"{name}=={floor}" for name, floor in declared.items()]
    assert pins(["peft"], "torch==2.13.0") == [f"peft=={declared['peft']}", "torch==2.13.0"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "min_versions.py"), "--only", "peft", "accelerate"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.split() == [f"peft=={declared['peft']}", f"accelerate=={declared['accelerate']}"]
