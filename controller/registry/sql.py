"""ModelRegistry: model versions in SQL, their files under ``models_root/<name>/<version>/``.

Registering is all or nothing. Every entry's directory is first copied (hashing as it goes)
into ``models_root/.incoming/``; then one transaction numbers the versions, renames the copies
into place and inserts the rows. If anything fails, the renamed directories are removed and
the transaction rolls back, so no row points at a missing directory and no directory is left
without a row. The path of a version comes only from its checked name and integer version.

Entries of kind "variant" are device variants of a version (registry/variants.py): registered in
the same transaction, after the models they may refer to.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, insert, select
from sqlalchemy.exc import IntegrityError

from controller.registry import removal
from controller.registry import variant_files as vfiles
from controller.registry.database import Database
from controller.registry.records import (
    MODEL_KINDS,
    EvaluationRecord,
    ModelRecord,
    check_name,
    parse_ref,
)
from controller.registry.schema import evaluations, metadata, models, variants
from controller.registry.variants import (
    META_FILE,
    VARIANTS_DIR,
    VariantEntry,
    VariantRecord,
    check_variant_entry,
    deployable,
    read_variants,
    relative_dir,
    replace_row,
    resolve_model,
    variant_record,
)
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
    listing: tuple[str, ...] = ()  # "path\0size\0sha256\n" per file, in the order hashed


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
    return _Copy(target, total, hashlib.sha256("".join(listing).encode()).hexdigest(), tuple(listing))


def _rewrite_meta(copy: _Copy, meta: Mapping[str, Any]) -> _Copy:
    """The copy with its top-level slmops-variant.json (re)written: its size, listing and digest."""
    data = (json.dumps(dict(meta), indent=2, sort_keys=True) + "\n").encode("utf-8")
    (copy.directory / META_FILE).write_bytes(data)
    line = f"{META_FILE}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n"
    listing = [x for x in copy.listing if not x.startswith(META_FILE + "\0")]
    top = [i for i, x in enumerate(listing) if "/" not in x.split("\0", 1)[0]]
    at = next((i for i in top if listing[i] > line), top[-1] + 1 if top else 0)
    listing.insert(at, line)
    size = sum(int(x.split("\0")[1]) for x in listing)
    return _Copy(copy.directory, size, hashlib.sha256("".join(listing).encode()).hexdigest(), tuple(listing))


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
        must not make the versions twice when the job resumes). Entries of kind "variant" are
        device variants (registry/variants.py); the models are returned, not the variants."""
        return self._register(entries, job_id)[0]

    def _register(self, entries: Sequence[Mapping[str, Any]], job_id: str
                  ) -> tuple[list[ModelRecord], list[VariantRecord]]:
        if not entries:
            raise Invalid("entries: nothing to register")
        checked: list[_Entry] = []
        vchecked: list[VariantEntry] = []
        for i, e in enumerate(entries):
            if isinstance(e, Mapping) and e.get("kind") == "variant":
                vchecked.append(check_variant_entry(i, e))
            else:
                checked.append(_check_entry(i, e))
        pairs = [(json.dumps(v.model, sort_keys=True), v.profile) for v in vchecked]
        for v, pair in zip(vchecked, pairs, strict=True):
            if pairs.count(pair) > 1:
                raise Invalid(f"entries[{v.index}]: a second {v.profile} variant of the same model")
        if job_id:
            done, vdone = self.by_job(job_id), self.variants_by_job(job_id)
            if done or vdone:
                return done, vdone
        staging = Path(tempfile.mkdtemp(dir=self._incoming, prefix="reg-"))
        try:
            copies = [_copy_hashing(e.source, staging / str(i), f"entries[{i}].path")
                      for i, e in enumerate(checked)]
            vcopies = [_copy_hashing(v.source, staging / f"v{v.index}", f"entries[{v.index}].path")
                       for v in vchecked]
            return self._commit(checked, copies, job_id, vchecked, vcopies)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, checked: list[_Entry], copies: list[_Copy], job_id: str,
                vchecked: Sequence[VariantEntry] = (), vcopies: Sequence[_Copy] = ()
                ) -> tuple[list[ModelRecord], list[VariantRecord]]:
        placed: list[Path] = []
        made_parents: list[Path] = []
        displaced: list[tuple[Path, Path]] = []  # (an old variant moved aside, where it was)
        try:
            with self._db.write() as conn:
                self._db.serialize(conn, _VERSIONS_LOCK)  # versions are numbered one at a time
                if job_id:
                    done = conn.execute(select(models).where(models.c.job_id == job_id)
                                        .order_by(models.c.name, models.c.version)).all()
                    vdone = conn.execute(select(variants).where(variants.c.job_id == job_id)
                                         .order_by(variants.c.id)).all()
                    if done or vdone:
                        return [_record(r) for r in done], [variant_record(r) for r in vdone]
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
                registered = {e.name: (r.name, r.version) for e, r in zip(checked, records, strict=True)}
                vrecords = [self._place_variant(conn, entry, copy, registered, job_id, now, placed,
                                                made_parents, displaced)
                            for entry, copy in zip(vchecked, vcopies, strict=True)]
            for old, _where in displaced:
                shutil.rmtree(old, ignore_errors=True)
            return records, vrecords
        except IntegrityError as e:
            self._undo(placed, made_parents, displaced)
            raise Conflict(f"another registration took a version of "
                           f"{', '.join(sorted({c.name for c in checked}))} (or a variant of it) "
                           "meanwhile; register again") from e
        except BaseException:
            self._undo(placed, made_parents, displaced)
            raise

    def _place_variant(self, conn: Any, entry: VariantEntry, copy: _Copy,
                       registered: Mapping[str, tuple[str, int]], job_id: str, now: int, placed: list[Path],
                       made_parents: list[Path], displaced: list[tuple[Path, Path]]) -> VariantRecord:
        name, version = resolve_model(conn, entry, registered, self.models_root)
        relative = relative_dir(name, version, entry.profile)
        built = _read_meta(copy.directory)  # the builder's; the row's facts win where they differ
        built_gate = built.get("gate")
        gate = built_gate if isinstance(built_gate, dict) else {}
        meta = {**built, "model": f"{name}:{version}", "profile": entry.profile, "precision": entry.precision,
                "provider": entry.provider, "runtime": entry.runtime, "build": entry.build,
                "metrics": entry.metrics, "gate": {**gate, "status": entry.status, "reason": entry.reason}}
        copy = _rewrite_meta(copy, meta)
        final = self.models_root / relative
        for parent in reversed(final.parents):
            if parent.is_relative_to(self.models_root) and parent != self.models_root and not parent.exists():
                parent.mkdir()
                made_parents.append(parent)
        if final.exists():  # built before: the new one takes its place once this commits
            aside = self._incoming / f"old-{uuid.uuid4().hex[:12]}"
            os.rename(final, aside)
            displaced.append((aside, final))
        os.rename(copy.directory, final)
        placed.append(final)
        record = VariantRecord(name=name, version=version, profile=entry.profile, precision=entry.precision,
                               provider=entry.provider, runtime=entry.runtime, status=entry.status,
                               reason=entry.reason, size_bytes=copy.size_bytes, sha256=copy.sha256,
                               path=relative, metrics=entry.metrics, build=entry.build, created_at_ms=now,
                               job_id=job_id)
        replace_row(conn, record)
        vfiles.write(conn, record, vfiles.from_listing(copy.listing))
        return record

    @staticmethod
    def _undo(placed: list[Path], made_parents: list[Path],
              displaced: Sequence[tuple[Path, Path]] = ()) -> None:
        for directory in placed:
            shutil.rmtree(directory, ignore_errors=True)
        for old, where in reversed(displaced):
            try:
                os.rename(old, where)
            except OSError:
                shutil.rmtree(old, ignore_errors=True)
        for parent in reversed(made_parents):
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

    # From here on, ``list`` in this class's annotations would name this method: builtins.list.
    def list(self, name: str | None = None) -> builtins.list[ModelRecord]:
        stmt = select(models).order_by(models.c.name, models.c.version)
        if name is not None:
            stmt = stmt.where(models.c.name == check_name("name", name))
        with self._db.read() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def by_job(self, job_id: str) -> builtins.list[ModelRecord]:
        with self._db.read() as conn:
            return [_record(r) for r in conn.execute(select(models).where(
                models.c.job_id == job_id).order_by(models.c.name, models.c.version))]

    def path(self, record: ModelRecord) -> Path:
        """The version's directory, from its checked name and integer version only."""
        return self.models_root / check_name("name", record.name) / str(int(record.version))

    # delete
    def dependents(self, ref: str) -> builtins.list[str]:
        """"NAME:VERSION (kind, how)" of every version built on ``ref`` (see removal.py)."""
        record = self.get(ref)
        return removal.dependents(record, self.path(record), [(r, self.path(r)) for r in self.list()])

    def delete(self, ref: str, used_by: Sequence[str] = ()
               ) -> tuple[ModelRecord, builtins.list[VariantRecord]]:
        """Delete the version ``ref`` (NAME:VERSION), its evaluations, variants and files; InUse
        naming every user when ``used_by`` (the fleet's: devices, rollouts) or its dependents
        are not empty. Returns what was deleted."""
        record = self.get(ref)
        users = [*used_by, *self.dependents(record.ref)]
        if users:
            raise removal.InUse(f"{record.ref} is in use, not deleted: {'; '.join(users)}. Assign "
                                "those devices another model, and delete the versions built on it "
                                "first")
        gone = self.variants(record.ref)
        directories = [self.path(record), *(self.variant_path(v) for v in gone)]
        moved: builtins.list[tuple[Path, Path]] = []
        try:
            with self._db.write() as conn:
                self._db.serialize(conn, _VERSIONS_LOCK)
                removal.delete_rows(conn, record)
                moved = removal.move_aside(directories, self._incoming)
        except BaseException:
            removal.put_back(moved)
            raise
        variants_dir = self.models_root / VARIANTS_DIR / record.name
        removal.remove(moved, [variants_dir / str(record.version), variants_dir,
                               self.models_root / record.name])
        return record, gone

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

    def evaluations(self, ref: str) -> builtins.list[EvaluationRecord]:
        record = self.get(ref)
        with self._db.read() as conn:
            return [_evaluation(r) for r in conn.execute(
                select(evaluations).where(evaluations.c.name == record.name,
                                          evaluations.c.version == record.version)
                .order_by(evaluations.c.created_at_ms, evaluations.c.id))]

    # device variants
    def add_variants(self, ref: str, entries: Sequence[Mapping[str, Any]],
                     job_id: str = "") -> builtins.list[VariantRecord]:
        """Record variants of the version ``ref`` (entries as in a registration, kind "variant",
        without "model"), all or none; a profile built before is replaced."""
        record = self.get(ref)
        if not entries:
            raise Invalid("entries: no variants to add")
        linked = [{**e, "kind": "variant", "model": {"registered": record.ref}} for e in entries]
        return self._register(linked, job_id)[1]

    def variants(self, ref: str) -> builtins.list[VariantRecord]:
        """Every variant of the version ``ref``, passed or failed, by profile name."""
        record = self.get(ref)
        with self._db.read() as conn:
            return read_variants(conn, record.name, record.version)

    def variants_by_job(self, job_id: str) -> builtins.list[VariantRecord]:
        with self._db.read() as conn:
            return [variant_record(r) for r in conn.execute(
                select(variants).where(variants.c.job_id == job_id).order_by(variants.c.id))]

    def variant(self, ref: str, profile: str) -> VariantRecord:
        """The variant of ``ref`` for ``profile``, whatever its status; NotFound if never built."""
        found = [v for v in self.variants(ref) if v.profile == profile]
        if not found:
            raise NotFound(f"{self.get(ref).ref} has no variant for profile {profile!r}; build it with "
                           f"`slmops build {self.get(ref).ref} --profiles {profile}`")
        return found[0]

    def deployable_variant(self, ref: str, profile: str) -> VariantRecord:
        """The variant of ``ref`` for ``profile`` that passed its gates. Raises NotDeployable
        (a NotFound) saying why there is none: never built, or failed (with its reason)."""
        record = self.get(ref)
        return deployable(self.variants(record.ref), record.ref, profile)

    def all_variants(self) -> builtins.list[VariantRecord]:
        with self._db.read() as conn:
            return [variant_record(r) for r in conn.execute(
                select(variants).order_by(variants.c.name, variants.c.version, variants.c.profile))]

    def variant_files(self, variant: VariantRecord) -> builtins.list[vfiles.VariantFile]:
        """The variant's files as recorded when it was registered, by path. For a variant
        registered before files were recorded one by one, they are recovered once from disk
        if they still match its recorded digest (DamagedVariant if not); see variant_files.py."""
        with self._db.read() as conn:
            found = vfiles.read(conn, variant)
        if found:
            return found
        recovered = vfiles.recover(self.variant_path(variant), variant)
        with self._db.write() as conn:
            current = conn.execute(select(variants.c.sha256).where(
                variants.c.name == variant.name, variants.c.version == variant.version,
                variants.c.profile == variant.profile)).scalar()
            if current == variant.sha256 and not vfiles.read(conn, variant):  # not rebuilt meanwhile
                vfiles.write(conn, variant, recovered)
        return sorted(recovered, key=lambda f: f.path)

    def variant_path(self, variant: VariantRecord) -> Path:
        """The variant's directory, from its checked name, integer version and profile only."""
        return self.models_root / relative_dir(variant.name, variant.version, variant.profile)


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
