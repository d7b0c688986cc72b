"""The controller's SQLite file shared with other processes: a controller keeps its locks, so
another process that opens and closes the file (the CLI, a backup, sqlite3) can't take the
controller's WAL for unused and delete it, losing its commits at the next restart."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from controller.registry import ModelRegistry
from controller.store import open_store, sqlite_url
from controller.store.sqlite_wal import create_private


def test_a_reader_in_another_process_leaves_the_store_s_wal_in_place(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    store = open_store(sqlite_url(db))  # as the controller opens them: store, then registry
    registry = ModelRegistry(sqlite_url(db), tmp_path / "models")
    try:
        store.list_devices()
        assert (tmp_path / "fleet.db-wal").exists()
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "c.execute('select count(*) from devices').fetchall(); c.close()", str(db)],
                       check=True, timeout=60)
        assert (tmp_path / "fleet.db-wal").exists()  # the other process saw this one's locks
    finally:
        registry.close()
        store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from devices").fetchone() == (0,)


def test_create_private_makes_a_0600_file_once_and_never_opens_one_that_exists(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "fleet.db"
    create_private(db)
    assert os.stat(db).st_mode & 0o777 == 0o600
    db.write_bytes(b"kept")
    create_private(db)
    assert db.read_bytes() == b"kept"
