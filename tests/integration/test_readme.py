"""Every command the README shows runs as written (at small size), in the README's order.

The commands are read from the README's ```bash blocks: continuation lines are joined and comments
dropped. A line with `...` is the nearest command above it with the same subcommand (else the one
just above), with the new settings appended and a fresh --output_dir unless it resumes. Only size
settings are appended to each command (SMALL), so that the whole walk takes minutes; every path,
file and flag is the README's own. The set-up commands (pip, pytest, the demo) are checked by
tests/unit/test_readme.py and tests/integration/test_demo.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

SMALL: dict[str, list[str]] = {
    "synth": ["--num_sft", "600", "--num_pairs", "160", "--num_eval_pairs", "40", "--num_prompts", "16",
              "--num_eval_prompts", "8"],
    "tiny": [],
    "sft": ["--disable_tqdm", "true"],  # the README's 300 steps: later commands need a policy that answers
    "rm": ["--max_steps", "2", "--disable_tqdm", "true"],
    "dpo": ["--max_steps", "2", "--disable_tqdm", "true"],
    "kto": ["--max_steps", "2", "--disable_tqdm", "true"],
    "ppo": ["--max_steps", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
            "--reward_norm_samples", "8", "--eval_steps", "1", "--disable_tqdm", "true"],
    "rloo": ["--max_steps", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
             "--reward_norm_samples", "8", "--disable_tqdm", "true"],
    "online-dpo": ["--max_steps", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                   "--eval_steps", "1", "--disable_tqdm", "true"],
    "eval": ["--max_prompts", "4", "--samples_per_prompt", "1", "--max_new_tokens", "8"],
    "bon": ["--n", "2", "--max_prompts", "4", "--max_new_tokens", "8"],
    "loop": ["--rounds", "1", "--prompts_per_round", "4", "--num_generations", "2", "--max_steps", "1",
             "--num_eval_prompts", "4", "--eval_samples_per_prompt", "1", "--max_new_tokens", "8",
             "--disable_tqdm", "true"],
    "cai": ["--num_prompts", "8", "--num_eval_prompts", "4", "--max_new_tokens", "8", "--max_steps", "1",
            "--disable_tqdm", "true"],
    "audit": [],
    "import-gguf": [],
}  # fmt: skip
SMALL["grpo"] = SMALL["rloo"]
HH_SMALL: dict[str, list[str]] = {
    "rm": ["--per_device_train_batch_size", "2", "--eval_dataset_split", "train[1500:1504]"],
    "dpo": ["--per_device_train_batch_size", "2", "--eval_dataset_split", "train[1500:1504]"],
    "rloo": ["--num_generations", "2", "--eval_dataset_split", "train[1500:1502]", "--eval_steps", "0"],
    "loop": ["--eval_dataset_split", "train[1500:1504]", "--per_device_train_batch_size", "2"],
    "eval": ["--max_length", "384"],
}  # fmt: skip
"""Added to SMALL for the SmolLM2 recipes on HH-RLHF (their held-out splits are hundreds of rows)."""
SKIPPED = ("pip ", "pytest", "preftune demo")
"""Set-up commands, checked elsewhere (module docstring)."""


def readme_commands(text: str) -> list[str]:
    """Every command line of the README's bash blocks: continuations joined, comments dropped."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def _subcommand(words: list[str]) -> tuple[int, str]:
    """(index, name) of the preftune subcommand in a `preftune X` or `accelerate launch ... -m preftune.cli X` line."""
    index = words.index("preftune.cli") + 1 if "preftune.cli" in words else 1
    return index, words[index]


def expand(commands: list[str]) -> list[list[str]]:
    """The runnable argument lists: `...` lines expanded (module docstring), SMALL settings appended."""
    full: list[list[str]] = []
    runnable: list[list[str]] = []
    for number, command in enumerate(commands):
        words = shlex.split(command)
        if command.startswith(SKIPPED):
            continue
        index, name = _subcommand(words)
        if "..." in words:
            base = next((w for w in reversed(full) if _subcommand(w)[1] == name), full[-1])
            base_index, _ = _subcommand(base)
            words = [*base[:base_index], name, *base[base_index + 1 :], *words[words.index("...") + 1 :]]
            if "--resume" not in words:
                out = words.index("--output_dir") + 1
                words[out] = f"{words[out]}-{number}"
        else:
            full.append(words)
        hh = HH_SMALL.get(name, []) if "hh-smollm2" in command or "models/smollm2" in command else []
        runnable.append([*words, *SMALL[name], *hh])
    return runnable


def test_expansion_of_elided_commands():
    lines = [
        "preftune dpo --model m --output_dir runs/dpo --beta 0.1",
        "preftune rloo --model m --output_dir runs/rloo",
        "preftune dpo ... --loss_type ipo",
        "preftune grpo ... --scale_rewards false",
        "preftune sft --model m --output_dir runs/sft",
        "preftune sft ... --resume true",
    ]
    got = [words[: len(words) - len(SMALL[words[1]])] for words in expand(lines)]
    assert got[2] == shlex.split("preftune dpo --model m --output_dir runs/dpo-2 --beta 0.1 --loss_type ipo")
    assert got[3] == shlex.split("preftune grpo --model m --output_dir runs/rloo-3 --scale_rewards false")
    assert got[5] == shlex.split("preftune sft --model m --output_dir runs/sft --resume true")


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert sum(c.startswith(("preftune ", "accelerate ")) for c in commands) >= 20, commands
    work = tmp_path / "preftune"  # a clone: configs/ beside the runs, ../shared beside the clone
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs")
    shared = ROOT.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    bin_dir = Path(sys.executable).parent
    for argv in expand(commands):
        if "../shared/" in " ".join(argv) and not shared.exists():
            continue  # the shared HH-RLHF data lives beside the clone, not in it
        if argv[0] in ("preftune", "accelerate"):
            argv = [str(bin_dir / argv[0]) if (bin_dir / argv[0]).exists() else argv[0], *argv[1:]]
        if argv[0].endswith("accelerate"):  # a free port: another test's processes may hold the default one
            argv = [*argv[:2], "--main_process_port", str(_free_port()), *argv[2:]]
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
