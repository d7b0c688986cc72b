"""One SQL database shared by the pipeline's tables (models, evaluations, jobs) and the fleet's.

The fleet store keeps its engine to itself, so the registry and the job store open their own
engine on the same URL, set up the same way: SQLite in WAL mode, writes taking the lock up front
(BEGIN IMMEDIATE) with a busy timeout, so several engines, threads and processes (the
controller and ``slmops run --local``) can share one file; or PostgreSQL by URL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from controller.store import StoreError
from controller.store.sqlite_wal import create_private, set_wal

_WRITE = "slmops_write"  # execution option: this transaction writes (BEGIN IMMEDIATE)


class Database:
    """An engine on ``url`` with ``metadata``'s tables created if missing."""

    def __init__(self, url: str, metadata: MetaData, what: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise StoreError(f"{what}: {url!r} is not a database URL ({e}); use "
                             "sqlite:///path/to/fleet.db or postgresql://user@host/dbname") from e
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        self._lock = threading.RLock()  # serializes this engine's SQLite writes (and :memory:)
        try:
            if self.dialect == "sqlite":
                memory = parsed.database in (None, "", ":memory:")
                if not memory:
                    _create_private(Path(parsed.database or ""))
                self.engine = create_engine(
                    parsed, connect_args={"check_same_thread": False},
                    **({"poolclass": StaticPool} if memory else {}))
                self._memory = memory
                _sqlite_setup(self.engine)
            elif self.dialect == "postgresql":
                self.engine = create_engine(parsed, pool_pre_ping=True)
                self._memory = False
            else:
                raise StoreError(f"{what}: the database URL {self.url} uses {self.dialect!r}, "
                                 "which slmops does not support; use sqlite:/// or postgresql://")
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise StoreError(f"{what}: cannot use the database URL {self.url}: {e}") from e
        try:
            with self.write() as conn:
                metadata.create_all(conn)
        except DBAPIError as e:
            self.engine.dispose()
            raise StoreError(f"{what}: cannot open the database {self.url}: {e.orig}; check that "
                             "it exists, is reachable and that this user may write to it") from e

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction that will write; committed when the block ends without an error."""
        with self._lock, self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    def serialize(self, conn: Connection, key: int) -> None:
        """Inside a write transaction: one at a time across every process for ``key``. SQLite's
        BEGIN IMMEDIATE already is; PostgreSQL takes a transaction-scoped advisory lock."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @contextmanager
    def read(self) -> Iterator[Connection]:
        if self._memory:  # one shared connection: every use goes through the lock
            with self._lock, self.engine.connect() as conn:
                yield conn
        else:
            with self.engine.connect() as conn:
                yield conn

    def close(self) -> None:
        self.engine.dispose()


def _create_private(db: Path) -> None:
    """The file with mode 0600 (it shares the fleet's token verifiers), before SQLite makes it."""
    try:
        create_private(db)
    except OSError as e:
        raise StoreError(f"cannot create the database file {db}: {e.strerror}; check the "
                         "directory's permissions or choose another path") from e


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # BEGIN is emitted in _on_begin
        cursor = dbapi_conn.cursor()
        # busy_timeout first: switching a new file to WAL needs its lock, which another
        # process opening the same file at the same moment may hold
        cursor.execute("PRAGMA busy_timeout=10000")
        set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")  # a commit survives a killed process
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred read-then-write transaction can
        # fail with SQLITE_BUSY at once, without busy_timeout helping.
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
