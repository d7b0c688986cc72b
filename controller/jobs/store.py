"""The jobs table: what was submitted, where it stands, and what it produced.

A job is queued, then running (once per attempt), then succeeded, failed or cancelled; a
finished job never changes again (every update is guarded by the status it expects).
"""

from __future__ import annotations

import builtins  # JobStore.list shadows the builtin in annotations of its class
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from controller.jobs.states import TERMINAL, JobState
from controller.registry.database import Database
from controller.store import NotFound
from controller.validation import Invalid

KINDS = ("recipe", "eval", "build")
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
STATUSES = tuple(JobState)
JOB_ID_RE = re.compile(r"^j-[0-9a-f]{12}$")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("recipe_name", String(255), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("progress", Text, nullable=False, default="{}"),
    Column("error", Text, nullable=False, default=""),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger, nullable=False, default=0),
    Column("finished_at_ms", BigInteger, nullable=False, default=0),
    Column("models", Text, nullable=False, default="[]"),  # refs registered, "name:version"
    Column("attempts", Integer, nullable=False, default=0),
    Column("target", String(128), nullable=False, default=""),  # eval jobs: the model ref
    Column("result", Text, nullable=False, default="{}"),  # eval jobs: the metrics
    Index("ix_jobs_status", "status", "created_at_ms"),
)


def new_job_id() -> str:
    return "j-" + secrets.token_hex(6)


def check_job_id(field_name: str, value: str) -> str:
    if not JOB_ID_RE.match(value or ""):
        raise Invalid(f"{field_name}: {value[:40]!r} is not a job id (j- and 12 hex digits); "
                      "see `slmops jobs list`")
    return value


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    recipe_name: str
    status: str
    created_at_ms: int
    progress: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    started_at_ms: int = 0
    finished_at_ms: int = 0
    models: tuple[str, ...] = ()
    attempts: int = 0
    target: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def _job(row: Row[Any]) -> JobRecord:
    m = dict(row._mapping)
    m["progress"] = json.loads(m["progress"])
    m["result"] = json.loads(m["result"])
    m["models"] = tuple(json.loads(m["models"]))
    return JobRecord(**m)


def _values(job: JobRecord) -> dict[str, Any]:
    return {**job.__dict__, "progress": json.dumps(job.progress), "result": json.dumps(job.result),
            "models": json.dumps(list(job.models))}


class JobStore:
    def __init__(self, db_url: str) -> None:
        self._db = Database(db_url, metadata, "job store")

    def close(self) -> None:
        self._db.close()

    def create(self, job: JobRecord) -> JobRecord:
        with self._db.write() as conn:
            conn.execute(insert(jobs).values(_values(job)))
        return job

    def get(self, job_id: str) -> JobRecord:
        with self._db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}; see `slmops jobs list`")
        return _job(row)

    def list(self, statuses: Sequence[str] = (), limit: int = 100) -> builtins.list[JobRecord]:
        """Newest first."""
        stmt = select(jobs).order_by(jobs.c.created_at_ms.desc(), jobs.c.id.desc()).limit(limit)
        if statuses:
            stmt = stmt.where(jobs.c.status.in_(list(statuses)))
        with self._db.read() as conn:
            return [_job(r) for r in conn.execute(stmt)]

    def queued(self) -> builtins.list[JobRecord]:
        """Oldest first: the order they run in."""
        with self._db.read() as conn:
            return [_job(r) for r in conn.execute(select(jobs).where(jobs.c.status == JobState.QUEUED)
                                                  .order_by(jobs.c.created_at_ms, jobs.c.id))]

    def _transition(self, job_id: str, expected: Sequence[str], **values: Any) -> JobRecord | None:
        """Apply ``values`` if the job's status is one of ``expected``; the job after, or None
        if its status was something else (someone else moved it first)."""
        for key in ("progress", "result"):
            if key in values:
                values[key] = json.dumps(values[key])
        if "models" in values:
            values["models"] = json.dumps(list(values["models"]))
        with self._db.write() as conn:
            changed = conn.execute(update(jobs).where(
                jobs.c.id == job_id, jobs.c.status.in_(list(expected))).values(**values)).rowcount
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}; see `slmops jobs list`")
        return _job(row) if changed else None

    def start(self, job_id: str, now_ms: int) -> JobRecord | None:
        """queued -> running, one more attempt."""
        current = self.get(job_id)
        return self._transition(job_id, (JobState.QUEUED,), status=JobState.RUNNING, started_at_ms=now_ms,
                                attempts=current.attempts + 1, error="")

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._transition(job_id, (JobState.RUNNING,), progress=progress)

    def requeue(self, job_id: str) -> JobRecord | None:
        """running -> queued: its worker stopped with the controller; it resumes later."""
        return self._transition(job_id, (JobState.RUNNING,), status=JobState.QUEUED)

    def requeue_interrupted(self) -> builtins.list[JobRecord]:
        """Every job a controller left running (it died or stopped): back in the queue."""
        requeued = (self.requeue(job.id) for job in self.list((JobState.RUNNING,), limit=10_000))
        return [job for job in requeued if job is not None]

    def finish(self, job_id: str, status: str, now_ms: int, *, error: str = "",
               models: Sequence[str] = (), result: dict[str, Any] | None = None,
               expected: Sequence[str] = ACTIVE) -> JobRecord | None:
        if status not in TERMINAL:
            raise ValueError(f"status: {status!r} is not one of {', '.join(sorted(TERMINAL))}")
        values: dict[str, Any] = {"status": status, "finished_at_ms": now_ms, "error": error,
                                  "models": list(models)}
        if result is not None:
            values["result"] = result
        return self._transition(job_id, expected, **values)


__all__ = ["ACTIVE", "KINDS", "STATUSES", "TERMINAL", "JobRecord", "JobStore", "check_job_id", "new_job_id"]
