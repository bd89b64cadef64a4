"""An on-disk store of finished judge requests, so an interrupted run never pays for one twice.

    cache = VerdictCache("runs/judge-cache")
    key = VerdictCache.key("http://localhost:8000/v1", "my-model", messages, params)
    cache.get(key)          # None, or the stored value
    cache.put(key, {"logps": [-0.1, -2.5]})   # appended to verdicts.jsonl and flushed at once

The file is append-only JSONL, one {"key": ..., "value": ...} per line, safe to share between the
threads of one judge. It is read when the cache is opened; a line cut short by a killed process is
skipped (and counted in a warning), and the next append starts on a fresh line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FILE = "verdicts.jsonl"


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
