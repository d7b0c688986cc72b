"""The signed manifest of a release: what a device may run, file by file.

The controller writes the manifest as canonical JSON (sorted keys, no spaces, UTF-8) and signs
exactly those bytes with its ed25519 key; the agent pinned the public half at enrollment. Fields:

- ``format``: 1.
- ``release``: the controller's release counter. Every manifest it signs (an assignment, a
  bundle, a rollback instruction, a call-off) takes a new number, so the numbers only grow. A
  device records the highest release it accepted (agent/delivery/accepted.py) and refuses any
  manifest at or below it: an older manifest replayed, or a bundle exported before a rollback.
- ``rollback``, ``rollback_from``: a rollback instruction. It is a new, higher release that
  names an older model version and its files, and undoes release ``rollback_from``. A device
  whose previous slot holds exactly those files switches back to it without a download; one
  whose active slot holds them (``rollback_from`` being an update it never switched to: a
  call-off) stays where it is; either way it records the new release number. A device that
  has the files in neither slot installs them like any release.
- ``downgrade``: the controller intends a move to an older version of the model the device runs
  (an operator's explicit ``slmops devices assign NAME:VERSION``, or a bundle exported with
  ``--allow-downgrade``). Without it a manifest that is not a rollback instruction and names an
  older version of the model the device runs is refused as a downgrade.
- ``model``, ``version``: the registered model version; ``profile``, ``precision``,
  ``runtime``: the variant's; ``variant``: the variant's sha256 (over its file list).
- ``requires``: the hardware the profile is for: ``arch`` (any of), ``isa_flags`` (all of),
  ``accelerator`` ("" = none needed), ``min_memory_bytes``.
- ``files``: every file of the variant directory: ``path`` (relative, ``/``-separated, no
  ``..``), ``size``, ``sha256``.
- ``gate``: what the device checks before the switch: ``golden`` prompts with their expected
  answers, ``min_accuracy`` (0..1 of them answered exactly), ``max_new_tokens``, and the
  profile's ``min_tokens_per_s``, ``max_p95_ms`` (0 = no limit), ``max_memory_bytes``
  (0 = no limit).
- ``metrics``: the build's figures (exact match, its delta, agreement, tokens/s), for people.
- ``lineage``: where the model came from (parent, job), for people.
- ``issued_at_ms``, ``expires_at_ms``: a manifest is refused after it expires.

:func:`verify` checks the signature before anything is parsed; :func:`Manifest.from_json`
checks every field, so a manifest that passes names only safe relative paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

FORMAT = 1
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# One path part: letters, digits, dot, dash, underscore; not "." or "..".
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_FILES = 256
MAX_PATH = 512
MAX_GOLDEN = 200


class ManifestRefused(ValueError):
    """A manifest the device must not act on; the message is the reason reported upstream."""


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_relative_path(path: Any, where: str = "path") -> str:
    """``path`` if it is a safe relative file path (``a/b.onnx``); raises ManifestRefused."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise ManifestRefused(f"{where}: {path!r} is not a file path")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise ManifestRefused(f"{where}: {path!r} is absolute or has a backslash; only relative "
                              "paths under the variant directory are allowed")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PART_RE.match(part):
            raise ManifestRefused(f"{where}: {path!r} has a part {part!r} that is not a plain file "
                                  "name (letters, digits, '.', '-', '_'; no '..')")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Gate:
    golden: tuple[tuple[str, str], ...] = ()  # (prompt, expected answer)
    min_accuracy: float = 0.0
    max_new_tokens: int = 64
    min_tokens_per_s: float = 0.0
    max_p95_ms: float = 0.0  # 0 = no limit
    max_memory_bytes: int = 0  # 0 = no limit

    def to_json(self) -> dict[str, Any]:
        return {"golden": [{"prompt": p, "answer": a} for p, a in self.golden],
                "min_accuracy": self.min_accuracy, "max_new_tokens": self.max_new_tokens,
                "min_tokens_per_s": self.min_tokens_per_s, "max_p95_ms": self.max_p95_ms,
                "max_memory_bytes": self.max_memory_bytes}


