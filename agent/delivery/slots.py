"""A/B slots on the device: staged releases side by side, and which one is live.

Layout under ``DATA_DIR/models``:

- ``r<release>/``: a staged variant directory, exactly the manifest's files, hardlinked from
  the blob cache (copied where the file system cannot link). Built under a temporary name and
  renamed into place, so ``r<release>`` exists only when complete.
- ``r<release>.manifest.json`` and ``r<release>.manifest.sig``: the signed bytes it was staged
  from, beside the directory so the variant directory holds nothing but the variant. The agent
  re-verifies them at start-up before serving.
- ``slots.json``: ``{"format": 1, "active": N, "previous": M}``. It is replaced in one atomic
  rename (agent/files.py write_atomic), and that rename *is* the switch: after a crash at any
  point exactly the old or the new release is active, never a mix.

Directory names come from integer release numbers only and file names from manifest paths
that passed check_relative_path, each checked again to resolve inside its slot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.delivery.blobcache import BlobCache
from agent.delivery.manifest import SHA256_RE, Manifest, ManifestRefused, check_relative_path
from agent.files import fsync_dir, write_atomic

SLOTS_FILE = "slots.json"
FORMAT = 1
_SLOT_RE = re.compile(r"^r([1-9][0-9]{0,17}|0)$")
_META_RE = re.compile(r"^r([0-9]{1,18})\.manifest\.(json|sig)$")
_STAGING_PREFIX = ".staging-r"


class SlotsError(OSError):
    """The slots on disk are not what they should be (a damaged slots.json, a missing file); an
    OSError because, like one, it is about the state of this device's disk."""


