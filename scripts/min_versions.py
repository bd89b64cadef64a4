"""Print one pip pin per main dependency of pyproject.toml: its declared lower bound, `name==floor`.

Usage: python scripts/min_versions.py [--only NAME ...] [--torch SPEC]
  --only: pin only these dependencies (the others are left out, so pip takes the newest allowed);
  --torch: the spec to pin torch with instead of its floor (e.g. torch==2.13.0, a CPU wheel at hand).
scripts/check_min_versions.sh installs these pins in a fresh virtual environment and runs a smoke test.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if sys.version_info < (3, 11):
    raise SystemExit("scripts/min_versions.py reads pyproject.toml with tomllib: run it with Python >= 3.11.")

import tomllib  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def floors(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{name: lower bound} of [project].dependencies; a dependency without `>=` is an error."""
    with pyproject.open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    result = {}
    for dependency in dependencies:
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", dependency)
        if match is None:
            raise ValueError(
                f"{pyproject}: {dependency!r} has no '>=' lower bound; give every main dependency one."
            )
        result[match.group(1)] = match.group(2)
    return result


def pins(only: list[str] | None = None, torch_spec: str | None = None) -> list[str]:
    declared = floors()
    unknown = sorted(set(only or []) - set(declared))
    if unknown:
        raise ValueError(f"--only {unknown}: not main dependencies; choose from {sorted(declared)}.")
    chosen = [name for name in declared if not only or name in only]
    result = [
        torch_spec if name == "torch" and torch_spec else f"{name}=={declared[name]}" for name in chosen
    ]
    if torch_spec and "torch" not in chosen:
        result.append(torch_spec)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--torch", default=None)
    args = parser.parse_args(argv)
    print("\n".join(pins(args.only, args.torch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
