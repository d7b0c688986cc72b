"""Deleting a model version: who still uses it (lineage), and the removal itself.

A version is another's base when that version's lineage names it — ``{"registered":
"NAME:VERSION"}``, ``"registry:NAME:VERSION"``, or its directory — anywhere (a fine-tune's
``base``, a distillation's ``teacher``, a borrowed ``tokenizer``), or when its directory is a
LoRA adapter whose ``adapter_config.json`` names this version's directory as its base. Who
deploys it (devices, rollouts) is the fleet's to say; the caller passes that in.

The removal is one transaction: the rows of the version, its evaluations, its variants and
their recorded files; the directories are first moved aside into the registry's incoming
folder and removed only once the rows are gone (renamed back if the transaction fails).
Delivery blobs are not touched: they are named by content and shared, and a release issued
before may still name them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete

from controller.registry.records import ModelRecord
from controller.registry.schema import evaluations, models, variant_files, variants
from controller.store import Conflict


class InUse(Conflict):
    """A version that is deployed or that another version is built on; the message names them."""


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, key)
    elif isinstance(value, str):
        yield key, value


def _adapter_base(directory: Path) -> str:
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) else ""


def dependents(target: ModelRecord, target_dir: Path, others: Iterable[tuple[ModelRecord, Path]]
               ) -> list[str]:
    """"NAME:VERSION (how)" of every other version built on ``target``."""
    names = {f"registry:{target.ref}", str(target_dir), str(target_dir.resolve())}
    found = []
    for record, directory in others:
        if record.ref == target.ref:
            continue
        how = ""
        base = _adapter_base(directory)
        if base and (base in names or Path(base).resolve() == target_dir.resolve()):
            how = "LoRA adapter on it"
        else:
            for key, value in _strings(record.lineage):
                if (key == "registered" and value == target.ref) or value in names:
                    how = f"lineage {key}" if key else "lineage"
                    break
        if how:
            found.append(f"{record.ref} ({record.kind}, {how})")
    return found


def delete_rows(conn: Connection, record: ModelRecord) -> None:
    for table in (variant_files, variants, evaluations, models):
        conn.execute(delete(table).where(table.c.name == record.name, table.c.version == record.version))


def move_aside(directories: Iterable[Path], incoming: Path) -> list[tuple[Path, Path]]:
    """Each existing directory renamed into ``incoming``: (where it is now, where it was)."""
    moved = []
    for directory in directories:
        if directory.exists():
            aside = incoming / f"deleted-{uuid.uuid4().hex[:12]}"
            os.rename(directory, aside)
            moved.append((aside, directory))
    return moved


def put_back(moved: Iterable[tuple[Path, Path]]) -> None:
    for aside, where in moved:
        try:
            os.rename(aside, where)
        except OSError:
            pass  # left in incoming: removed as stale after a day


def remove(moved: Iterable[tuple[Path, Path]], empty_parents: Iterable[Path]) -> None:
    for aside, _where in moved:
        shutil.rmtree(aside, ignore_errors=True)
    for parent in empty_parents:
        try:
            parent.rmdir()
        except OSError:
            pass  # another version is still there
