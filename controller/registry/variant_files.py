"""The recorded files of a device variant, and checks of the bytes on disk against them.

Registration hashes every file as it copies it (registry/sql.py); the (path, size, sha256) of
each is stored in ``variant_files`` in the same transaction as the variant's row. Those values
are the truth: nothing re-derives them from the bytes on disk later.

A variant registered before that table existed has no rows. Its row does hold, since its first
release, the digest of the listing of its files (``VariantRecord.sha256``: every file's path,
size and sha256, in the order hashed). So the first use hashes the files on disk, rebuilds that
listing, and stores the rows only if its digest is the recorded one; otherwise the variant is
reported damaged (which file can't be told then) and must be rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from controller.registry.schema import variant_files
from controller.registry.variants import VariantRecord

_CHUNK = 1 << 20


@dataclass(frozen=True)
class VariantFile:
    path: str  # relative to the variant's directory, "/"-separated
    size_bytes: int
    sha256: str


class DamagedVariant(Exception):
    """A variant's files on disk don't match what was recorded; the message names the file
    (when it can be told) and the command that rebuilds the variant."""


def rebuild_command(variant: VariantRecord) -> str:
    return f"slmops build {variant.model_ref} --profiles {variant.profile}"


def from_listing(listing: tuple[str, ...]) -> list[VariantFile]:
    """The files of a registration's listing ("path\\0size\\0sha256\\n" per file)."""
    out = []
    for line in listing:
        path, size, sha = line.rstrip("\n").split("\0")
        out.append(VariantFile(path, int(size), sha))
    return out


def write(conn: Connection, variant: VariantRecord, files: list[VariantFile]) -> None:
    key = (variant_files.c.name == variant.name, variant_files.c.version == variant.version,
           variant_files.c.profile == variant.profile)
    conn.execute(delete(variant_files).where(*key))
    if files:
        conn.execute(insert(variant_files), [
            {"name": variant.name, "version": variant.version, "profile": variant.profile,
             "path": f.path, "size_bytes": f.size_bytes, "sha256": f.sha256} for f in files])


def read(conn: Connection, variant: VariantRecord) -> list[VariantFile]:
    rows = conn.execute(select(variant_files.c.path, variant_files.c.size_bytes, variant_files.c.sha256)
                        .where(variant_files.c.name == variant.name,
                               variant_files.c.version == variant.version,
                               variant_files.c.profile == variant.profile)
                        .order_by(variant_files.c.path))
    return [VariantFile(p, int(s), h) for p, s, h in rows]


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def recover(directory: Path, variant: VariantRecord) -> list[VariantFile]:
    """The files of a variant registered before per-file rows, hashed from disk and accepted
    only if their listing's digest is the one recorded (see the module's docstring)."""
    listing: list[str] = []
    for root, dirs, files in os.walk(directory):  # the order registration hashed them in
        dirs.sort()
        rel_root = Path(root).relative_to(directory)
        for name in sorted(files):
            size, sha = hash_file(Path(root) / name)
            listing.append(f"{(rel_root / name).as_posix()}\0{size}\0{sha}\n")
    if hashlib.sha256("".join(listing).encode()).hexdigest() != variant.sha256:
        raise DamagedVariant(
            f"the files of the {variant.profile} variant of {variant.model_ref} ({directory}) no "
            "longer match the digest recorded when it was built (one was changed, added or "
            "removed; it was registered before per-file hashes, so which one can't be told); "
            f"rebuild it with `{rebuild_command(variant)}`")
    return from_listing(tuple(listing))


def check(directory: Path, file: VariantFile, *, full: bool) -> str:
    """"" if the file on disk is the recorded one (by size only unless ``full``), else what is
    wrong with it: "missing", "size" or "sha256"."""
    path = directory / file.path
    try:
        if path.is_symlink() or path.stat().st_size != file.size_bytes:
            return "size"
    except FileNotFoundError:
        return "missing"
    if full and hash_file(path) != (file.size_bytes, file.sha256):
        return "sha256"
    return ""
