"""ModelRegistry: model versions in SQL, their files under ``models_root/<name>/<version>/``.

Registering is all or nothing. Every entry's directory is first copied (hashing as it goes)
into ``models_root/.incoming/``; then one transaction numbers the versions, renames the copies
into place and inserts the rows. If anything fails, the renamed directories are removed and
the transaction rolls back, so no row points at a missing directory and no directory is left
without a row. The path of a version comes only from its checked name and integer version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, insert, select
from sqlalchemy.exc import IntegrityError

from controller.registry.database import Database
from controller.registry.records import (
    MODEL_KINDS,
    EvaluationRecord,
    ModelRecord,
    check_name,
    parse_ref,
)
from controller.registry.schema import evaluations, metadata, models
from controller.store import Conflict, NotFound
from controller.validation import Invalid

INCOMING = ".incoming"
STALE_INCOMING_S = 24 * 3600  # a copy this old belongs to a process that died mid-registration
_CHUNK = 1 << 20
_VERSIONS_LOCK = 0x736C6D6F70730001  # PostgreSQL advisory lock key: "slmops" + 1


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    source: Path
    params: int
    metrics: dict[str, Any]
    lineage: dict[str, Any]


@dataclass(frozen=True)
class _Copy:
    directory: Path
    size_bytes: int
    sha256: str


def _json_object(field: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{field}: expected an object, got {type(value).__name__}")
    try:
        return dict(json.loads(json.dumps(value, allow_nan=False)))
    except (TypeError, ValueError) as e:
        raise Invalid(f"{field}: not plain JSON ({e})") from None


def _check_entry(index: int, entry: Mapping[str, Any]) -> _Entry:
    where = f"entries[{index}]"
    if not isinstance(entry, Mapping):
        raise Invalid(f"{where}: expected an object with name, kind and path")
    name = check_name(f"{where}.name", entry.get("name"))
    kind = entry.get("kind")
    if kind not in MODEL_KINDS:
        raise Invalid(f"{where}.kind: {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    path = entry.get("path")
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise Invalid(f"{where}.path: expected the model's directory, got {path!r}")
    source = Path(path)
    if source.is_symlink() or not source.is_dir():
        raise Invalid(f"{where}.path: {source} is not a directory")
    params = entry.get("params") or 0
    if isinstance(params, bool) or not isinstance(params, int) or params < 0:
        raise Invalid(f"{where}.params: {params!r} is not a non-negative integer")
    return _Entry(name, kind, source, params, _json_object(f"{where}.metrics", entry.get("metrics")),
                  _json_object(f"{where}.lineage", entry.get("lineage")))


def _copy_hashing(source: Path, target: Path, field: str) -> _Copy:
    """Copy ``source``'s regular files into the new directory ``target``; symlinks and special
    files are refused (a model directory holds neither)."""
    listing: list[str] = []
    total = 0
    for root, dirs, files in os.walk(source):
        dirs.sort()
        rel_root = Path(root).relative_to(source)
        (target / rel_root).mkdir(exist_ok=True)
        for name in sorted(files) + [d for d in dirs if (Path(root) / d).is_symlink()]:
            src = Path(root) / name
            rel = (rel_root / name).as_posix()
            if src.is_symlink() or not src.is_file():
                raise Invalid(f"{field}: {rel} in {source} is a symlink or a special file; "
                              "a model directory may hold regular files only")
            digest = hashlib.sha256()
            size = 0
            with src.open("rb") as fin, (target / rel).open("wb") as fout:
                while block := fin.read(_CHUNK):
                    digest.update(block)
                    fout.write(block)
                    size += len(block)
                fout.flush()
                os.fsync(fout.fileno())
            listing.append(f"{rel}\0{size}\0{digest.hexdigest()}\n")
            total += size
    if not listing:
        raise Invalid(f"{field}: {source} holds no files")
    return _Copy(target, total, hashlib.sha256("".join(listing).encode()).hexdigest())


def _link_lineage(records: list[ModelRecord], checked: list[_Entry]) -> None:
    """A lineage link (``teacher``, ``base``) to another entry of the same registration
    (``{"entry": NAME}``) gets that entry's registered reference: ``{"registered": "NAME:V"}``."""
    registered = {entry.name: record.ref for entry, record in zip(checked, records, strict=True)}
    for record in records:
        for key in ("teacher", "base"):
            link = record.lineage.get(key)
            if isinstance(link, dict) and link.get("entry") in registered:
                record.lineage[key] = {**link, "registered": registered[link["entry"]]}


def _record(row: Row[Any]) -> ModelRecord:
    m = dict(row._mapping)
    m["metrics"] = json.loads(m["metrics"])
    m["lineage"] = json.loads(m["lineage"])
    return ModelRecord(**m)


def _evaluation(row: Row[Any]) -> EvaluationRecord:
    m = dict(row._mapping)
    m.pop("id")
    m["metrics"] = json.loads(m["metrics"])
    return EvaluationRecord(**m)


