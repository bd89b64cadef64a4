"""benchmarks/reproduce.py covers every section of benchmarks/RESULTS.md, with commands that exist."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _reproduce():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["reproduce"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_every_results_section_has_its_commands_in_reproduce():
    reproduce = _reproduce()
    headings = re.findall(r"^## (.+)$", (REPO / "benchmarks" / "RESULTS.md").read_text(), flags=re.M)
    assert len(headings) >= 17
    uncovered = [h for h in headings if not any(h.startswith(s.heading) for s in reproduce.SECTIONS)]
    assert uncovered == []
    keys = [s.key for s in reproduce.SECTIONS]
    assert len(keys) == len(set(keys))
    for section in reproduce.SECTIONS:
        assert any(h.startswith(section.heading) for h in headings), section.key
        for command in reproduce.commands_of(section, Path("/w")):
            for script in re.findall(r"benchmarks/(\w+\.py)", command):
                assert (REPO / "benchmarks" / script).is_file(), (section.key, script)
            assert "{" not in command, command  # every placeholder filled


def test_dry_run_prints_each_command_in_order_and_unknown_keys_are_refused():
    run = [sys.executable, "benchmarks/reproduce.py", "--dry_run", "--workdir", "/tmp/repro"]
    done = subprocess.run([*run, "--only", "audit_default_world"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"[audit_default_world] (cd {REPO}) preftune synth --out /tmp/repro/synth_default",
        f"[audit_default_world] (cd {REPO}) preftune audit /tmp/repro/synth_default/pairs.jsonl "
        "--output_dir /tmp/repro/audit_default",
    ]
    bad = subprocess.run([*run, "--only", "no_such"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown section" in bad.stderr