@dataclass(frozen=True)
class SlotInfo:
    release: int
    model: str  # "NAME:VERSION" as the stored manifest says ("" if it does not say)
    path: Path
    manifest_json: bytes
    signature: bytes


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._file = self.root / SLOTS_FILE

    # --- names -------------------------------------------------------------------------------

    def slot_path(self, release: int) -> Path:
        if not isinstance(release, int) or isinstance(release, bool) or release < 0:
            raise ValueError(f"release: {release!r} is not a whole number >= 0")
        return self.root / f"r{release}"

    def _meta(self, release: int, kind: str) -> Path:
        return self.root / f"r{release}.manifest.{kind}"

    # --- staging -----------------------------------------------------------------------------

    def stage(self, manifest: Manifest, manifest_json: bytes, signature: bytes, cache: BlobCache) -> Path:
        """``DATA_DIR/models/r<release>`` with the manifest's files, from the cache's blobs. An
        already staged release is reused once each file's size checks out; one that does not
        match is rebuilt (unless it is live: then SlotsError)."""
        target = self.slot_path(manifest.release)
        for i, entry in enumerate(manifest.files):  # before anything is written
            check_relative_path(entry.path, f"manifest.files[{i}].path")
            _inside(target / entry.path, target, entry.path)
        if target.exists():
            problem = _differs(target, manifest)
            if problem is None:
                self._write_meta(manifest.release, manifest_json, signature)
                return target
            state = self._state()
            if manifest.release in (state.get("active"), state.get("previous")):
                raise SlotsError(f"{target}: {problem}, and release {manifest.release} is kept as active "
                                 "or previous; the controller issued the same release number twice")
            shutil.rmtree(target)
        # The manifest first: a slot directory that exists always has its manifest beside it.
        self._write_meta(manifest.release, manifest_json, signature)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{_STAGING_PREFIX}{manifest.release}."))
        try:
            for entry in manifest.files:
                dest = _inside(staging / entry.path, staging, entry.path)
                if not cache.has(entry.sha256):
                    raise SlotsError(f"blob {entry.sha256} for {entry.path} is not in the blob cache "
                                     f"({cache.root}); it has to be downloaded before staging")
                dest.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(cache.path(entry.sha256), dest)
                got = dest.stat().st_size
                if got != entry.size:
                    raise SlotsError(f"blob {entry.sha256} for {entry.path} is {got} bytes in the cache; "
                                     f"the manifest says {entry.size}")
            for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
                fsync_dir(folder)
            os.rename(staging, target)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _write_meta(self, release: int, manifest_json: bytes, signature: bytes) -> None:
        write_atomic(self._meta(release, "json"), manifest_json)
        write_atomic(self._meta(release, "sig"), signature)

    # --- the switch --------------------------------------------------------------------------

    def activate(self, release: int, *, replace: bool = False) -> None:
        """Make ``release`` (staged) the active one and the active one the previous: one
        atomic write of slots.json. With ``replace`` the previous one stays as it is: the new
        release takes the active one's place (a call-off naming the files the device runs)."""
        path = self.slot_path(release)
        for needed in (path, self._meta(release, "json"), self._meta(release, "sig")):
            if not needed.exists():
                raise SlotsError(f"release {release} is not staged: {needed} is missing")
        state = self._state()
        if state.get("active") == release:
            return
        new = {"format": FORMAT, "active": release,
               "previous": state.get("previous") if replace else state.get("active")}
        write_atomic(self._file, json.dumps(new).encode())

    def active(self) -> SlotInfo | None:
        return self._info(self._state().get("active"))

    def previous(self) -> SlotInfo | None:
        return self._info(self._state().get("previous"))

    # --- garbage -----------------------------------------------------------------------------

    def gc(self, keep_releases: Iterable[int] = ()) -> list[int]:
        """Delete the slots (and their manifests) of every release other than the active, the
        previous and ``keep_releases``, and what an interrupted stage or write left behind;
        returns the releases removed."""
        state = self._state()
        keep = {state.get("active"), state.get("previous"), *keep_releases}
        removed: set[int] = set()
        for entry in os.scandir(self.root):
            slot, meta = _SLOT_RE.match(entry.name), _META_RE.match(entry.name)
            if entry.name.startswith(_STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                os.unlink(entry.path)  # write_atomic's temporary file, left by a kill
            elif slot and int(slot.group(1)) not in keep:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.add(int(slot.group(1)))
            elif meta and int(meta.group(1)) not in keep:
                os.unlink(entry.path)
        return sorted(removed)

    def blobs_in_use(self) -> set[str]:
        """The sha256 of every file of the active and previous releases: the blobs to keep."""
        state = self._state()
        shas: set[str] = set()
        for release in (state.get("active"), state.get("previous")):
            if release is None:
                continue
            path = self._meta(release, "json")
            data = _load_json(path, f"the manifest of release {release}")
            files = data.get("files") if isinstance(data, dict) else None
            if not isinstance(files, list):
                raise SlotsError(f"{path}: no file list; restage release {release}")
            for item in files:
                sha = item.get("sha256") if isinstance(item, dict) else None
                if not isinstance(sha, str) or not SHA256_RE.match(sha):
                    raise SlotsError(f"{path}: a file entry without a sha256 ({item!r})")
                shas.add(sha)
        return shas

    # --- reading -----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if not self._file.exists():
            return {}
        data = _load_json(self._file, "which release is active")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SlotsError(f"{self._file}: not a slots file of format {FORMAT}; {_FIX}")
        for key in ("active", "previous"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise SlotsError(f"{self._file}: {key} is {value!r}, not a release number; {_FIX}")
        return data

    def _info(self, release: int | None) -> SlotInfo | None:
        if release is None:
            return None
        files = (self._meta(release, "json"), self._meta(release, "sig"))
        try:
            manifest_json, signature = files[0].read_bytes(), files[1].read_bytes()
        except FileNotFoundError as e:
            raise SlotsError(f"{self._file} names release {release}, but {e.filename} is missing; "
                             f"{_FIX}") from None
        model = ""
        try:
            data = json.loads(manifest_json)
            if isinstance(data, dict) and data.get("model"):
                model = f"{data['model']}:{data.get('version', '')}"
        except ValueError:
            pass  # the caller verifies the signed bytes before serving them
        return SlotInfo(release, model, self.slot_path(release), manifest_json, signature)


_FIX = ("move it aside and restart the agent: it then starts with no model and the controller "
        "sends the release again")


def _inside(path: Path, root: Path, name: str) -> Path:
    """``path`` if it resolves inside ``root``; ManifestRefused otherwise."""
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ManifestRefused(f"manifest file path {name!r} resolves to {resolved}, outside the "
                              f"slot {base}; refused")
    return path


def _differs(slot: Path, manifest: Manifest) -> str | None:
    """Why an existing slot does not hold exactly the manifest's files (None if it does)."""
    want = {entry.path: entry.size for entry in manifest.files}
    have = {p.relative_to(slot).as_posix(): p.stat().st_size
            for p in slot.rglob("*") if p.is_file() or p.is_symlink()}
    if set(have) != set(want):
        return f"holds files {sorted(set(have) ^ set(want))[:5]} that differ from the manifest's"
    for name, size in want.items():
        if have[name] != size:
            return f"{name} is {have[name]} bytes, the manifest says {size}"
    return None


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another file system, no hardlinks, too many links: copy
        shutil.copyfile(src, dest)
        with open(dest, "rb") as f:
            os.fsync(f.fileno())


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SlotsError(f"{path} ({what}) is missing; {_FIX}") from None
    except ValueError as e:
        raise SlotsError(f"{path} ({what}) is damaged: {e}; {_FIX}") from None
