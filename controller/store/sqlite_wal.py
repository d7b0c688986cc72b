"""Switching a SQLite connection to WAL, safely when several processes open one new file."""

from __future__ import annotations

import random
import sqlite3
import time
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