@dataclass(frozen=True)
class Manifest:
    release: int
    model: str
    version: int
    profile: str
    precision: str
    runtime: str
    variant: str
    files: tuple[FileEntry, ...]
    issued_at_ms: int
    expires_at_ms: int
    gate: Gate = field(default_factory=Gate)
    requires: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    rollback: bool = False
    rollback_from: int = 0
    downgrade: bool = False

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "release": self.release, "model": self.model, "version": self.version,
            "profile": self.profile, "precision": self.precision, "runtime": self.runtime,
            "variant": self.variant,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "issued_at_ms": self.issued_at_ms, "expires_at_ms": self.expires_at_ms,
            "gate": self.gate.to_json(), "requires": self.requires, "metrics": self.metrics,
            "lineage": self.lineage, "rollback": self.rollback, "rollback_from": self.rollback_from,
            "downgrade": self.downgrade,
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse and check every field; raises ManifestRefused naming the field."""
        if not isinstance(data, dict):
            raise ManifestRefused("manifest: not a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestRefused(f"manifest.format: {data.get('format')!r}; this agent reads format "
                                  f"{FORMAT}; upgrade the agent")
        files = _list(data, "files", MAX_FILES)
        if not files:
            raise ManifestRefused("manifest.files: empty; a variant has files")
        entries, seen = [], set()
        for i, item in enumerate(files):
            where = f"manifest.files[{i}]"
            if not isinstance(item, dict):
                raise ManifestRefused(f"{where}: not an object")
            path = check_relative_path(item.get("path"), f"{where}.path")
            if path in seen:
                raise ManifestRefused(f"{where}.path: {path!r} is listed twice")
            seen.add(path)
            entries.append(FileEntry(path, _int(item, "size", where), _sha(item.get("sha256"),
                                                                            f"{where}.sha256")))
        gate = _dict(data, "gate")
        golden = []
        for i, item in enumerate(_list(gate, "golden", MAX_GOLDEN, "manifest.gate")):
            if not (isinstance(item, dict) and isinstance(item.get("prompt"), str)
                    and isinstance(item.get("answer"), str)):
                raise ManifestRefused(f"manifest.gate.golden[{i}]: needs string prompt and answer")
            golden.append((item["prompt"], item["answer"]))
        min_accuracy = _number(gate, "min_accuracy", "manifest.gate", 0.0)
        if not 0 <= min_accuracy <= 1:
            raise ManifestRefused(f"manifest.gate.min_accuracy: {min_accuracy} is not within 0..1")
        return cls(
            release=_int(data, "release"), model=_str(data, "model"), version=_int(data, "version"),
            profile=_str(data, "profile"), precision=_str(data, "precision"),
            runtime=_str(data, "runtime"), variant=_sha(data.get("variant"), "manifest.variant"),
            files=tuple(entries), issued_at_ms=_int(data, "issued_at_ms"),
            expires_at_ms=_int(data, "expires_at_ms"),
            gate=Gate(golden=tuple(golden), min_accuracy=min_accuracy,
                      max_new_tokens=max(1, _int(gate, "max_new_tokens", "manifest.gate", 64)),
                      min_tokens_per_s=_number(gate, "min_tokens_per_s", "manifest.gate", 0.0),
                      max_p95_ms=_number(gate, "max_p95_ms", "manifest.gate", 0.0),
                      max_memory_bytes=_int(gate, "max_memory_bytes", "manifest.gate", 0)),
            requires=_dict(data, "requires"), metrics=_dict(data, "metrics"),
            lineage=_dict(data, "lineage"), rollback=data.get("rollback", False) is True,
            rollback_from=_int(data, "rollback_from", default=0),
            downgrade=data.get("downgrade", False) is True,
        )

    def same_files(self, other: Manifest) -> bool:
        """Whether ``other`` names exactly this manifest's files (paths, sizes, hashes)."""
        return set(self.files) == set(other.files)


