"""metrics.jsonl: one JSON object per logged step, always with `step` and `loss`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Averages metrics over the logging window and appends them to metrics.jsonl."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines written after the checkpoint we continue from.

        A kill can leave the last line half-written (no newline); it is dropped too.
        """
        if not (self.enabled and self.path.exists()):
            return
        text = self.path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        kept = [line for line in complete.splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def state_dict(self) -> dict[str, Any]:
        """The open averaging window, saved in checkpoints so a resumed run logs the same means."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])

    def accumulate(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the window's means (plus `extra`, taken as is) and start a new window."""
        record: dict[str, Any] = {"step": step}
        record.update({key: self._sums[key] / self._counts[key] for key in self._sums})
        record.update(extra or {})
        record.setdefault("loss", record.get("train/loss", math.nan))
        self._sums, self._counts = {}, {}
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        return record


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
