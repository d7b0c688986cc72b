"""Printing for the CLI: JSON for scripts (--json), rich tables for people, errors for both."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

# Wide enough for the tables when the output is a pipe or a file, not a terminal.
console = Console(width=None if sys.stdout.isatty() else 160)

def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["slmops.as_json"] = value  # meta is shared along the context chain
    return value


json_option = click.option("--json", "as_json", is_flag=True, is_eager=True,
                           callback=_remember_json, help="print JSON for scripts")


class CliError(Exception):
    def __init__(self, message: str, code: str = "error", exit_code: int = 1) -> None:
        super().__init__(message)
        self.code, self.exit_code = code, exit_code


def fail(error: CliError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": {"code": error.code, "message": str(error)}}))
    else:
        Console(stderr=True).print(f"[red]error[/red] ({error.code}): {error}", highlight=False)
    sys.exit(error.exit_code)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        human(data)


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "never"
    s = max(0, (now_ms - ms) // 1000)
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    # The first column names what a row is about (an id, a name, a profile): never cut it, the
    # user copies it into the next command; the other columns wrap to make room.
    first = max([len(columns[0]) if columns else 0] + [len(str(r[0])) for r in rows if r])
    for index, column in enumerate(columns):
        t.add_column(column, no_wrap=index == 0, min_width=first if index == 0 else None)
    for row in rows:
        t.add_row(*(str(c) for c in row))
    console.print(t)


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"
