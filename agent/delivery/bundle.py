"""Bundle files: a release for a device with no network path to the controller.

A bundle is an uncompressed tar (``slmops bundle export``; ``slmops-agent install-bundle``):

    manifest.json      the signed manifest bytes, exactly as signed
    manifest.sig       the controller's raw 64-byte ed25519 signature over them
    blobs/<sha256>     one member per distinct file of the manifest (a bundle may leave out
                       blobs the device already has)

Reading gets the same checks as a network delivery, in the same order: the signature before
anything else (a bundle altered after export is refused before one blob is written), then
each blob's size and sha256 as it enters the cache. Member names are never used as paths:
a member is accepted only as ``blobs/`` plus a sha256 the manifest names, and its bytes go to
the blob cache under that sha256. Both sides stream (tar's ``|`` modes), so a 1 GB bundle never
sits in memory.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from agent.delivery.blobcache import BlobCache, BlobMismatch
from agent.delivery.manifest import SHA256_RE, Manifest, verify

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
BLOBS = "blobs/"
SIGNATURE_BYTES = 64
MAX_MANIFEST_BYTES = 16 << 20


class BundleError(ValueError):
    """Not a bundle, or not a sound one; the message names the member and what is wrong."""


class _Counting(io.RawIOBase):
    """A write-only file for tarfile's stream mode (which only writes), counting the bytes."""

    def __init__(self, out: BinaryIO) -> None:
        super().__init__()
        self._out, self.count = out, 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        self._out.write(data)
        size = memoryview(data).nbytes
        self.count += size
        return size


def write_bundle(out: BinaryIO, manifest_json: bytes, signature: bytes,
                 blobs: Sequence[tuple[str, Path]]) -> int:
    """Write a bundle to ``out``: the manifest, its signature and each ``(sha256, file)`` of
    ``blobs`` (a blob's file is streamed, never read whole). Returns the bytes written.
    Every blob must be one the manifest names, once, with the manifest's size."""
    try:
        sizes = {f.sha256: f.size for f in Manifest.from_json(json.loads(manifest_json)).files}
    except ValueError as e:  # JSON or ManifestRefused
        raise BundleError(f"{MANIFEST}: not a manifest ({e})") from None
    seen: set[str] = set()
    for sha, path in blobs:
        if sha not in sizes:
            raise BundleError(f"blob {sha!r} ({path}) is not named by the manifest")
        if sha in seen:
            raise BundleError(f"blob {sha} is given twice")
        seen.add(sha)
        size = Path(path).stat().st_size
        if size != sizes[sha]:
            raise BundleError(f"blob {sha} ({path}) is {size} bytes; the manifest says {sizes[sha]}")
    counting = _Counting(out)
    with tarfile.open(fileobj=counting, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(MANIFEST, len(manifest_json)), io.BytesIO(manifest_json))
        tar.addfile(_member(SIGNATURE, len(signature)), io.BytesIO(signature))
        for sha, path in blobs:
            with open(path, "rb") as f:
                tar.addfile(_member(BLOBS + sha, sizes[sha]), f)
    return counting.count


def read_bundle(path: Path, cache: BlobCache, public_key: bytes) -> tuple[bytes, bytes, Manifest]:
    """Verify the bundle at ``path`` and put its blobs in ``cache``; returns (manifest_json,
    signature, manifest). Raises ManifestRefused when the signature does not hold (before any
    blob is written) and BundleError for anything else wrong with the file."""
    try:
        with tarfile.open(path, mode="r|") as tar:
            manifest_json = _small_member(tar, MANIFEST, MAX_MANIFEST_BYTES)
            signature = _small_member(tar, SIGNATURE, SIGNATURE_BYTES)
            manifest = verify(manifest_json, signature, public_key)
            wanted = {f.sha256: f for f in manifest.files}
            seen: set[str] = set()
            while (member := tar.next()) is not None:
                name = member.name
                sha = name[len(BLOBS):] if name.startswith(BLOBS) else ""
                if not SHA256_RE.match(sha) or sha not in wanted:
                    raise BundleError(f"member {name!r}: not a blob of this manifest (only "
                                      f"{BLOBS}<sha256> of its files may follow {SIGNATURE})")
                if sha in seen:
                    raise BundleError(f"member {name!r}: appears twice")
                seen.add(sha)
                entry = wanted[sha]
                if not member.isreg():
                    raise BundleError(f"member {name!r} ({entry.path}): not a regular file")
                if member.size < entry.size:
                    raise BundleError(f"member {name!r} ({entry.path}): {member.size} bytes; the "
                                      f"manifest says {entry.size}; the bundle is cut short")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a reader
                try:  # a larger member is cut at the stated size: the hash decides
                    cache.add_file(sha, entry.size, source)
                except BlobMismatch as e:
                    raise BundleError(f"member {name!r} ({entry.path}): {e}") from None
    except tarfile.TarError as e:
        raise BundleError(f"{path}: not a readable bundle (an uncompressed tar): {e}") from None
    missing = cache.missing(manifest.files)
    if missing:
        names = ", ".join(f"{f.path} ({f.sha256[:12]})" for f in missing[:10])
        raise BundleError(f"{path}: {len(missing)} files of release {manifest.release} are neither in "
                          f"the bundle nor on this device: {names}; export the bundle again")
    return manifest_json, signature, manifest


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # mtime 0: the same release, the same bytes
    return info


def _small_member(tar: tarfile.TarFile, name: str, limit: int) -> bytes:
    member = tar.next()
    if member is None or member.name != name:
        got = "the end of the file" if member is None else repr(member.name)
        raise BundleError(f"expected member {name!r}, found {got}; a bundle starts with "
                          f"{MANIFEST} then {SIGNATURE}")
    if not member.isreg() or member.size > limit:
        raise BundleError(f"member {name!r}: not a regular file of at most {limit} bytes")
    source = tar.extractfile(member)
    assert source is not None
    return source.read()