class ModelRegistry:
    def __init__(self, db_url: str, models_root: Path) -> None:
        self.models_root = Path(models_root)
        self._incoming = self.models_root / INCOMING
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._db = Database(db_url, metadata, "model registry")
        self._remove_stale_incoming()

    def close(self) -> None:
        self._db.close()

    def _remove_stale_incoming(self) -> None:
        cutoff = time.time() - STALE_INCOMING_S
        for leftover in self._incoming.iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue  # another process removed it meanwhile

    # register
    def register(self, entries: Sequence[Mapping[str, Any]], job_id: str = "") -> list[ModelRecord]:
        """Copy and record every entry, or none. With ``job_id``, registering again for the same
        job returns what that job registered (a controller that died right after registering
        must not make the versions twice when the job resumes)."""
        if not entries:
            raise Invalid("entries: nothing to register")
        checked = [_check_entry(i, e) for i, e in enumerate(entries)]
        if job_id and (done := self.by_job(job_id)):
            return done
        staging = Path(tempfile.mkdtemp(dir=self._incoming, prefix="reg-"))
        try:
            copies = [_copy_hashing(e.source, staging / str(i), f"entries[{i}].path")
                      for i, e in enumerate(checked)]
            return self._commit(checked, copies, job_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, checked: list[_Entry], copies: list[_Copy], job_id: str) -> list[ModelRecord]:
        placed: list[Path] = []
        made_parents: list[Path] = []
        try:
            with self._db.write() as conn:
                self._db.serialize(conn, _VERSIONS_LOCK)  # versions are numbered one at a time
                if job_id:
                    done = conn.execute(select(models).where(models.c.job_id == job_id)
                                        .order_by(models.c.name, models.c.version)).all()
                    if done:
                        return [_record(r) for r in done]
                next_version: dict[str, int] = {}
                records = []
                now = int(time.time() * 1000)
                for entry, copy in zip(checked, copies, strict=True):
                    if entry.name not in next_version:
                        top = conn.execute(select(func.max(models.c.version))
                                           .where(models.c.name == entry.name)).scalar()
                        next_version[entry.name] = (top or 0) + 1
                    version = next_version[entry.name]
                    next_version[entry.name] += 1
                    parent = self.models_root / entry.name
                    if not parent.exists():
                        parent.mkdir()
                        made_parents.append(parent)
                    final = parent / str(version)
                    if final.exists():  # no row has this version: a crash left it behind
                        shutil.rmtree(final)
                    os.rename(copy.directory, final)
                    placed.append(final)
                    record = ModelRecord(
                        name=entry.name, version=version, kind=entry.kind, params=entry.params,
                        size_bytes=copy.size_bytes, metrics=entry.metrics, lineage=entry.lineage,
                        created_at_ms=now, job_id=job_id, path=f"{entry.name}/{version}",
                        sha256=copy.sha256)
                    records.append(record)
                _link_lineage(records, checked)
                for record in records:
                    values = {**record.__dict__, "metrics": json.dumps(record.metrics),
                              "lineage": json.dumps(record.lineage)}
                    conn.execute(insert(models).values(values))
            return records
        except IntegrityError as e:
            self._undo(placed, made_parents)
            raise Conflict(f"another registration took a version of "
                           f"{', '.join(sorted({c.name for c in checked}))} meanwhile; "
                           "register again") from e
        except BaseException:
            self._undo(placed, made_parents)
            raise

    @staticmethod
    def _undo(placed: list[Path], made_parents: list[Path]) -> None:
        for directory in placed:
            shutil.rmtree(directory, ignore_errors=True)
        for parent in made_parents:
            try:
                parent.rmdir()
            except OSError:
                pass  # not empty: another version was placed there meanwhile

    # read
    def get(self, ref: str) -> ModelRecord:
        name, version = parse_ref(ref)
        stmt = select(models).where(models.c.name == name)
        stmt = (stmt.order_by(models.c.version.desc()).limit(1) if version is None
                else stmt.where(models.c.version == version))
        with self._db.read() as conn:
            row = conn.execute(stmt).first()
            if row is not None:
                return _record(row)
            versions = [v for (v,) in conn.execute(select(models.c.version).where(
                models.c.name == name).order_by(models.c.version))]
        if not versions:
            raise NotFound(f"no model named {name!r} in the registry; see `slmops models list`")
        raise NotFound(f"model {name!r} has no version {version} (it has "
                       f"{', '.join(map(str, versions))}); see `slmops models list`")

    def list(self, name: str | None = None) -> list[ModelRecord]:
        stmt = select(models).order_by(models.c.name, models.c.version)
        if name is not None:
            stmt = stmt.where(models.c.name == check_name("name", name))
        with self._db.read() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def by_job(self, job_id: str) -> list[ModelRecord]:
        with self._db.read() as conn:
            return [_record(r) for r in conn.execute(select(models).where(
                models.c.job_id == job_id).order_by(models.c.name, models.c.version))]

    def path(self, record: ModelRecord) -> Path:
        """The version's directory, from its checked name and integer version only."""
        return self.models_root / check_name("name", record.name) / str(int(record.version))

    # evaluations
    def add_evaluation(self, ref: str, eval_name: str, metrics: Mapping[str, Any],
                       job_id: str = "") -> EvaluationRecord:
        if not isinstance(eval_name, str) or not eval_name.strip() or len(eval_name) > 255:
            raise Invalid(f"eval_name: {eval_name!r} must be 1-255 characters")
        record = self.get(ref)
        evaluation = EvaluationRecord(record.name, record.version, eval_name,
                                      _json_object("metrics", dict(metrics)),
                                      int(time.time() * 1000), job_id)
        with self._db.write() as conn:
            conn.execute(insert(evaluations).values(
                {**evaluation.__dict__, "metrics": json.dumps(evaluation.metrics)}))
        return evaluation

    def evaluations(self, ref: str) -> list[EvaluationRecord]:
        record = self.get(ref)
        with self._db.read() as conn:
            return [_evaluation(r) for r in conn.execute(
                select(evaluations).where(evaluations.c.name == record.name,
                                          evaluations.c.version == record.version)
                .order_by(evaluations.c.created_at_ms, evaluations.c.id))]
