"""The controller's content-addressed blob store: every file of every variant it delivers, once,
under ``DATA_DIR/blobs/sha256/<first 2 hex>/<sha256>``.

A file is named by nothing but its validated sha256, so a string from the wire never becomes a
path, and two variants that share a file (a tokenizer, base weights) share its blob: a device
that has it fetches it no more. Files are placed by hard link from the registry's variant
directory (the registry only ever renames whole directories into place, never writes a placed
file), or copied where a link is not possible, always under a temporary name renamed into place.
A blob already present is not written again.

The bytes are served as stored: the agent checks each file's hash, so a damaged blob is caught
on the device, never repaired in passing here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
from pathlib import Path

from agent.delivery.manifest import MAX_FILES, SHA256_RE, FileEntry, ManifestRefused, check_relative_path
from controller.validation import Invalid

_CHUNK = 1 << 20
_CACHE_LIMIT = 4096  # hashes remembered by (inode, size, mtime)

_StatKey = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)


class BlobError(RuntimeError):
    """A variant directory that can't be put into the blob store; the message says why."""


def check_sha256(value: str, field_name: str = "sha256") -> str:
    """``value`` if it is 64 lower-case hex digits; Invalid naming the field otherwise."""
    if not isinstance(value, str) or not SHA256_RE.match(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise Invalid(f"{field_name}: {shown!r} is not a sha256 (64 lower-case hex digits)")
    return value


def _key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._dir = self.root / "sha256"
        self._dir.mkdir(parents=True, exist_ok=True)
        self.scratch_dir = self.root / "tmp"  # for files made from blobs (bundles)
        self.scratch_dir.mkdir(exist_ok=True)
        # A re-assignment of the same variant need not read its files again: their hash is
        # remembered by inode, size and modification time (any write changes the latter).
        self._hashes: dict[_StatKey, str] = {}
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it is there); Invalid for a bad sha."""
        check_sha256(sha256)
        return self._dir / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; FileNotFoundError if it is not stored."""
        return self.path(sha256).stat().st_size

    def ingest_dir(self, variant_dir: Path) -> list[FileEntry]:
        """Every file under ``variant_dir``, stored as a blob, as manifest entries sorted by path."""
        variant_dir = Path(variant_dir)
        if not variant_dir.is_dir():
            raise BlobError(f"variant directory {variant_dir} is missing; rebuild the variant")
        entries = []
        for path in sorted(p for p in variant_dir.rglob("*") if not p.is_dir()):
            relative = path.relative_to(variant_dir).as_posix()
            try:
                check_relative_path(relative, "file")
            except ManifestRefused as e:
                raise BlobError(f"variant {variant_dir}: {e}; a manifest can't carry it") from None
            sha, size = self.ingest_file(path)
            entries.append(FileEntry(relative, size, sha))
        if not entries:
            raise BlobError(f"variant directory {variant_dir} has no files; rebuild the variant")
        if len(entries) > MAX_FILES:
            raise BlobError(f"variant {variant_dir} has {len(entries)} files; a manifest carries at "
                            f"most {MAX_FILES}")
        return entries

    def ingest_file(self, source: Path) -> tuple[str, int]:
        """(sha256, size) of ``source``, stored as a blob if it is not there yet."""
        st = os.stat(source, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise BlobError(f"{source} is not a regular file (a link or a device?); a variant holds "
                            "plain files only")
        with self._lock:
            sha = self._hashes.get(_key(st))
        if sha is None:
            sha, st = self._hash(source)
        final = self.path(sha)
        try:
            if final.stat().st_size == st.st_size:
                return sha, st.st_size  # stored before
        except FileNotFoundError:
            pass
        final.parent.mkdir(exist_ok=True)
        tmp = final.parent / f".{sha}.{secrets.token_hex(4)}.tmp"
        try:
            try:
                os.link(source, tmp)
                linked = os.stat(tmp)
                if _key(linked) != _key(st):  # replaced or rewritten since it was hashed
                    tmp.unlink()
                    raise OSError("changed since hashed")
            except OSError:
                self._copy(source, tmp, sha)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return sha, st.st_size

    def _hash(self, source: Path) -> tuple[str, os.stat_result]:
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            before = os.fstat(f.fileno())
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            after = os.fstat(f.fileno())
        if _key(before) != _key(after):
            raise BlobError(f"{source} changed while it was read; try again")
        sha = digest.hexdigest()
        with self._lock:
            if len(self._hashes) >= _CACHE_LIMIT:
                self._hashes.clear()
            self._hashes[_key(after)] = sha
        return sha, after

    @staticmethod
    def _copy(source: Path, tmp: Path, sha: str) -> None:
        """Copy ``source`` to ``tmp``, hashing the very bytes written."""
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(tmp, "xb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != sha:
            raise BlobError(f"{source} changed while it was stored; try again")
