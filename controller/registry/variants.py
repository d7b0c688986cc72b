"""Device variants in the registry: one row per (model version, profile), with the variant's
files under ``models_root/.variants/<name>/<version>/<profile>/``.

A variant arrives as an entry of kind "variant" in a registration (result.json of a job, see
steps/build.py), or through ``ModelRegistry.add_variants``. Its ``model`` says which version it
was built from: ``{"entry": NAME}`` (a model registered by the same registration),
``{"registered": "NAME:VERSION"}``, or ``{"path": DIR}`` (a version's directory in this
registry, as a job's worker sees a ``registry:`` reference). Building a profile again for the
same version replaces the row and the directory. A failed variant is kept, with its reason,
and is never deployable: :meth:`ModelRegistry.deployable_variant` returns a passed one only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select

from controller.registry.records import check_name, parse_ref
from controller.registry.schema import models, variants
from controller.store import NotFound
from controller.validation import Invalid

VARIANTS_DIR = ".variants"
STATUSES = ("passed", "failed")
PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PRECISIONS = ("int4", "int8", "fp16", "fp32", "bf16")
RUNTIMES = ("onnxruntime-genai", "onnxruntime")
META_FILE = "slmops-variant.json"


class NotDeployable(NotFound):
    """No variant of this model for this profile may be deployed; the message says why."""


@dataclass(frozen=True)
class VariantRecord:
    name: str
    version: int
    profile: str
    precision: str
    provider: str
    runtime: str
    status: str  # "passed" | "failed"
    reason: str  # why it failed its gates; "" if it passed
    size_bytes: int
    sha256: str  # of the directory's file list (every file's relative path, size and sha256)
    path: str  # relative to models_root: ".variants/<name>/<version>/<profile>"
    metrics: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)  # builder, options, gates applied
    created_at_ms: int = 0
    job_id: str = ""

    @property
    def model_ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def deployable(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class VariantEntry:
    """A checked variant entry, before its model is resolved."""

    index: int
    model: dict[str, str]
    profile: str
    precision: str
    provider: str
    runtime: str
    status: str
    reason: str
    metrics: dict[str, Any]
    build: dict[str, Any]
    source: Path


def _text(where: str, entry: Mapping[str, Any], key: str, allowed: tuple[str, ...] | None = None,
          default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        expected = f"one of {', '.join(allowed)}" if allowed else "a string"
        raise Invalid(f"{where}.{key}: expected {expected}, got {value!r}")
    return value


def _object(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{where}: expected an object, got {type(value).__name__}")
    try:
        return dict(json.loads(json.dumps(value, allow_nan=False)))
    except (TypeError, ValueError) as e:
        raise Invalid(f"{where}: not plain JSON ({e})") from None


def check_variant_entry(index: int, entry: Mapping[str, Any], where: str | None = None) -> VariantEntry:
    where = where or f"entries[{index}]"
    model = entry.get("model")
    if not isinstance(model, Mapping) or len(model) != 1 or next(iter(model)) not in (
            "entry", "registered", "path") or not isinstance(next(iter(model.values())), str):
        raise Invalid(f"{where}.model: expected {{\"entry\": NAME}}, {{\"registered\": \"NAME:VERSION\"}} "
                      f"or {{\"path\": DIR}}, got {model!r}")
    profile = _text(where, entry, "profile")
    if not PROFILE_RE.match(profile):
        raise Invalid(f"{where}.profile: {profile!r} is not a profile name (1-63 lowercase letters, "
                      "digits, '.', '_' or '-')")
    status = _text(where, entry, "status", STATUSES)
    reason = _text(where, entry, "reason", default="")
    if status == "failed" and not reason.strip():
        raise Invalid(f"{where}.reason: a failed variant needs the reason it failed")
    path = entry.get("path")
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise Invalid(f"{where}.path: expected the variant's directory, got {path!r}")
    source = Path(path)
    if source.is_symlink() or not source.is_dir():
        raise Invalid(f"{where}.path: {source} is not a directory")
    return VariantEntry(index, dict(model), profile, _text(where, entry, "precision", PRECISIONS),
                        _text(where, entry, "provider", ("cpu", "cuda")),
                        _text(where, entry, "runtime", RUNTIMES), status, reason,
                        _object(f"{where}.metrics", entry.get("metrics")),
                        _object(f"{where}.build", entry.get("build")), source)


def relative_dir(name: str, version: int, profile: str) -> str:
    """Where a variant lives under models_root; from checked parts only."""
    check_name("name", name)
    if not PROFILE_RE.match(profile):
        raise Invalid(f"profile: {profile!r} is not a profile name")
    return f"{VARIANTS_DIR}/{name}/{int(version)}/{profile}"


def resolve_model(conn: Connection, entry: VariantEntry, registered: Mapping[str, tuple[str, int]],
                  models_root: Path) -> tuple[str, int]:
    """(name, version) of the model a variant entry was built from, or Invalid naming it."""
    where = f"entries[{entry.index}].model"
    (kind, value), = entry.model.items()
    if kind == "entry":
        if value not in registered:
            raise Invalid(f"{where}: {value!r} is not a model of this registration")
        return registered[value]
    if kind == "registered":
        name, version = parse_ref(value, where)
        if version is None:
            raise Invalid(f"{where}: {value!r} names no version; use NAME:VERSION")
    else:
        try:
            relative = Path(value).resolve().relative_to(Path(models_root).resolve())
        except ValueError:
            raise Invalid(f"{where}: {value} is not a model directory of this registry") from None
        parts = relative.parts
        if len(parts) != 2 or not parts[1].isdigit():
            raise Invalid(f"{where}: {value} is not a model version's directory (NAME/VERSION)")
        name, version = check_name(where, parts[0]), int(parts[1])
    found = conn.execute(select(models.c.name).where(models.c.name == name,
                                                     models.c.version == version)).first()
    if found is None:
        raise Invalid(f"{where}: no model {name}:{version} in the registry to attach the variant to")
    return name, version


def variant_record(row: Row[Any]) -> VariantRecord:
    m = dict(row._mapping)
    m.pop("id", None)
    m["metrics"] = json.loads(m["metrics"])
    m["build"] = json.loads(m["build"])
    return VariantRecord(**m)


def replace_row(conn: Connection, record: VariantRecord) -> None:
    conn.execute(delete(variants).where(variants.c.name == record.name, variants.c.version == record.version,
                                        variants.c.profile == record.profile))
    conn.execute(insert(variants).values({**record.__dict__, "metrics": json.dumps(record.metrics),
                                          "build": json.dumps(record.build)}))


def read_variants(conn: Connection, name: str, version: int) -> list[VariantRecord]:
    return [variant_record(r) for r in conn.execute(
        select(variants).where(variants.c.name == name, variants.c.version == version)
        .order_by(variants.c.profile))]


def deployable(records: list[VariantRecord], ref: str, profile: str) -> VariantRecord:
    for record in records:
        if record.profile == profile:
            if record.deployable:
                return record
            raise NotDeployable(f"the {profile} variant of {ref} failed its gates ({record.reason}); "
                                "it can't be deployed; rebuild it or relax the profile's gates")
    built = ", ".join(r.profile for r in records) or "none"
    raise NotDeployable(f"{ref} has no variant for profile {profile!r} (built: {built}); build it with "
                        f"`slmops build {ref} --profiles {profile}`")
