"""An on-disk store of finished judge requests, so an interrupted run never pays for one twice.

    cache = VerdictCache("runs/judge-cache")
    key = VerdictCache.key("http://localhost:8000/v1", "my-model", messages, params)
    cache.get(key)          # None, or the stored value
    cache.put(key, {"logps": [-0.1, -2.5]})   # appended to verdicts.jsonl and flushed at once

The file is append-only JSONL, one {"key": ..., "value": ...} per line, safe to share between the
threads of one judge. It is read when the cache is opened; a line cut short by a killed process is
skipped (and counted in a warning), and the next append starts on a fresh line.

JSON has no infinities or NaN, so answer log-probs go through `encode_logps` (-inf, probability 0,
is stored as null; a NaN or +inf answer is never stored, the judge asks again next time) and come
back through `decode_logps`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FILE = "verdicts.jsonl"


def encode_logps(logps: Sequence[float]) -> list[float | None] | None:
    """Answer log-probs as stored: -inf (probability 0) as None; None for the whole list when one is
    NaN or +inf, which is never cached."""
    if any(math.isnan(lp) or lp == math.inf for lp in logps):
        return None
    return [None if lp == -math.inf else float(lp) for lp in logps]


def decode_logps(stored: Sequence[float | None]) -> list[float]:
    """The answer log-probs of a stored entry (None back to -inf)."""
    return [-math.inf if lp is None else float(lp) for lp in stored]


class VerdictCache:
    """Finished judge requests in `directory`/verdicts.jsonl, keyed by a sha256 hex digest."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        if self.path.exists():
            self._read()

    @staticmethod
    def key(*parts: Any) -> str:
        """sha256 of the JSON encoding of `parts` (keys sorted): equal inputs give equal keys."""
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _read(self) -> None:
        data = self.path.read_bytes()
        skipped = 0
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._values[record["key"]] = record["value"]
            except (json.JSONDecodeError, KeyError, TypeError):
                skipped += 1
        if skipped:
            logger.warning("Skipped %d unreadable line(s) of the judge cache %s.", skipped, self.path)
        if data and not data.endswith(b"\n"):  # a cut-off last line: start the next record on its own line
            with self.path.open("ab") as f:
                f.write(b"\n")
        logger.info("Judge cache %s holds %d finished requests.", self.path, len(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str) -> Any:
        """The stored value, or None."""
        return self._values.get(key)

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON-serialisable) and append it to the file, flushed before returning."""
        line = json.dumps({"key": key, "value": value}, ensure_ascii=True, allow_nan=False) + "\n"
        with self._lock:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
            self._values[key] = value
