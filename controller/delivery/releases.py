"""Releases: the signed manifests the controller issues, to a device or into a bundle.

An assignment picks the model's variant for the device's profile (one that passed its gates),
puts its files into the blob store, and signs a manifest (agent/delivery/manifest.py) with a new
release number from the store's counter, which only goes up. The manifest says what hardware the
profile needs and carries the on-device gate: the build's golden prompts with a minimum accuracy
a little under what the variant scored at build time, and the profile's speed and memory limits.
The signed bytes are stored; the newest one issued to a device is its desired state.

Every manifest signed here (an assignment, a bundle, a rollback instruction, a call-off) takes
a new number from the store's counter, so release numbers only grow and a device can refuse
anything at or below the highest release it accepted (agent/delivery/accepted.py).

A rollback goes back to the release the device reports as its previous one: a new release that
names that release's model version and files, flagged ``rollback`` and ``rollback_from`` = the
release the device runs. A call-off (``stay``) is the same for the release the device runs,
undoing an update still under way. A device runs an older version of the model it has only by
such an instruction or by a manifest marked ``downgrade``: an operator's explicit assignment of
NAME:VERSION, or a bundle exported with ``--allow-downgrade``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.delivery.manifest import MAX_GOLDEN, FileEntry, Gate, Manifest, sign
from controller.build.profiles import DeviceProfile, ProfileSet
from controller.delivery.blobs import BlobError, BlobStore, check_sha256
from controller.delivery.integrity import deliverable_files
from controller.registry import ModelRegistry, NotDeployable, VariantRecord
from controller.registry.variant_files import DamagedVariant
from controller.store.base import DeviceRecord, FleetStore, NotFound, ReleaseRecord
from controller.validation import Invalid

__all__ = ["ReleaseRecord", "ReleaseRefused", "Releases", "build_gate"]

GATE_MAX_NEW_TOKENS = 64
# The build's figures a manifest repeats, for people reading it on the device.
METRIC_KEYS = ("exact_match", "exact_match_delta", "reference_exact_match", "greedy_agreement",
               "tokens_per_s", "decode_tokens_per_s", "size_bytes", "peak_memory_bytes",
               "measured_on_target")


class ReleaseRefused(Exception):
    """The request is well formed but can't be carried out as things stand (no variant for the
    device's profile, no previous model, ...); the message says what to do."""


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def build_gate(variant: VariantRecord, profile: DeviceProfile) -> Gate:
    """The on-device gate: the golden prompts the build recorded, passed with at least the
    build's accuracy minus the larger of the allowed drop and one prompt; the speed and memory
    limits the variant was gated with at build time (the profile's, unless overridden then)."""
    found = variant.build.get("gates")
    applied: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    max_drop = _number(applied.get("max_accuracy_drop"), profile.gates.max_accuracy_drop)
    found = variant.metrics.get("golden")
    golden_data: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    found = golden_data.get("rows")
    rows: list[Any] = found if isinstance(found, list) else []
    golden = tuple((r["prompt"], r["answer"]) for r in rows[:MAX_GOLDEN] if isinstance(r, Mapping)
                   and isinstance(r.get("prompt"), str) and isinstance(r.get("answer"), str))
    min_accuracy = 0.0
    if golden:
        built = min(1.0, max(0.0, _number(golden_data.get("correct"), 0) / len(golden)))
        min_accuracy = round(max(0.0, built - max(max_drop / 100, 1 / len(golden))), 6)
    speed = _number(applied.get("min_tokens_per_s"), profile.gates.min_tokens_per_s)
    memory = _number(applied.get("max_memory_bytes"), profile.gates.max_memory_bytes)
    p95 = _number(applied.get("max_p95_ms"), profile.gates.max_p95_ms)
    return Gate(golden=golden, min_accuracy=min_accuracy, max_new_tokens=GATE_MAX_NEW_TOKENS,
                min_tokens_per_s=max(0.0, speed), max_p95_ms=max(0.0, p95),
                max_memory_bytes=max(0, int(memory)))


def _requires(profile: DeviceProfile) -> dict[str, Any]:
    m = profile.match
    return {"arch": list(m.arch), "isa_flags": list(m.isa_flags), "accelerator": m.accelerator,
            "min_memory_bytes": m.min_memory_bytes}


def _who(device: DeviceRecord) -> str:
    return f"device {device.name} ({device.id})"


