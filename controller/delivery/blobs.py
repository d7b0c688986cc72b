"""The controller's content-addressed blob store: every file of every variant it delivers, once,
under ``DATA_DIR/blobs/sha256/<first 2 hex>/<sha256>``.

A file is named by nothing but its validated sha256, so a string from the wire never becomes a
path, and two variants that share a file (a tokenizer, base weights) share its blob: a device
that has it fetches it no more.

The sha256 of each file is the one the registry recorded when the variant was registered
(controller/registry/variant_files.py); nothing here derives a trusted hash from stored bytes.
A blob is made as a copy of the registry's file (a reflink where the filesystem can share
extents, never a hard link: a blob must not be a second name for the registry's inode), under
a temporary name, and renamed into place only if its bytes hash to the recorded sha256. Each
issue checks both the registry's file and the blob against it again: a file is hashed anew
when its inode, size, mtime or ctime changed (any write changes the ctime), and a mismatch
refuses the release naming the file and the repair. A byte that rots without any write is
caught by the device (it checks every file against the signed manifest) and by
`slmops models verify`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from agent.delivery.manifest import MAX_FILES, SHA256_RE, FileEntry, ManifestRefused, check_relative_path
from controller.registry.variant_files import hash_file
from controller.validation import Invalid

_CHUNK = 1 << 20
_CACHE_LIMIT = 4096  # files remembered as checked, by (inode, size, mtime, ctime)

_StatKey = tuple[int, int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)


class BlobError(RuntimeError):
    """A variant directory that can't be put into the blob store; the message says why."""


class Recorded(Protocol):
    """A file as the registry recorded it (registry/variant_files.py: VariantFile)."""

    @property
    def path(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...


class SourceDamaged(BlobError):
    """The registry's copy of a file no longer matches its recorded size and sha256."""

    def __init__(self, source: Path, file: Recorded, what: str) -> None:
        super().__init__(f"{file.path} of {what} ({source}) does not match the sha256 recorded when "
                         "it was built: the file is damaged on disk")
        self.source, self.file = source, file


class BlobDamaged(BlobError):
    """A stored blob no longer matches the sha256 it is named by."""

    def __init__(self, blob: Path, file: Recorded, what: str) -> None:
        super().__init__(f"the stored blob of {file.path} of {what} ({blob}) does not match its "
                         f"sha256: it is damaged on disk; remove it (`rm {blob}`) and assign again, "
                         "it is then copied afresh from the registry's checked copy")
        self.blob, self.file = blob, file


def check_sha256(value: str, field_name: str = "sha256") -> str:
    """``value`` if it is 64 lower-case hex digits; Invalid naming the field otherwise."""
    if not isinstance(value, str) or not SHA256_RE.match(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise Invalid(f"{field_name}: {shown!r} is not a sha256 (64 lower-case hex digits)")
    return value


def _key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._dir = self.root / "sha256"
        self._dir.mkdir(parents=True, exist_ok=True)
        self.scratch_dir = self.root / "tmp"  # for files made from blobs (bundles)
        self.scratch_dir.mkdir(exist_ok=True)
        # A re-assignment of the same variant need not read its files again: a file found to
        # match its recorded sha256 is remembered by inode, size, mtime and ctime.
        self._verified: dict[_StatKey, str] = {}
        self._lock = threading.Lock()
        # One ingest of a blob at a time: assignments run in worker threads, and a second copy
        # renamed over the first while a third thread checks it reads as damage.
        self._placing: dict[str, threading.Lock] = {}

    def path(self, sha256: str) -> Path:
        """Where the blob ``sha256`` lives (whether or not it is there); Invalid for a bad sha."""
        check_sha256(sha256)
        return self._dir / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """The blob's size in bytes; FileNotFoundError if it is not stored."""
        return self.path(sha256).stat().st_size

    def ingest(self, source_dir: Path, files: Sequence[Recorded], what: str) -> list[FileEntry]:
        """Every recorded file of the variant in ``source_dir`` as a blob, checked against its
        recorded size and sha256, as manifest entries sorted by path. BlobDamaged or
        SourceDamaged (naming the file; ``what`` says whose it is) on any mismatch."""
        if not files:
            raise BlobError(f"{what} has no recorded files; rebuild the variant")
        if len(files) > MAX_FILES:
            raise BlobError(f"{what} has {len(files)} files; a manifest carries at most {MAX_FILES}")
        entries = []
        for file in sorted(files, key=lambda f: f.path):
            try:
                check_relative_path(file.path, "file")
            except ManifestRefused as e:
                raise BlobError(f"{what}: {e}; a manifest can't carry it") from None
            check_sha256(file.sha256)
            self._ingest_one(Path(source_dir) / file.path, file, what)
            entries.append(FileEntry(file.path, file.size_bytes, file.sha256))
        return entries

    def _ingest_one(self, source: Path, file: Recorded, what: str) -> None:
        if self._differs(source, file):
            raise SourceDamaged(source, file, what)
        with self._lock:
            placing = self._placing.setdefault(file.sha256, threading.Lock())
        with placing:
            self._place(source, file, what)

    def _place(self, source: Path, file: Recorded, what: str) -> None:
        final = self.path(file.sha256)
        if final.exists():
            if self._differs(final, file):
                raise BlobDamaged(final, file, what)
            return
        final.parent.mkdir(exist_ok=True)
        tmp = final.parent / f".{file.sha256}.{secrets.token_hex(4)}.tmp"
        try:
            _copy_or_clone(source, tmp)
            if self._differs(tmp, file):  # the source changed while it was copied
                raise SourceDamaged(source, file, what)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _differs(self, path: Path, file: Recorded) -> str:
        """"" if ``path`` is a regular file with the recorded size and sha256 (hashed unless it
        was found so before and has not been written since), else what differs."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return "missing"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size != file.size_bytes:
            return f"{st.st_size} bytes, recorded {file.size_bytes}"
        key = _key(st)
        with self._lock:
            if self._verified.get(key) == file.sha256:
                return ""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
            if _key(os.fstat(f.fileno())) != key:
                return "changed while it was read"
        if digest.hexdigest() != file.sha256:
            return "sha256 differs"
        with self._lock:
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[key] = file.sha256
        return ""

    def count(self) -> int:
        return sum(1 for p in self._dir.glob("*/*") if not p.name.startswith("."))

    def damaged(self) -> Iterator[tuple[Path, str]]:
        """(blob, what is wrong) for every stored blob whose bytes don't hash to its name."""
        for path in sorted(self._dir.glob("*/*")):
            if path.name.startswith("."):
                continue  # a copy under way
            if not SHA256_RE.match(path.name):
                yield path, "not named by a sha256"
                continue
            if hash_file(path)[1] != path.name:
                yield path, "sha256 differs from its name"


_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, XFS, bcachefs...)


def _copy_or_clone(source: Path, target: Path) -> None:
    """``target``, a new file with ``source``'s bytes: a reflink where the filesystem offers it
    (no bytes copied; a later write to either file unshares them), else a plain copy. Python
    has no reflink call of its own, hence the ioctl; shutil would fall back to sendfile, which
    is a copy too, so the copy below is as fast."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        except OSError:  # EOPNOTSUPP, EXDEV, EINVAL: no reflink here
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
