"""Model directories on disk: the modelkit's error type, writing a directory under a temporary
name and renaming it into place, fsync, size on disk, and the ``slmops.json`` beside the
weights. Light: no torch here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

META_FILE = "slmops.json"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelError(ValueError):
    """A model or tokenizer that can't be built or loaded; the message says what to do."""


def temp_dir_beside(path: Path) -> Path:
    """A new empty directory next to ``path`` (same filesystem, so a rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and the directories themselves."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Make the complete directory ``tmp`` appear at ``dest``. An existing ``dest`` is moved
    aside first and removed only once ``tmp`` is in place."""
    tmp, dest = Path(tmp), Path(dest)
    fsync_tree(tmp)
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    parent = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_meta(model_dir: Path, meta: Mapping[str, Any]) -> None:
    """Write ``slmops.json`` (kind, params, base, ...) into a model directory being built."""
    (Path(model_dir) / META_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")


def read_meta(model_dir: Path) -> dict[str, Any]:
    """``slmops.json`` of a model directory, or {} when it has none (e.g. a hub download)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return meta


def dir_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (or of ``path`` itself if it is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total
