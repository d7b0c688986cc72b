"""SQLite files shared by several processes: creating one safely, and switching a connection to WAL."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any


def set_wal(cursor: Any, attempts: int = 100) -> None:
    """PRAGMA journal_mode=WAL, retried: on a new file, two processes switching it at once get
    SQLITE_BUSY straight away (the busy handler is not consulted for that lock)."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.05 + random.random() * 0.05)


def create_private(db: Path) -> None:
    """Make the database file with mode 0600 if it does not exist yet (raises OSError).

    It never opens a file that exists: closing any descriptor of a file drops every POSIX lock
    this process holds on it, SQLite's included, even those of connections that stay open. A
    process that does so leaves its WAL unprotected: the next process to close its last
    connection to the file (the CLI, a backup, sqlite3) finds no other lock, checkpoints and
    deletes the WAL, and every commit after that lives only in a deleted file until this process
    dies with it. A new file, by contrast, is open nowhere in this process."""
    db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
