"""Run a measuring child process and relay what it says: one JSON object per stdout line,
{"type": "progress"|"log"|"result", ...}. Used where a figure must be the child's own (peak
memory of one model, one runtime): evaluation and the check of a built variant."""

from __future__ import annotations

import json
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from controller.pipeline.events import Events


class ChildFailed(RuntimeError):
    """The child ran past its time (``timed_out``) or ended without a result; ``tail`` is the
    end of its stderr, ready to append to a message."""

    def __init__(self, returncode: int | None, tail: str, timed_out: bool = False) -> None:
        super().__init__(f"exit {returncode}{tail}")
        self.returncode, self.tail, self.timed_out = returncode, tail, timed_out


def run_json_child(command: Sequence[str], events: Events, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``command``, relay its progress and log lines to ``events`` and return its result.
    Raises ChildFailed, and Cancelled (after killing the child) when ``events`` asks to cancel."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   stdin=subprocess.DEVNULL)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        result: dict[str, Any] | None = None
        try:
            while True:
                events.check_cancelled()
                if deadline is not None and time.monotonic() > deadline:
                    raise ChildFailed(None, _tail(stderr), timed_out=True)
                try:
                    line = lines.get(timeout=0.25)
                except queue.Empty:
                    continue
                if line is None:
                    break
                result = _relay(line, events) or result
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            reader.join(timeout=5)
        if process.returncode != 0 or result is None:
            raise ChildFailed(process.returncode, _tail(stderr))
    return result


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _relay(line: str, events: Events) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None  # a library printed to stdout; not ours
    if not isinstance(message, dict):
        return None
    kind = message.pop("type", None)
    if kind == "progress":
        events.progress(message.pop("task", "child"), message.pop("done", 0), message.pop("total", 0),
                        **message)
    elif kind == "log":
        events.log(str(message.get("message", "")))
    elif kind == "result":
        return message["result"]
    return None


def _tail(stderr: IO[bytes], limit: int = 2000) -> str:
    stderr.seek(0)
    text = stderr.read().decode("utf-8", errors="replace").strip()
    return f":\n{text[-limit:]}" if text else " (no output on stderr)"
