"""The agent's on-disk queue of numbered samples, kept until the controller acknowledges them.

SQLite in WAL mode with synchronous=NORMAL: a committed append survives the agent being
killed (not necessarily a power cut, which may lose the last few). A seq is never reused:
next_seq is stored, not derived from the rows, so it survives acking everything and restarts.
When more than ``max_samples`` are pending the oldest are dropped and counted.

One Spool object owns its file; it is used from one thread (the agent's event loop) and keeps
the counters in memory, written through in the same transaction as the rows.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf.message import DecodeError

from protos import common_pb2

_MAX_SEQ = 2**63 - 1  # SQLite INTEGER is signed 64-bit
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples"
    " (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value)"
    " VALUES ('next_seq', 1), ('last_acked_seq', 0), ('dropped_total', 0)",
)


class SpoolError(Exception):
    """The spool file can't be used; the message says which file and what to do."""


class Spool:
    """A bounded, crash-safe queue of ``common_pb2.Sample`` in SQLite at ``path``."""

    def __init__(self, path: Path, max_samples: int = 50_000) -> None:
        if max_samples < 1:
            raise ValueError(f"spool max_samples must be >= 1, got {max_samples}")
        self.path = path
        self.max_samples = max_samples
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create it owner-only before SQLite does; its -wal and -shm files copy this mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also for a file an older agent left readable
        finally:
            os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None)  # we BEGIN/COMMIT ourselves
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" not in str(exc):
                raise SpoolError(f"spool {path}: {exc}") from exc
            raise SpoolError(f"spool {path} is in use by another process ({exc}); is another "
                             "agent running with the same data dir?") from exc
        except (sqlite3.DatabaseError, SpoolError) as exc:
            self._db.close()
            raise SpoolError(
                f"spool {path} is unreadable ({exc}); stop the agent, move the file aside "
                f"together with its -wal and -shm files (e.g. to {path.name}.corrupt*) and "
                "start it again: a new spool will be created, and the samples in the old one "
                "will not be sent") from exc

    def _open(self) -> None:
        db = self._db
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise SpoolError("integrity check failed")
        if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise SpoolError("cannot switch to WAL mode")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # on failure the caller closes, which rolls back
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        max_seq, count = db.execute("SELECT max(seq), count(*) FROM samples").fetchone()
        self._last_acked = int(meta["last_acked_seq"])
        self._dropped = int(meta["dropped_total"])
        self._pending = int(count)
        # Trust the larger of the stored counter and what the rows and acks show.
        self._next = max(int(meta["next_seq"]), (max_seq or 0) + 1, self._last_acked + 1)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; sqlite errors become
        SpoolError (a full disk, say), naming the file."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc

    def _set_meta(self, db: sqlite3.Connection, **values: int) -> None:
        db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                       [(v, k) for k, v in values.items()])

    def append(self, timestamp_ms: int, values: list[common_pb2.MetricValue]) -> int:
        """Store a sample under the next seq and return it; drop the oldest if over the bound."""
        seq = self._next
        payload = common_pb2.Sample(seq=seq, timestamp_ms=timestamp_ms, values=values)
        drop = max(0, self._pending + 1 - self.max_samples)
        with self._transaction() as db:
            db.execute("INSERT INTO samples (seq, ts_ms, payload) VALUES (?, ?, ?)",
                       (seq, timestamp_ms, payload.SerializeToString()))
            if drop:
                db.execute("DELETE FROM samples WHERE seq IN "
                           "(SELECT seq FROM samples ORDER BY seq LIMIT ?)", (drop,))
            # dropped_total always: it also carries losses counted while nothing could be written
            self._set_meta(db, next_seq=seq + 1, dropped_total=self._dropped + drop)
        self._next = seq + 1
        self._pending += 1 - drop
        self._dropped += drop
        return seq

    def count_lost(self, count: int) -> None:
        """``count`` samples were made but could not be stored (append failed: a full disk).
        They count as dropped from now on; the total reaches the file with the next append."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._dropped += count

    def pending(self, limit: int) -> list[common_pb2.Sample]:
        """Up to ``limit`` unacknowledged samples, oldest (lowest seq) first."""
        if limit < 0:
            raise ValueError(f"pending limit must be >= 0, got {limit}")
        try:
            rows = self._db.execute(
                "SELECT seq, payload FROM samples ORDER BY seq LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        out = []
        for seq, payload in rows:
            try:
                out.append(common_pb2.Sample.FromString(payload))
            except DecodeError as exc:
                raise SpoolError(f"spool {self.path}: sample {seq} is corrupt ({exc}); stop "
                                 "the agent, move the file aside together with its -wal and "
                                 "-shm files and start it again") from exc
        return out

    def ack_through(self, seq: int) -> int:
        """Delete every sample with seq <= ``seq``; return how many went.

        The controller holds ``seq``, so it is also never handed out again."""
        _check_seq(seq)
        last_acked = max(self._last_acked, seq)
        next_seq = max(self._next, seq + 1)
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM samples WHERE seq <= ?", (seq,)).rowcount
            self._set_meta(db, last_acked_seq=last_acked, next_seq=next_seq)
        self._last_acked, self._next = last_acked, next_seq
        self._pending -= deleted
        return deleted

    def ensure_seq_above(self, seq: int) -> None:
        """The controller already holds ``seq`` (e.g. this data dir came from a backup): make
        the next seq at least ``seq + 1``."""
        _check_seq(seq)
        if seq + 1 > self._next:
            with self._transaction() as db:
                self._set_meta(db, next_seq=seq + 1)
            self._next = seq + 1

    def pending_count(self) -> int:
        return self._pending

    def dropped_total(self) -> int:
        return self._dropped

    def last_acked_seq(self) -> int:
        return self._last_acked

    def next_seq(self) -> int:
        return self._next

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_seq(seq: int) -> None:
    if not 0 <= seq < _MAX_SEQ:
        raise ValueError(f"seq must be in [0, {_MAX_SEQ}), got {seq}")
