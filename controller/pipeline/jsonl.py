"""JSON Lines in and out: errors that name the file and the line, writes that are atomic."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.files import write_atomic  # temp name, fsync, rename; re-exported for the pipeline


class DataError(ValueError):
    """A data file that can't be used; the message names the file, the line and the field."""


def numbered_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("FILE:LINE", object) for every non-blank line of ``path``; DataError naming the file and
    the line for a missing or unreadable file, malformed JSON, or a line that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno})"
                                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{number}", row
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: can't read it ({e})") from None


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every line of ``path`` as a dict. Blank lines are skipped. Raises DataError naming the
    file and line for malformed JSON, a line that is not an object, or a missing/non-string
    required field."""
    rows: list[dict[str, Any]] = []
    for where, row in numbered_objects(path):
        for field in required:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise DataError(f"{where}: field {field!r} is missing or not a non-empty string")
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows atomically; returns how many."""
    lines = [json.dumps(dict(r), ensure_ascii=False) for r in rows]
    write_atomic(Path(path), ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return len(lines)


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append one line and flush it to disk (for logs that must survive a kill)."""
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_jsonl_many(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append several lines with one flush and one fsync (a chunk of a long-running job)."""
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    if not text:
        return
    with Path(path).open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
