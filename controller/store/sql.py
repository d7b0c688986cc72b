"""FleetStore on SQLAlchemy Core: SQLite by default, PostgreSQL by URL.

SQLite writes are serialized by a lock in this process (and BEGIN IMMEDIATE across processes),
so threads queue on the lock instead of spinning on SQLITE_BUSY; reads run concurrently (WAL).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Insert,
    Row,
    Table,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from agent.telemetry.catalog import is_known
from controller.store.base import (
    BenchmarkRecord,
    Conflict,
    DeploymentReport,
    DeviceRecord,
    FleetStore,
    IngestItem,
    IngestResult,
    NotFound,
    RawPoint,
    ReleaseRecord,
    StoreError,
    TokenRecord,
    TokenRejected,
    Touch,
)
from controller.store.rollouts_sql import SqlRolloutsMixin
from controller.store.schema import (
    ADDED_COLUMNS,
    benchmarks,
    counters,
    devices,
    enrollment_nonces,
    metadata,
    points,
    release_blobs,
    releases,
    series,
    tokens,
)
from controller.store.sqlite_wal import create_private, set_wal

_WRITE = "slmops_write"  # execution option: this transaction will write (BEGIN IMMEDIATE)
_CHUNK = 500  # ids per IN (...) list; far below every backend's bound-parameter limit
_NEW_TOKEN = "create a new one with `slmops token create`"

SeriesKey = tuple[str, str, str]  # (device_id, metric, series)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chunks(seq: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _token(row: Row[Any]) -> TokenRecord:
    m = row._mapping
    return TokenRecord(
        id=m["id"], verifier=bytes(m["verifier"]), labels=json.loads(m["labels"]),
        created_at_ms=m["created_at_ms"], expires_at_ms=m["expires_at_ms"],
        max_uses=m["max_uses"], uses=m["uses"], revoked=bool(m["revoked"]),
    )


_DEP = "dep_"  # the deployment report's columns on a device row (schema.DEPLOYMENT_COLUMNS)
_RELEASE_COUNTER = "release"


def _device(row: Row[Any]) -> DeviceRecord:
    m = dict(row._mapping)
    m["labels"] = json.loads(m["labels"])
    m["hardware"] = json.loads(m["hardware"])
    report = {k[len(_DEP):]: m.pop(k) for k in list(m) if k.startswith(_DEP)}
    return DeviceRecord(**m, deployment=DeploymentReport(**report))


def _device_values(d: DeviceRecord) -> dict[str, Any]:
    values = {c.name: getattr(d, c.name) for c in devices.columns if not c.name.startswith(_DEP)}
    values.update(_deployment_values(d.deployment))
    values["labels"] = json.dumps(dict(d.labels), sort_keys=True)
    values["hardware"] = json.dumps(dict(d.hardware), sort_keys=True)
    return values


def _deployment_values(report: DeploymentReport) -> dict[str, Any]:
    return {_DEP + f.name: getattr(report, f.name) for f in fields(report)}


def _release(row: Row[Any]) -> ReleaseRecord:
    m = dict(row._mapping)
    m.pop("id")
    m["manifest_json"], m["signature"] = bytes(m["manifest_json"]), bytes(m["signature"])
    m["rollback"] = bool(m["rollback"])
    return ReleaseRecord(**m)


def _benchmark(row: Row[Any]) -> BenchmarkRecord:
    m = dict(row._mapping)
    m["report"] = json.loads(m["report"])
    return BenchmarkRecord(**m)


def _forward(column: Any, value: Any) -> Any:
    """``max(column, value)`` in portable SQL (SQLite's max() is PostgreSQL's GREATEST())."""
    return case((column < value, value), else_=column)


class SqlFleetStore(SqlRolloutsMixin, FleetStore):
    """The fleet state in one SQL database, e.g. ``sqlite:///var/lib/slmops/fleet.db``."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise StoreError(
                f"{url!r} is not a database URL ({e}); use sqlite:///path/to/fleet.db "
                "or postgresql://user@host/dbname"
            ) from e
        self.url = parsed.render_as_string(hide_password=True)
        self._dialect = parsed.get_backend_name()
        self._write_lock: AbstractContextManager[Any] = nullcontext()
        self._read_lock: AbstractContextManager[Any] = nullcontext()
        try:
            if self._dialect == "sqlite":
                self._engine = self._open_sqlite(parsed)
            elif self._dialect == "postgresql":
                self._engine = create_engine(parsed, pool_pre_ping=True)
            else:
                raise StoreError(
                    f"the fleet database URL {self.url} uses {self._dialect!r}, which slmops "
                    "does not support; use sqlite:///path/to/fleet.db or postgresql://..."
                )
        except (ArgumentError, NoSuchModuleError, ImportError) as e:
            raise StoreError(
                f"cannot use the fleet database URL {self.url}: {e}; check the URL's scheme "
                "and that its database driver is installed"
            ) from e
        try:
            with self._write() as conn:
                metadata.create_all(conn)
                self._add_missing_columns(conn)
        except DBAPIError as e:
            self._engine.dispose()
            raise StoreError(
                f"cannot open the fleet database {self.url}: {e.orig}; check that it exists, "
                "is reachable and that this user may write to it"
            ) from e
        self._series_ids: dict[SeriesKey, int] = {}

    def _open_sqlite(self, parsed: URL) -> Engine:
        path = parsed.database or ""
        if path in ("", ":memory:"):
            # One shared in-memory connection (for tests): every use goes through the lock.
            lock = threading.RLock()
            self._write_lock = self._read_lock = lock
            engine = create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            # The engine first: a bad driver name must fail before any file is made.
            engine = create_engine(parsed, connect_args={"check_same_thread": False})
            db = Path(path)
            try:
                create_private(db)
                os.chmod(db, 0o600)  # holds token verifiers; SQLite gives -wal/-shm this mode
            except OSError as e:
                raise StoreError(
                    f"cannot create the fleet database file {db}: {e.strerror}; check the "
                    "directory's permissions or choose another path"
                ) from e
            self._write_lock = threading.RLock()

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA busy_timeout=10000")  # first: set_wal may wait for a lock
            set_wal(cursor)
            # In WAL mode, NORMAL syncs at checkpoints, not at each commit: a committed
            # transaction survives a crash or SIGKILL of this process (it is in the WAL file,
            # in the OS's cache); only an OS crash or power loss can lose the last commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads and
            # then writes can fail with SQLITE_BUSY at once, without busy_timeout helping.
            write = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock, self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._read_lock, self._engine.connect() as conn:
            yield conn

    def _add_missing_columns(self, conn: Connection) -> None:
        """Bring a database made by an older release up to date (see schema.ADDED_COLUMNS)."""
        inspector = inspect(conn)
        for table, columns in ADDED_COLUMNS.items():
            have = {c["name"] for c in inspector.get_columns(table)}
            for name, ddl in columns:
                if name in have:
                    continue
                # PostgreSQL: IF NOT EXISTS, as another replica may add it at the same moment;
                # SQLite lacks it but holds the write lock (BEGIN IMMEDIATE) here.
                guard = "IF NOT EXISTS " if self._dialect == "postgresql" else ""
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {guard}{name} {ddl}")

    def _insert(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING in this database's dialect."""
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    # tokens
    def create_token(self, token: TokenRecord) -> None:
        values = {c.name: getattr(token, c.name) for c in tokens.columns}
        values["labels"] = json.dumps(dict(token.labels), sort_keys=True)
        try:
            with self._write() as conn:
                conn.execute(insert(tokens).values(values))
        except IntegrityError as e:
            raise Conflict(f"enrollment token {token.id} already exists") from e

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
        return None if row is None else _token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with self._read() as conn:
            rows = conn.execute(select(tokens).order_by(tokens.c.created_at_ms, tokens.c.id))
            return [_token(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenRecord:
        with self._write() as conn:
            where = tokens.c.id == token_id
            if conn.execute(update(tokens).where(where).values(revoked=True)).rowcount == 0:
                raise NotFound(
                    f"enrollment token {token_id} not found; see them with `slmops token list`"
                )
            return _token(conn.execute(select(tokens).where(where)).one())

    def enroll_device(self, token_id: str, now_ms: int, device: DeviceRecord, *,
                      nonce: bytes = b"", nonce_expires_at_ms: int = 0) -> DeviceRecord:
        with self._write() as conn:
            if nonce:
                conn.execute(delete(enrollment_nonces).where(
                    enrollment_nonces.c.expires_at_ms < now_ms))
                seen = conn.execute(select(enrollment_nonces.c.device_id).where(
                    enrollment_nonces.c.nonce == nonce)).first()
                if seen is not None:
                    raise TokenRejected(
                        "replayed", f"replayed enrollment request (it enrolled device {seen[0]} "
                        "before); an agent makes a new request each time it enrolls")
            row = conn.execute(
                select(tokens).where(tokens.c.id == token_id).with_for_update()
            ).first()
            if row is None:
                raise TokenRejected(
                    "unknown", f"enrollment token {token_id} is not known; check it or {_NEW_TOKEN}"
                )
            token = _token(row)
            if token.revoked:
                raise TokenRejected(
                    "revoked", f"enrollment token {token_id} was revoked; {_NEW_TOKEN}"
                )
            if now_ms >= token.expires_at_ms:
                raise TokenRejected(
                    "expired",
                    f"enrollment token {token_id} expired at {_iso(token.expires_at_ms)}; "
                    f"{_NEW_TOKEN}",
                )
            if token.uses >= token.max_uses:
                raise TokenRejected(
                    "used_up",
                    f"enrollment token {token_id} has been used {token.uses} of "
                    f"{token.max_uses} times; {_NEW_TOKEN}",
                )
            taken = conn.execute(
                select(devices.c.id).where(
                    devices.c.name == device.name, devices.c.removed_at_ms == 0
                )
            ).scalar()
            if taken is not None:
                raise Conflict(
                    f"device name {device.name!r} is taken by device {taken}; "
                    "choose another --name or remove that device"
                )
            stored = replace(device, labels={**token.labels, **device.labels})
            conn.execute(
                update(tokens).where(tokens.c.id == token_id).values(uses=tokens.c.uses + 1)
            )
            try:
                conn.execute(insert(devices).values(_device_values(stored)))
                if nonce:
                    conn.execute(insert(enrollment_nonces).values(
                        nonce=nonce, token_id=token_id, device_id=stored.id,
                        expires_at_ms=nonce_expires_at_ms))
            except IntegrityError as e:  # a concurrent enrollment (PostgreSQL) or a reused id
                raise Conflict(
                    f"device {device.id} ({device.name!r}) could not be added: its id or name "
                    "is taken; choose another --name or try again"
                ) from e
        return stored

    # devices
    def get_device(self, device_id: str) -> DeviceRecord | None:
        with self._read() as conn:
            row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
        return None if row is None else _device(row)

    def find_device(self, id_or_name: str) -> DeviceRecord | None:
        with self._read() as conn:
            row = conn.execute(select(devices).where(devices.c.id == id_or_name)).first()
            if row is None:
                row = conn.execute(
                    select(devices).where(
                        devices.c.name == id_or_name, devices.c.removed_at_ms == 0
                    )
                ).first()
        return None if row is None else _device(row)

    def list_devices(
        self, selector: Mapping[str, str] | None = None, include_removed: bool = False
    ) -> list[DeviceRecord]:
        stmt = select(devices).order_by(devices.c.name, devices.c.id)
        if not include_removed:
            stmt = stmt.where(devices.c.removed_at_ms == 0)
        with self._read() as conn:
            found = [_device(r) for r in conn.execute(stmt)]
        wanted = dict(selector or {})
        return [d for d in found if all(d.labels.get(k) == v for k, v in wanted.items())]

    def _active(self, conn: Connection, device_id: str) -> DeviceRecord:
        row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
        if row is None:
            raise NotFound(f"device {device_id} not found; see them with `slmops devices list`")
        found = _device(row)
        if found.removed_at_ms:
            raise NotFound(f"device {device_id} was removed at {_iso(found.removed_at_ms)}")
        return found

    def update_labels(
        self, device_id: str, set_labels: Mapping[str, str], remove: Iterable[str]
    ) -> DeviceRecord:
        """Removes, then sets. NotFound also for a removed device."""
        with self._write() as conn:
            found = self._active(conn, device_id)
            drop = set(remove)
            labels = {k: v for k, v in found.labels.items() if k not in drop}
            labels.update(set_labels)
            done = replace(found, labels=labels, desired_generation=found.desired_generation + 1)
            conn.execute(
                update(devices).where(devices.c.id == device_id).values(
                    labels=json.dumps(labels, sort_keys=True),
                    desired_generation=devices.c.desired_generation + 1,
                )
            )
        return done

    def remove_device(self, device_id: str, now_ms: int) -> DeviceRecord:
        with self._write() as conn:
            where = devices.c.id == device_id
            conn.execute(
                update(devices).where(where, devices.c.removed_at_ms == 0).values(
                    removed_at_ms=now_ms
                )
            )
            row = conn.execute(select(devices).where(where)).first()
            if row is None:
                raise NotFound(f"device {device_id} not found; see them with `slmops devices list`")
            return _device(row)

    def record_hello(
        self, device_id: str, hardware: Mapping[str, object], agent_version: str,
        profile: str, now_ms: int,
    ) -> DeviceRecord:
        """NotFound also for a removed device."""
        with self._write() as conn:
            found = self._active(conn, device_id)
            conn.execute(
                update(devices).where(devices.c.id == device_id).values(
                    hardware=json.dumps(dict(hardware), sort_keys=True),
                    agent_version=agent_version,
                    profile=profile,
                    last_seen_ms=_forward(devices.c.last_seen_ms, now_ms),
                )
            )
        return replace(
            found, hardware=dict(hardware), agent_version=agent_version, profile=profile,
            last_seen_ms=max(found.last_seen_ms, now_ms),
        )

    def set_profile_override(self, device_id: str, profile: str) -> DeviceRecord:
        """NotFound also for a removed device."""
        with self._write() as conn:
            found = self._active(conn, device_id)
            conn.execute(
                update(devices).where(devices.c.id == device_id).values(profile_override=profile)
            )
        return replace(found, profile_override=profile)

    def touch_devices(self, touches: Mapping[str, Touch]) -> None:
        """Unknown ids are ignored; spool_dropped_total also only moves forward."""
        if not touches:
            return
        last = bindparam("b_last", type_=BigInteger)
        dropped = bindparam("b_dropped", type_=BigInteger)
        where = devices.c.id == bindparam("b_id")
        seen = update(devices).where(where).values(
            last_seen_ms=_forward(devices.c.last_seen_ms, last)
        )
        both = seen.values(spool_dropped_total=_forward(devices.c.spool_dropped_total, dropped))
        plain = [{"b_id": k, "b_last": t.last_seen_ms}
                 for k, t in touches.items() if t.spool_dropped_total is None]
        with_dropped = [{"b_id": k, "b_last": t.last_seen_ms, "b_dropped": t.spool_dropped_total}
                        for k, t in touches.items() if t.spool_dropped_total is not None]
        with self._write() as conn:
            if plain:
                conn.execute(seen, plain)
            if with_dropped:
                conn.execute(both, with_dropped)

    # releases
    def next_release(self) -> int:
        with self._write() as conn:
            conn.execute(self._insert(counters).values(name=_RELEASE_COUNTER, value=0))
            where = counters.c.name == _RELEASE_COUNTER
            conn.execute(update(counters).where(where).values(value=counters.c.value + 1))
            return int(conn.execute(select(counters.c.value).where(where)).scalar_one())

    def add_release(self, record: ReleaseRecord, blobs: Iterable[str],
                    rollout_id: str = "") -> DeviceRecord | None:
        values = {c.name: getattr(record, c.name) for c in releases.columns if c.name != "id"}
        shas = sorted(set(blobs))
        with self._write() as conn:
            found = self._active(conn, record.device_id) if record.device_id else None
            if found is not None and rollout_id:
                self._claim_for_rollout(conn, rollout_id, record.device_id, record.release,
                                        record.created_at_ms)
            conn.execute(insert(releases).values(values))
            if found is None:
                return None
            if shas:
                conn.execute(self._insert(release_blobs),
                             [{"device_id": record.device_id, "sha256": sha} for sha in shas])
            conn.execute(update(devices).where(devices.c.id == record.device_id).values(
                desired_release=record.release, desired_model=record.ref,
                desired_profile=record.profile,
                desired_generation=devices.c.desired_generation + 1,
            ))
            return _device(conn.execute(
                select(devices).where(devices.c.id == record.device_id)).one())

    def desired_manifest(self, device_id: str) -> ReleaseRecord | None:
        if not device_id:
            return None
        stmt = (select(releases).where(releases.c.device_id == device_id)
                .order_by(releases.c.id.desc()).limit(1))
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _release(row)

    def get_release(self, release: int, device_id: str) -> ReleaseRecord | None:
        stmt = (select(releases).where(releases.c.release == release,
                                       releases.c.device_id == device_id)
                .order_by(releases.c.id.desc()).limit(1))
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _release(row)

    def may_fetch(self, device_id: str, sha256: str) -> bool:
        stmt = select(release_blobs.c.sha256).where(release_blobs.c.device_id == device_id,
                                                    release_blobs.c.sha256 == sha256)
        with self._read() as conn:
            return conn.execute(stmt).first() is not None

    def record_deployment(self, device_id: str, report: DeploymentReport) -> DeviceRecord:
        with self._write() as conn:
            found = self._active(conn, device_id)
            conn.execute(update(devices).where(devices.c.id == device_id).values(
                _deployment_values(report)))
        return replace(found, deployment=report)

    # benchmarks
    def add_benchmark(self, record: BenchmarkRecord) -> BenchmarkRecord:
        values = {c.name: getattr(record, c.name) for c in benchmarks.columns if c.name != "id"}
        values["report"] = json.dumps(dict(record.report), sort_keys=True)
        with self._write() as conn:
            if conn.execute(select(devices.c.id).where(devices.c.id == record.device_id)).first() \
                    is None:
                raise NotFound(f"device {record.device_id} not found; see `slmops devices list`")
            key = conn.execute(insert(benchmarks).values(values)).inserted_primary_key
            if key is None:
                raise RuntimeError("the database returned no id for the new benchmark row")
            new_id = key[0]
        return replace(record, id=int(new_id))

    def list_benchmarks(
        self, device_id: str = "", model: str = "", version: str = "", command_id: str = "",
        limit: int = 50,
    ) -> list[BenchmarkRecord]:
        stmt = select(benchmarks).order_by(benchmarks.c.created_at_ms.desc(),
                                           benchmarks.c.id.desc()).limit(limit)
        for column, value in ((benchmarks.c.device_id, device_id), (benchmarks.c.model, model),
                              (benchmarks.c.version, version),
                              (benchmarks.c.command_id, command_id)):
            if value:
                stmt = stmt.where(column == value)
        with self._read() as conn:
            return [_benchmark(r) for r in conn.execute(stmt)]

    # telemetry
    def ingest(self, items: list[IngestItem]) -> list[IngestResult]:
        """``stored`` and ``duplicates`` count samples. Unknown or removed devices store nothing
        (the result carries their last acked seq, 0 if unknown)."""
        if not items:
            return []
        ids = sorted({item.device_id for item in items})
        results: list[IngestResult] = []
        rows: list[tuple[SeriesKey, int, int, float]] = []
        with self._write() as conn:
            state: dict[str, list[int]] = {}  # id -> [acked_through_seq, spool_dropped_total]
            removed: dict[str, int] = {}
            for chunk in _chunks(ids):
                cols = (devices.c.id, devices.c.acked_through_seq,
                        devices.c.spool_dropped_total, devices.c.removed_at_ms)
                stmt = select(*cols).where(devices.c.id.in_(chunk)).with_for_update()
                for dev_id, acked, dropped, removed_at in conn.execute(stmt):
                    if removed_at:
                        removed[dev_id] = acked
                    else:
                        state[dev_id] = [acked, dropped]
            for item in items:
                st = state.get(item.device_id)
                if st is None:
                    results.append(IngestResult(removed.get(item.device_id, 0), 0, 0))
                    continue
                threshold, top, stored, seen = st[0], st[0], 0, set()
                for sample in item.samples:
                    top = max(top, sample.seq)
                    if sample.seq <= threshold or sample.seq in seen:
                        continue
                    seen.add(sample.seq)
                    stored += 1
                    for metric, name, value in sample.values:
                        # NaN would become NULL in SQLite and fail the whole batch.
                        if is_known(metric) and not math.isnan(value):
                            key = (item.device_id, metric, name)
                            rows.append((key, sample.seq, sample.timestamp_ms, value))
                st[0], st[1] = top, max(st[1], item.dropped_total)
                results.append(IngestResult(top, stored, len(item.samples) - stored))
            new_ids = self._resolve_series(conn, {key for key, *_ in rows})
            ids_of = {**self._series_ids, **new_ids} if new_ids else self._series_ids
            if rows:
                conn.execute(self._insert(points), [
                    {"series_id": ids_of[k], "seq": s, "ts_ms": t, "value": v}
                    for k, s, t, v in rows
                ])
            if state:
                conn.execute(
                    update(devices).where(devices.c.id == bindparam("b_id")).values(
                        acked_through_seq=bindparam("b_acked"),
                        spool_dropped_total=bindparam("b_dropped"),
                    ),
                    [{"b_id": k, "b_acked": a, "b_dropped": d} for k, (a, d) in state.items()],
                )
        self._series_ids.update(new_ids)  # only once committed
        return results

    def _resolve_series(self, conn: Connection, keys: set[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids of the series not in the cache yet, created where missing."""
        missing = [k for k in keys if k not in self._series_ids]
        if not missing:
            return {}
        conn.execute(
            self._insert(series),
            [{"device_id": d, "metric": m, "series": s} for d, m, s in missing],
        )
        found: dict[SeriesKey, int] = {}
        for chunk in _chunks(sorted({d for d, _, _ in missing})):
            stmt = select(series.c.id, series.c.device_id, series.c.metric, series.c.series)
            for sid, d, m, s in conn.execute(stmt.where(series.c.device_id.in_(chunk))):
                found[(d, m, s)] = sid
        return found

    def query_points(
        self, device_ids: list[str], metric: str, start_ms: int, end_ms: int
    ) -> list[RawPoint]:
        if not device_ids:
            return []
        out: list[RawPoint] = []
        with self._read() as conn:
            for chunk in _chunks(sorted(set(device_ids))):
                stmt = (
                    select(series.c.device_id, series.c.metric, series.c.series,
                           points.c.ts_ms, points.c.value)
                    .select_from(series.join(points, points.c.series_id == series.c.id))
                    .where(series.c.device_id.in_(chunk), series.c.metric == metric,
                           points.c.ts_ms >= start_ms, points.c.ts_ms < end_ms)
                    .order_by(series.c.device_id, series.c.series, points.c.ts_ms, points.c.seq)
                )
                out.extend(RawPoint(*row) for row in conn.execute(stmt))
        return out

    def apply_retention(self, older_than_ms: int) -> int:
        """Deletes a few hundred series at a time, so ingest waits only briefly meanwhile."""
        with self._read() as conn:
            ids = list(conn.execute(select(series.c.id).order_by(series.c.id)).scalars())
        deleted = 0
        for chunk in _chunks(ids):
            with self._write() as conn:
                stmt = delete(points).where(
                    points.c.series_id.in_(chunk), points.c.ts_ms < older_than_ms
                )
                deleted += conn.execute(stmt).rowcount
        return deleted

    def close(self) -> None:
        self._engine.dispose()
