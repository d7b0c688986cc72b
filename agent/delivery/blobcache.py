"""The agent's blob cache: every file of every release it holds, named by its sha256 only.

``DATA_DIR/blobs/<sha256>`` is a complete blob: it got there by a rename after its size and
sha256 were checked, so its presence alone means it is good. ``DATA_DIR/blobs/<sha256>.part``
is one being downloaded; its size is the offset a download resumes from after a cut or an
agent restart. A blob shared by two releases (a tokenizer, base weights) is stored and fetched
once, and staged slots hardlink to it.

A name from the wire or from a manifest never becomes a path here unless it is 64 lower-case hex
digits (:meth:`BlobCache.path` checks); nothing else in this folder is ever opened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, BinaryIO

from agent.delivery.manifest import SHA256_RE, FileEntry
from agent.files import fsync_dir

PART = ".part"
READ_BYTES = 1 << 20


class BlobMismatch(Exception):
    """A blob's bytes are not the ones the manifest names; the .part file was deleted."""


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- names -------------------------------------------------------------------------------

    def path(self, sha: str) -> Path:
        """Where the complete blob ``sha`` lives (or would); ValueError unless ``sha`` is a sha256."""
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValueError(f"blob name {sha!r} is not a sha256 (64 lower-case hex digits)")
        return self.root / sha

    def _part(self, sha: str) -> Path:
        return self.path(sha).with_name(sha + PART)

    # --- state -------------------------------------------------------------------------------

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def partial_size(self, sha: str) -> int:
        try:
            return self._part(sha).stat().st_size
        except FileNotFoundError:
            return 0

    def missing(self, files: Iterable[FileEntry]) -> list[FileEntry]:
        """The entries whose blob is not complete yet, one per distinct sha256, in order."""
        seen: set[str] = set()
        out = []
        for entry in files:
            if entry.sha256 not in seen and not self.has(entry.sha256):
                out.append(entry)
            seen.add(entry.sha256)
        return out

    def complete(self) -> set[str]:
        """The sha256 of every complete blob in the cache."""
        return {e.name for e in os.scandir(self.root) if SHA256_RE.match(e.name) and e.is_file()}

    def remove(self, shas: Iterable[str]) -> None:
        """Delete these complete blobs (a staged slot's hardlinks keep their bytes)."""
        for sha in shas:
            self.path(sha).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # --- writing -----------------------------------------------------------------------------

    def append(self, sha: str, offset: int, data: bytes, size: int) -> int:
        """Write ``data`` at ``offset`` of the .part file; returns the bytes written. Bytes past
        ``size`` (the manifest's) are cut off: a blob never grows beyond what the manifest says."""
        part = self._part(sha)
        current = self.partial_size(sha)
        if offset != current:
            raise ValueError(f"blob {sha}: a chunk at offset {offset}, but {current} bytes are on "
                             "disk; a download appends where the file ends")
        data = data[:max(0, size - offset)]
        if not data:
            return 0
        with open(part, "ab") as f:
            f.write(data)
        return len(data)

    def finish(self, sha: str, size: int) -> Path:
        """Check the .part file's size and sha256 and rename it into place. On a mismatch the
        .part file is deleted (a retry starts from 0) and BlobMismatch says what differed."""
        final, part = self.path(sha), self._part(sha)
        if not part.exists() and final.is_file():
            return final  # finished before (a retry after a crash that followed the rename)
        if not part.exists() and size == 0:
            part.touch()
        try:
            with open(part, "rb") as f:
                os.fsync(f.fileno())
                got_size, digest = _hash_stream(f)
        except FileNotFoundError:
            raise BlobMismatch(f"hash mismatch: blob {sha}: nothing was received (0 of {size} "
                               "bytes)") from None
        if got_size != size or digest != sha:
            part.unlink(missing_ok=True)
            if got_size != size:
                raise BlobMismatch(f"hash mismatch: blob {sha}: {got_size} bytes received, the "
                                   f"manifest says {size}; deleted, to be fetched again")
            raise BlobMismatch(f"hash mismatch: blob {sha}: expected sha256 {sha}, got {digest} "
                               f"over {size} bytes; deleted, to be fetched again")
        os.chmod(part, 0o444)  # slots hardlink to it: nothing may write through them
        os.replace(part, final)
        fsync_dir(self.root)
        return final

    def add_file(self, sha: str, size: int, source: IO[bytes]) -> Path:
        """Copy at most ``size`` bytes of ``source`` in as blob ``sha`` (a bundle's member),
        checked like a download. A blob already complete is kept and ``source`` left unread."""
        if self.has(sha):
            return self.path(sha)
        part = self._part(sha)
        part.unlink(missing_ok=True)
        left = size
        try:
            with open(part, "wb") as out:
                while left > 0:
                    data = source.read(min(READ_BYTES, left))
                    if not data:
                        break
                    out.write(data)
                    left -= len(data)
            return self.finish(sha, size)
        except BaseException:  # a full disk, a cut bundle: the half-copied file frees its space
            part.unlink(missing_ok=True)
            raise

    def drop_partial(self, sha: str) -> None:
        """Forget the bytes of an unfinished download (the next one starts from 0)."""
        self._part(sha).unlink(missing_ok=True)

    # --- garbage -----------------------------------------------------------------------------

    def gc(self, keep: set[str]) -> int:
        """Delete every complete blob and .part file whose sha256 is not in ``keep``; returns the
        bytes freed (a blob still hardlinked from a slot frees its bytes when the slot goes).
        Files not named by a sha256 are left alone."""
        freed = 0
        for entry in os.scandir(self.root):
            sha = entry.name[:-len(PART)] if entry.name.endswith(PART) else entry.name
            if not SHA256_RE.match(sha) or sha in keep or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            Path(entry.path).unlink(missing_ok=True)
            freed += st.st_size if st.st_nlink <= 1 else 0
        return freed


def _hash_stream(f: BinaryIO) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    while data := f.read(READ_BYTES):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()