def sign(manifest: Manifest, key: ed25519.Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(manifest_json, signature): the bytes a SignedManifest carries."""
    body = canonical_json(manifest.to_json())
    return body, key.sign(body)


def verify(manifest_json: bytes, signature: bytes, public_key: bytes) -> Manifest:
    """The manifest, if ``signature`` is the pinned key's over exactly ``manifest_json``;
    raises ManifestRefused before parsing anything otherwise."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, manifest_json)
    except (InvalidSignature, ValueError):
        raise ManifestRefused("bad signature: the manifest is not signed by this device's controller "
                              "(altered after signing, or from another controller)") from None
    try:
        data = json.loads(manifest_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestRefused(f"manifest: signed but not JSON ({e})") from None
    return Manifest.from_json(data)


def check_acceptable(manifest: Manifest, *, profile: str, hardware_arch: str,
                     isa_flags: Sequence[str], accelerators: Sequence[str], now_ms: int,
                     highest_accepted: int, accepted_before: bool = False,
                     running: Manifest | None = None) -> None:
    """Raises ManifestRefused when this device must not install ``manifest``: expired, another
    profile's variant, hardware it lacks, a release not above ``highest_accepted`` (unless it
    is that very manifest again, ``accepted_before``: a restarted or resent update), or an older
    version of the model the device runs (``running``) that is neither a rollback instruction
    nor an intended downgrade. ``profile`` "" skips the profile check (not known yet)."""
    if now_ms >= manifest.expires_at_ms:
        raise ManifestRefused(f"expired: manifest of release {manifest.release} expired at "
                              f"{manifest.expires_at_ms} (now {now_ms}); ask the controller to "
                              "assign the model again")
    if profile and manifest.profile != profile:
        raise ManifestRefused(f"wrong profile: the manifest is {manifest.profile!r}'s variant; this "
                              f"device runs profile {profile!r}")
    requires = manifest.requires
    arch = requires.get("arch") or []
    if arch and hardware_arch not in arch:
        raise ManifestRefused(f"wrong profile: variant {manifest.profile!r} needs arch "
                              f"{'/'.join(arch)}; this device is {hardware_arch}")
    missing = sorted(set(requires.get("isa_flags") or []) - set(isa_flags))
    if missing:
        raise ManifestRefused(f"wrong profile: variant {manifest.profile!r} needs CPU flags "
                              f"{', '.join(missing)}, which this device lacks")
    accelerator = requires.get("accelerator") or ""
    if accelerator and accelerator not in accelerators:
        raise ManifestRefused(f"wrong profile: variant {manifest.profile!r} needs a {accelerator} "
                              "accelerator; this device has none")
    if manifest.release < highest_accepted or (manifest.release == highest_accepted
                                               and not accepted_before):
        raise ManifestRefused(f"rollback attack: release {manifest.release} ({manifest.ref}) is not "
                              f"newer than release {highest_accepted}, the highest this device has "
                              "accepted; an older manifest or bundle replayed. Assign or export the "
                              "model again")
    if (running is not None and not manifest.rollback and not manifest.downgrade
            and manifest.model == running.model and manifest.version < running.version):
        raise ManifestRefused(f"downgrade: release {manifest.release} is {manifest.ref}, older than "
                              f"{running.ref}, which this device runs, and not marked as an intended "
                              f"downgrade; assign it explicitly (`slmops devices assign DEVICE "
                              f"{manifest.ref}`) or export the bundle with --allow-downgrade")


def _str(data: Mapping[str, Any], key: str, where: str = "manifest") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestRefused(f"{where}.{key}: {value!r} is not a non-empty string")
    return value


def _int(data: Mapping[str, Any], key: str, where: str = "manifest", default: int | None = None) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestRefused(f"{where}.{key}: {value!r} is not a whole number >= 0")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = data.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ManifestRefused(f"{where}.{key}: {value!r} is not a number >= 0")
    return float(value)


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise ManifestRefused(f"{where}: {value!r} is not a sha256 (64 lower-case hex digits)")
    return value


def _dict(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ManifestRefused(f"manifest.{key}: not an object")
    return value


def _list(data: Mapping[str, Any], key: str, limit: int, where: str = "manifest") -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ManifestRefused(f"{where}.{key}: not a list")
    if len(value) > limit:
        raise ManifestRefused(f"{where}.{key}: {len(value)} entries; at most {limit}")
    return value
