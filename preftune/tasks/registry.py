"""The interface every synthetic task provides, and the registry of built-in tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from preftune.tasks.kindness import KindnessTask


class Task(Protocol):
    """A synthetic task: prompts, a corpus, a deterministic gold reward and a critique skill."""

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]]
    """Names of the gold-reward components, the keys of `gold_components`."""

    def prompt_pool(self, split: Literal["train", "eval"] = "train") -> tuple[str, ...]: ...

    def sample_prompts(
        self, n: int, rng: np.random.Generator, split: Literal["train", "eval"] = "train"
    ) -> list[str]: ...

    def is_task_prompt(self, prompt: str) -> bool: ...

    def gold_components(self, prompt: str, response: str) -> dict[str, float]: ...

    def gold_reward(self, prompt: str, response: str) -> float: ...

    def sample_response(self, prompt: str, rng: np.random.Generator, quality: float | None = None) -> str: ...

    def critique(self, response: str) -> str: ...

    def revise(self, response: str) -> str: ...

    def critique_prompt(self, response: str) -> str: ...

    def revise_prompt(self, response: str) -> str: ...


TASKS: dict[str, Task] = {"kindness": KindnessTask()}
"""Built-in tasks by name; each value is an immutable task object."""


def get_task(name: str) -> Task:
    """The built-in task called `name`."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Available tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def detect_task(dataset: Any, task: str) -> str | None:
    """The synthetic task whose gold reward applies: `task` itself, or with "auto" the one named
    in a task.json beside the dataset (written by `preftune synth`); None for "none" or no task."""
    if task == "none":
        return None
    if task != "auto":
        get_task(task)  # raises with the available names
        return task
    if not isinstance(dataset, str | Path) or not str(
        dataset
    ):  # data in memory, or none: no task.json beside it
        return None
    meta = Path(dataset).parent / "task.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text()).get("task")