class Releases:
    def __init__(self, store: FleetStore, registry: ModelRegistry, blobs: BlobStore,
                 key: Ed25519PrivateKey, profiles: ProfileSet, *, ttl_ms: int) -> None:
        if ttl_ms < 60_000:
            raise ValueError(f"ttl_ms: {ttl_ms} ms is less than a minute")
        self._store, self._registry, self._blobs = store, registry, blobs
        self._key, self._profiles, self._ttl_ms = key, profiles, ttl_ms
        # Numbering, signing and storing one after another: a device's desired release is then
        # always the highest number issued to it.
        self._lock = threading.Lock()

    # --- issuing ---------------------------------------------------------------------------

    def assign(self, device: DeviceRecord, ref: str, now_ms: int, *, rollout_id: str = "",
               downgrade: bool = False, min_accuracy: float = 0.0) -> ReleaseRecord:
        """Sign the variant of ``ref`` (NAME:VERSION, or NAME for its newest version) for the
        device's profile as a new release and make it the device's desired state. With
        ``rollout_id``, the device's row in that rollout is marked assigned in the same
        transaction (Conflict if it was not pending). ``downgrade``: the device may take it even
        if it runs a newer version of the model. ``min_accuracy``: the on-device gate's minimum
        is at least this (a rollout's --min-device-accuracy), never below the build's."""
        self._check_active(device)
        profile_name = device.effective_profile
        if not profile_name:
            raise ReleaseRefused(f"{_who(device)} has no profile yet (its agent has not reported its "
                                 f"hardware); start its agent, or set one with `slmops devices "
                                 f"set-profile {device.name} PROFILE`")
        try:
            profile = self._profiles.get(profile_name)
        except KeyError as e:
            raise ReleaseRefused(f"{_who(device)} runs profile {profile_name!r}, which this controller "
                                 f"does not know ({e.args[0]}); choose one with `slmops devices "
                                 f"set-profile {device.name} PROFILE`") from None
        variant = self._variant(ref, profile_name, f" to {_who(device)}")
        return self._issue(variant, profile, device.id, now_ms, rollout_id, downgrade=downgrade,
                           min_accuracy=min_accuracy)

    def for_bundle(self, ref: str, profile: str, now_ms: int, *,
                   allow_downgrade: bool = False) -> ReleaseRecord:
        """A release of the variant of ``ref`` for ``profile``, issued to no device (a bundle).
        A device running a newer version of the model refuses it unless ``allow_downgrade``."""
        if not profile:
            raise Invalid("profile: name the device profile the bundle is for (see `slmops profiles "
                          "list`)")
        try:
            chosen = self._profiles.get(profile)
        except KeyError as e:
            raise Invalid(f"profile: {e.args[0]}") from None
        return self._issue(self._variant(ref, profile, " into a bundle"), chosen, "", now_ms,
                           downgrade=allow_downgrade)

    def rollback(self, device: DeviceRecord, now_ms: int) -> ReleaseRecord:
        """A rollback instruction from the release the device runs: a new release naming its
        previous release's model version and files."""
        self._check_active(device)
        report = device.deployment
        if not report.previous_release:
            when = "" if report.updated_at_ms else " (it has sent no deployment report yet)"
            raise ReleaseRefused(f"{_who(device)} has no previous model to go back to{when}; assign "
                                 f"one with `slmops devices assign {device.name} NAME:VERSION`")
        if not report.active_release:
            raise ReleaseRefused(f"{_who(device)} runs no release to roll back from; assign a model "
                                 f"with `slmops devices assign {device.name} NAME:VERSION`")
        previous = (self._store.get_release(report.previous_release, device.id)
                    or self._store.get_release(report.previous_release, ""))
        if previous is None:
            raise ReleaseRefused(f"{_who(device)} reports release {report.previous_release} "
                                 f"({report.previous_model or 'unknown model'}) as its previous one, "
                                 "which this controller never issued; assign a model instead")
        manifest = Manifest.from_json(json.loads(previous.manifest_json))  # our own, signed before
        if manifest.profile != device.effective_profile:
            raise ReleaseRefused(f"the previous release {manifest.release} ({manifest.ref}) is the "
                                 f"{manifest.profile} variant, but {_who(device)} now runs profile "
                                 f"{device.effective_profile!r}; assign a model instead")
        return self._instruction(manifest, device.id, now_ms, rollback_from=report.active_release)

    def stay(self, device: DeviceRecord, now_ms: int, calling_off: int) -> ReleaseRecord:
        """A rollback instruction from ``calling_off`` naming the release the device runs (by its
        last report) as its desired state: the update to ``calling_off`` still under way is
        called off (the device drops it and keeps serving those files, under the new number).
        A device that finished that update before this reaches it, or that comes back from
        being offline mid-update, goes back to the files it ran."""
        self._check_active(device)
        running = device.deployment.active_release
        if not running:
            raise ReleaseRefused(f"{_who(device)} runs no release yet, so there is none to keep it on")
        current = self._store.get_release(running, device.id) or self._store.get_release(running, "")
        if current is None:
            raise ReleaseRefused(f"{_who(device)} reports release {running} as the one it runs, which "
                                 "this controller never issued; assign a model instead")
        manifest = Manifest.from_json(json.loads(current.manifest_json))  # our own, signed before
        return self._instruction(manifest, device.id, now_ms, rollback_from=calling_off)

    def _instruction(self, older: Manifest, device_id: str, now_ms: int, *,
                     rollback_from: int) -> ReleaseRecord:
        """``older`` again as a rollback instruction from ``rollback_from``, with a new number."""
        with self._lock:
            again = replace(older, release=self._store.next_release(), rollback=True,
                            rollback_from=rollback_from, downgrade=False, issued_at_ms=now_ms,
                            expires_at_ms=now_ms + self._ttl_ms)
            return self._save(again, device_id, now_ms)

    def _issue(self, variant: VariantRecord, profile: DeviceProfile, device_id: str,
               now_ms: int, rollout_id: str = "", *, downgrade: bool = False,
               min_accuracy: float = 0.0) -> ReleaseRecord:
        files = self._ingest(variant)
        model = self._registry.get(variant.model_ref)
        lineage = {**model.lineage, **{k: v for k, v in (("job_id", model.job_id),
                                                          ("variant_job_id", variant.job_id)) if v}}
        gate = build_gate(variant, profile)
        if min_accuracy > gate.min_accuracy:  # the stricter of the build's and the caller's
            gate = replace(gate, min_accuracy=round(min(1.0, min_accuracy), 6))
        with self._lock:
            manifest = Manifest(
                release=self._store.next_release(), model=variant.name, version=variant.version,
                profile=variant.profile, precision=variant.precision, runtime=variant.runtime,
                variant=variant.sha256, files=tuple(files), issued_at_ms=now_ms,
                expires_at_ms=now_ms + self._ttl_ms, gate=gate, requires=_requires(profile),
                metrics={k: variant.metrics[k] for k in METRIC_KEYS if k in variant.metrics},
                lineage=lineage, downgrade=downgrade,
            )
            return self._save(manifest, device_id, now_ms, rollout_id)

    def _save(self, manifest: Manifest, device_id: str, now_ms: int,
              rollout_id: str = "") -> ReleaseRecord:
        body, signature = sign(manifest, self._key)
        record = ReleaseRecord(
            release=manifest.release, device_id=device_id, model=manifest.model,
            version=manifest.version, profile=manifest.profile, manifest_json=body,
            signature=signature, rollback=manifest.rollback, created_at_ms=now_ms)
        self._store.add_release(record, (f.sha256 for f in manifest.files), rollout_id)
        return record

    # --- serving ---------------------------------------------------------------------------

    @property
    def scratch_dir(self) -> Path:
        return self._blobs.scratch_dir

    def blob_path(self, device_id: str, sha: str) -> Path | None:
        """The stored blob ``sha`` if a manifest issued to this device names it; else None.
        Invalid for a malformed sha."""
        check_sha256(sha)
        if not device_id or not self._store.may_fetch(device_id, sha):
            return None
        path = self._blobs.path(sha)
        return path if path.is_file() else None

    def bundle_blobs(self, record: ReleaseRecord) -> list[tuple[str, Path]]:
        """(sha256, stored file) of every distinct file of a release, in manifest order."""
        manifest = Manifest.from_json(json.loads(record.manifest_json))
        out: dict[str, Path] = {}
        for entry in manifest.files:
            path = self._blobs.path(entry.sha256)
            if not path.is_file():
                raise BlobError(f"blob {entry.sha256} of {entry.path} (release {record.release}) is "
                                f"missing from {self._blobs.root}; assign or export the model again")
            out.setdefault(entry.sha256, path)
        return list(out.items())

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _check_active(device: DeviceRecord) -> None:
        if device.removed_at_ms:
            raise NotFound(f"{_who(device)} was removed from the fleet; enroll it again")

    def _variant(self, ref: str, profile: str, where: str) -> VariantRecord:
        try:
            return self._registry.deployable_variant(ref, profile)
        except NotDeployable as e:
            raise ReleaseRefused(f"can't deliver {ref}{where}: {e}") from None

    def _ingest(self, variant: VariantRecord) -> list[FileEntry]:
        try:
            return deliverable_files(self._registry, self._blobs, variant)  # checked against the registry
        except (BlobError, DamagedVariant, OSError) as e:
            raise ReleaseRefused(f"the {variant.profile} variant of {variant.model_ref} can't be "
                                 f"delivered: {e}") from None
