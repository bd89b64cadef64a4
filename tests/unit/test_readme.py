"""The README's two set-up commands, and CI running exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Set up") : readme.index("\n## ", readme.index("## Set up") + 1)]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)]


def test_the_readme_has_exactly_two_set_up_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("preftune demo") and "\n" not in commands[0]
    assert commands[1].endswith("pytest") and "\n" not in commands[1]


def test_ci_runs_the_readme_test_command_word_for_word():
    test_command = _setup_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f"{test_command!r} is not a line of .ci/run"
    assert not any(
        line.startswith(("pytest", "python -m pytest")) for line in ci_lines if line != test_command
    )
