"""A job's directory, and the files uploaded with it.

``<jobs_root>/<job_id>/`` holds ``recipe.yaml``, ``inputs/<sha256>`` (the uploaded files, named
by their hash), ``inputs.json`` (the name as written in the recipe -> the stored file),
``models.json`` (registry reference -> model directory), ``events.jsonl`` (what the worker and
the manager report), ``worker.log`` (the worker's own stdout and stderr) and ``work/`` (the
runner's work directory, kept across attempts so a resumed job skips finished steps). A job id
is checked before it becomes a path; an upload's name never becomes one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from controller.jobs.store import check_job_id
from controller.validation import Invalid

MAX_FILES_BYTES = 64 * 1024 * 1024
MAX_FILE_NAME = 1024
STAGING = ".staging"


@dataclass(frozen=True)
class JobFiles:
    root: Path

    @classmethod
    def of(cls, jobs_root: Path, job_id: str) -> JobFiles:
        return cls(Path(jobs_root) / check_job_id("id", job_id))

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def inputs_json(self) -> Path:
        return self.root / "inputs.json"

    @property
    def models_json(self) -> Path:
        return self.root / "models.json"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def result(self) -> Path:
        return self.work / "result.json"


class Upload:
    """Files arriving in chunks. Each is hashed as it is written to a temporary name in its
    own staging directory, then renamed to its sha256; ``names`` maps the name as sent to it."""

    def __init__(self, jobs_root: Path, max_total: int = MAX_FILES_BYTES) -> None:
        root = Path(jobs_root) / STAGING
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=root, prefix="upload-"))
        self.names: dict[str, str] = {}
        self.total = 0
        self._max_total = max_total
        self._current: str | None = None
        self._file: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._digest = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        if name != self._current:
            self._close_current()
            if not name or len(name) > MAX_FILE_NAME or "\0" in name:
                raise Invalid(f"files: {name[:60]!r} is not a file name as written in the recipe "
                              f"(1-{MAX_FILE_NAME} characters)")
            if name in self.names:
                raise Invalid(f"files[{name}]: sent twice; send each file's chunks one after "
                              "the other, once")
            self._current = name
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix="part-")
            self._file, self._tmp = os.fdopen(fd, "wb"), Path(tmp)
            self._digest = hashlib.sha256()
        self.total += len(data)
        if self.total > self._max_total:
            raise Invalid(f"files: more than {self._max_total // 2**20} MiB in total; put large "
                          "data where the controller can generate it, or split the job")
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)

    def _close_current(self) -> None:
        if self._file is None or self._current is None or self._tmp is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._digest.hexdigest()
        os.replace(self._tmp, self.dir / digest)  # the same content twice: one file
        self.names[self._current] = digest
        self._file = self._tmp = None

    def finish(self) -> dict[str, str]:
        """Every file complete: name as sent -> sha256 (its file in ``dir``)."""
        self._close_current()
        self._current = None
        return dict(self.names)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.dir, ignore_errors=True)


def clear_staging(jobs_root: Path) -> None:
    """Uploads a controller was receiving when it stopped: never submitted, never resumed."""
    shutil.rmtree(Path(jobs_root) / STAGING, ignore_errors=True)


@dataclass(frozen=True)
class Event:
    seq: int  # 0-based line number in the log
    type: str
    line: str  # the JSON object as written
    data: dict[str, Any]


class EventLog:
    """A job's ``events.jsonl``: the worker appends to it while it runs, the manager between
    attempts; readers follow it by byte offset and hand out whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        """One line, flushed to disk. A line a killed worker left unfinished is ended first,
        so it can't swallow this one."""
        with self.path.open("ab") as f:
            if f.tell() and _last_byte(self.path) != b"\n":
                f.write(b"\n")
            f.write((json.dumps({"t": round(time.time(), 3), **row}) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def reader(self, from_seq: int = 0, *, at_end: bool = False) -> EventReader:
        return EventReader(self.path, from_seq, at_end)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class EventReader:
    def __init__(self, path: Path, from_seq: int, at_end: bool) -> None:
        self._path = path
        self._offset = 0
        self._seq = 0
        self._skip = max(0, from_seq)
        if at_end:
            for _ in self.read():
                pass

    def read(self) -> list[Event]:
        """The events completed since the last read (those before ``from_seq`` are skipped)."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        events = []
        for raw in chunk[: end + 1].splitlines():
            seq, self._seq = self._seq, self._seq + 1
            if seq < self._skip:
                continue
            line = raw.decode("utf-8", errors="replace").strip()
            try:
                data = json.loads(line)
            except ValueError:
                data = None
            if not isinstance(data, dict):  # not ours (a torn line): shown as a log line
                data = {"type": "log", "message": line}
                line = json.dumps(data)
            events.append(Event(seq, str(data.get("type", "log")), line, data))
        return events
