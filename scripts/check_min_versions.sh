#!/usr/bin/env bash
# Checks the lower bounds in pyproject.toml: installs preftune with every main dependency pinned to the
# lowest version its `>=` allows, in a fresh virtual environment, then imports every preftune module and
# runs `preftune demo --quick true` (synthetic data, tokenizer, SFT, reward model, DPO, PPO, RLOO, best-of-n,
# evaluation, report plots: every main dependency is used).
#
# Usage: scripts/check_min_versions.sh [VENV_DIR]            (default VENV_DIR: a new folder under /tmp)
#   TORCH_SPEC="torch==2.13.0" scripts/check_min_versions.sh   torch from another spec than its floor
#   ONLY="peft" scripts/check_min_versions.sh                  pin only these (space-separated) to their
#                                                              floor; the others get the newest allowed
#   SMOKE=import scripts/check_min_versions.sh                 only the imports, not the demo
#
# torch's floor from PyPI is a multi-GB CUDA build on Linux: where only a CPU wheel is at hand, pass it
# with TORCH_SPEC (on our CI machines, `torch==2.13.0` lies on disk). A dependency whose floor cannot be
# installed together with the others' floors makes pip stop with a resolution error: raise that floor.
# The findings of the last run are in docs/dependencies.md.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-$(mktemp -d /tmp/preftune-min-XXXXXX)}"
constraints="$venv/min-constraints.txt"
python3 -m venv "$venv"
# One pin per `name>=version` in [project].dependencies (scripts/min_versions.py).
python3 scripts/min_versions.py ${ONLY:+--only $ONLY} ${TORCH_SPEC:+--torch "$TORCH_SPEC"} > "$constraints"
echo "pinned: $(tr '\n' ' ' < "$constraints")"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$constraints" .
rm -rf build  # setuptools' in-tree build folder
"$venv/bin/python" -m pip list --format=freeze > "$venv/installed.txt"
grep -iE '^(torch|transformers|peft|datasets|accelerate|safetensors|tokenizers|pyyaml|rich|tqdm|numpy|pyarrow|packaging|matplotlib|huggingface.hub)==' "$venv/installed.txt"

cd "$venv"  # import the installed preftune, not this checkout
"$venv/bin/python" - <<'EOF'
import importlib
import pkgutil

import preftune

names = [m.name for m in pkgutil.walk_packages(preftune.__path__, "preftune.")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} preftune modules from {preftune.__file__}")
EOF
if [ "${SMOKE:-demo}" = "demo" ]; then
    "$venv/bin/preftune" demo --quick true --output_dir "$venv/demo"
    test -s "$venv/demo/summary.json"
fi
echo "OK: the declared lower bounds work ($venv)"
