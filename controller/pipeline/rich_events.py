"""Events drawn in the terminal with rich: a bar per task (steps done of total, percent, loss,
time left) under a line per recipe step and per log message. ``slmops run --local`` uses it::

    with RichEvents() as events:
        run_local(recipe, data_dir, None, events)
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from controller.pipeline.events import Events


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def describe_fields(fields: dict[str, Any]) -> str:
    """The extra facts of a progress event, short: "loss 1.234  eta 0:41"."""
    parts = []
    if isinstance(fields.get("loss"), int | float):
        parts.append(f"loss {fields['loss']:.3f}")
    if isinstance(fields.get("eta_s"), int | float):
        parts.append(f"eta {_clock(fields['eta_s'])}")
    return "  ".join(parts)


class RichEvents(Events):
    """Progress bars and log lines on ``console`` (stderr by default, so stdout stays for
    --json). A step's bars are cleared when the step finishes; its line stays."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=True)
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichEvents:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        info = describe_fields(fields)
        with self._lock:
            task_id = self._tasks.get(task)
            if task_id is None:
                task_id = self._progress.add_task(task, total=total or None, info=info)
                self._tasks[task] = task_id
        self._progress.update(task_id, completed=done, total=total or None, info=info)

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False, markup=False)

    def step(self, step: str, state: str, index: int, count: int) -> None:
        mark = {"started": "[cyan]>[/cyan]", "done": "[green]✓[/green]",
                "skipped": "[dim]-[/dim]"}.get(state, "")
        note = " (done before; skipped)" if state == "skipped" else ""
        self._progress.console.print(f"{mark} step {index + 1}/{count} [bold]{step}[/bold] {state}{note}",
                                     highlight=False)
        if state in ("done", "skipped"):
            self._clear(step)

    def _clear(self, step: str) -> None:
        with self._lock:
            for name in [n for n in self._tasks if n == step or n.startswith(step + "/")]:
                self._progress.remove_task(self._tasks.pop(name))
