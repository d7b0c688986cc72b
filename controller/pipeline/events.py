"""How long-running pipeline code reports progress and logs, and learns it was cancelled.

Training loops, teachers and evaluation take an ``Events`` and call ``progress``/``log``; they
call ``check_cancelled()`` between batches. The job worker writes events as JSON lines the
controller streams to ``slmops jobs logs --follow``; ``slmops run --local`` draws rich bars.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class Cancelled(Exception):
    """Raised by ``check_cancelled`` once a cancel was requested; nothing half-made is kept."""


class Events:
    """The base class does nothing but remember a cancel request; subclasses show or store."""

    def __init__(self) -> None:
        self._cancel = threading.Event()

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        """``task`` e.g. "teacher/train"; ``fields`` e.g. loss=1.23, eta_s=40, unit="step"."""

    def log(self, message: str) -> None:
        """One human-readable line."""

    def request_cancel(self) -> None:
        self._cancel.set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")


class JsonlEvents(Events):
    """Appends {"t", "type": "progress"|"log", ...} lines to a file, flushed per line."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self._lock = threading.Lock()
        self._f = self._path.open("a", encoding="utf-8")

    def _write(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._f.write(json.dumps({"t": round(time.time(), 3), **row}) + "\n")
            self._f.flush()

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        self._write({"type": "progress", "task": task, "done": done, "total": total, **fields})

    def log(self, message: str) -> None:
        self._write({"type": "log", "message": message})

    def close(self) -> None:
        self._f.close()


class ListEvents(Events):
    """Keeps every event in memory; for tests."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        self.items.append({"type": "progress", "task": task, "done": done, "total": total,
                           **fields})

    def log(self, message: str) -> None:
        self.items.append({"type": "log", "message": message})
