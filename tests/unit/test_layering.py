"""Imports point one way (DESIGN.md section 1): a module may import its own layer or lower ones."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "preftune"
LAYERS = {
    "losses": 0,
    "ops": 0,
    "errors": 0,
    "stats": 0,
    "figures": 0,
    "config": 1,
    "data": 1,
    "models": 1,
    "tasks": 1,
    "rollout": 2,
    "judges": 2,
    "feedback": 2,
    "engine": 2,
    "trainers": 3,
    "eval": 3,
    "pipelines": 4,
    "cli": 4,
}
EXTERNAL_FOR_MATH = {"torch", "__future__", "math", "typing", "dataclasses", "collections"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_every_module_belongs_to_a_known_layer():
    unknown = {_layer_of(p) for p in PACKAGE.rglob("*.py")} - set(LAYERS) - {"__init__"}
    assert not unknown, f"add these to LAYERS in DESIGN order: {unknown}"


def test_imports_point_one_way():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        here = _layer_of(path)
        if here == "__init__":
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "preftune" or len(parts) < 2:
                continue
            target = parts[1]
            if target in ("cli", "pipelines") and here not in ("cli", "pipelines"):
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
            elif LAYERS.get(target, 0) > LAYERS[here]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name} (layer {target} is above {here})")
    assert not bad, "\n".join(bad)


def test_losses_and_ops_import_torch_only():
    bad = []
    for layer in ("losses", "ops"):
        for path in (PACKAGE / layer).rglob("*.py"):
            for name in _imports(path):
                root = name.split(".")[0]
                if (
                    root not in EXTERNAL_FOR_MATH
                    and not name.startswith(f"preftune.{layer}")
                    and root != "preftune"
                ):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
                if root == "preftune" and name.split(".")[1] not in ("losses", "ops"):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_trainers_and_evaluation_stand_side_by_side():
    """trainers/ and eval/ share a layer but not code: what both need (the hacking monitor) sits below them."""
    bad = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for layer, other in (("trainers", "eval"), ("eval", "trainers"))
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _imports(path)
        if name.startswith(f"preftune.{other}")
    ]
    assert not bad, "\n".join(bad)
