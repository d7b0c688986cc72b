"""The device's side of a release: from a signed manifest to a model serving, or a clear refusal.

One release at a time goes through these phases, each reported upstream as it starts:

    downloading -> verifying -> staging -> gating -> active
                                          \\-> failed: <reason>     (the old model keeps serving)
    refused: <reason>  (bad signature, another profile's variant, expired, a release not above
                        the highest accepted one, an unintended downgrade)
    rolled_back        (a signed rollback instruction: back to the previous slot, no download)

Nothing reaches the served model before the last step: the blobs land in the blob cache (each
hash checked), the variant is staged in a slot of its own beside the active one, loaded, and
gated on this hardware (golden prompts, speed, memory). The switch is one atomic rename of
slots.json plus one assignment in the ModelSlot; requests in flight finish on the old engine.

The release being worked on is kept in DATA_DIR/deploy.json (its signed bytes and its phase),
so a restarted agent picks it up where it was: the blob cache resumes partial downloads, a
staged slot is reused, and slots.json says which release was live. A release that failed its
gate is not retried until the controller sends another; one that failed for want of disk space
(``insufficient storage``, its partial files deleted) is taken up again by itself once there is room.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import errno
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from agent.delivery.accepted import AcceptedRelease
from agent.delivery.blobcache import BlobCache
from agent.delivery.bundle import read_bundle
from agent.delivery.fetch import Fetcher, FetchFailed
from agent.delivery.gate import run_gate
from agent.delivery.manifest import Manifest, ManifestRefused, check_acceptable, verify
from agent.delivery.phases import SETTLED, DeploymentPhase
from agent.delivery.phases import to_proto as phase_to_proto
from agent.delivery.slots import SlotInfo, Slots
from agent.delivery.storage import InsufficientStorage, check_space, has_room, shortage
from agent.engine import Engine, ModelSlot, VariantError
from agent.files import write_atomic
from agent.link import backoff_delay
from agent.supervise import log_failure
from protos import common_pb2, delivery_pb2

log = logging.getLogger(__name__)
STATE_FILE = "deploy.json"
PROFILE_FILE = "profile.json"  # the profile the controller last named for this device
DEFAULT_RESERVE_BYTES = 64 * 2**20  # left free on the data dir's disk after a download
PROGRESS_EVERY_S = 1.0
# A settled release (phases.SETTLED) is not worked on again by the device by itself, except one
# that failed for want of disk space: it is retried once there is room.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
SHORT_OF_SPACE = "insufficient storage"  # how such a failure's reason starts

# Sends a status upstream (latest wins; resent after a reconnect).
Reporter = Callable[[delivery_pb2.DeploymentStatus], None]


@dataclass
class _Target:
    manifest_json: bytes
    signature: bytes
    release: int
    phase: DeploymentPhase = DeploymentPhase.DOWNLOADING
    reason: str = ""
    profile: str = ""  # the device's profile when the controller sent it ("" = not known)

    def to_json(self) -> dict[str, Any]:
        return {"manifest_json": base64.b64encode(self.manifest_json).decode(),
                "signature": base64.b64encode(self.signature).decode(),
                "release": self.release, "phase": self.phase, "reason": self.reason,
                "profile": self.profile}


class Updater:
    def __init__(self, data_dir: Path, public_key: bytes, hardware: common_pb2.Hardware,
                 slot: ModelSlot, channel_factory: Callable[[], grpc.aio.Channel], report: Reporter,
                 *, max_bytes_per_s: float = 0.0, threads: int | None = None,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                 on_active: Callable[[], Awaitable[None]] | None = None,
                 space_retry_s: tuple[float, float] = (1.0, 30.0)) -> None:
        self._data_dir, self._public_key, self._hardware = data_dir, public_key, hardware
        self._reserve_bytes = reserve_bytes
        self._space_retry_s = space_retry_s  # (first, longest) wait between checks for room
        self._short: InsufficientStorage | None = None  # why the last converge stopped short
        self._on_active = on_active
        self._slot, self._report, self._threads = slot, report, threads
        self.cache = BlobCache(data_dir / "blobs")
        self.slots = Slots(data_dir / "models")
        self.accepted = AcceptedRelease(data_dir)
        self._progress = _Progress()
        self._fetcher = Fetcher(channel_factory, self.cache, max_bytes_per_s=max_bytes_per_s)
        self._state_path = data_dir / STATE_FILE
        self._profile = self._read_profile()
        self._task: asyncio.Task[str] | None = None
        self._working_on = 0  # the release the running task handles
        self.last: delivery_pb2.DeploymentStatus | None = None
        self.history: collections.deque[delivery_pb2.DeploymentStatus] = collections.deque(maxlen=100)

    # --- start-up --------------------------------------------------------------------------

    def load_active(self) -> SlotInfo | None:
        """Serve the active release, if there is one (blocking). A slot whose files are damaged
        is reported and left unserved rather than stopping the agent."""
        active = self.slots.active()
        if active is None:
            return None
        try:
            manifest = verify(active.manifest_json, active.signature, self._public_key)
            self._slot.load(active.path, name=manifest.model, version=str(manifest.version))
        except (ManifestRefused, VariantError) as e:
            log.error("the active release %d can't be served: %s", active.release, e)
            return None
        log.info("serving release %d (%s) from %s", active.release, active.model, active.path)
        return active

    def resume(self) -> None:
        """Pick up the release deploy.json says was in progress (call once the loop runs)."""
        target = self._read_state()
        if target is not None and (target.phase not in SETTLED or _short_of_space(target)):
            log.info("resuming release %d at phase %s", target.release, target.phase)
            self._start(target)
        elif target is not None:
            self._send(target.phase, target, reason=target.reason)

    # --- desired state ---------------------------------------------------------------------

    def on_desired(self, profile: str, manifest: delivery_pb2.SignedManifest | None) -> None:
        """The controller's desired state arrived (called on the event loop)."""
        if profile and profile != self._profile:
            self._profile = profile
            try:
                write_atomic(self._data_dir / PROFILE_FILE, json.dumps({"profile": profile}).encode())
            except OSError as e:  # a full disk: known in memory, written with the next desired state
                log.error("could not record the profile %s: %s", profile, e)
                self._profile = ""
        if manifest is None or not manifest.manifest_json:
            return
        try:
            release = verify(manifest.manifest_json, manifest.signature, self._public_key).release
        except ManifestRefused as e:
            self._refuse(manifest.manifest_json, manifest.signature, 0, str(e))
            return
        if release == self._working_on and self._task is not None and not self._task.done():
            return  # already on it
        known = self._read_state()
        if known is not None and known.release == release and known.manifest_json == manifest.manifest_json \
                and known.phase in SETTLED:
            self._send(known.phase, known, reason=known.reason)  # say again where it stands
            return
        self._start(_Target(manifest.manifest_json, manifest.signature, release, profile=profile))

    async def install_bundle(self, path: Path) -> str:
        """Install a bundle file (slmops bundle export) with the same checks as a network
        delivery: the signature before anything else, each blob's hash, the gate. Returns the
        phase it settled in."""
        before = await asyncio.to_thread(self.cache.complete)
        phase: str = DeploymentPhase.FAILED
        try:
            manifest_json, signature, manifest = await asyncio.to_thread(
                read_bundle, path, self.cache, self._public_key)
            phase = await self.converge(_Target(manifest_json, signature, manifest.release,
                                                profile=self._profile), fetch=False)
            return phase
        finally:
            # refused or failed: take its blobs back out
            if phase not in (DeploymentPhase.ACTIVE, DeploymentPhase.ROLLED_BACK):
                await asyncio.to_thread(self._drop_blobs_added_since, before)

    def _drop_blobs_added_since(self, before: set[str]) -> None:
        try:
            added = self.cache.complete() - before - self.slots.blobs_in_use()
            self.cache.remove(added)
        except OSError as e:
            log.warning("could not remove the bundle's blobs from %s: %s", self.cache.root, e)
            return
        if added:
            log.info("removed the %d blobs the bundle added", len(added))

    def _start(self, target: _Target) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a newer desired state replaces the one in progress
        self._working_on = target.release
        self._task = asyncio.create_task(self._converge_until_settled(target))
        self._task.add_done_callback(log_failure(f"release {target.release}"))

    async def _converge_until_settled(self, target: _Target) -> str:
        """converge(), and again each time it failed for want of disk space, once there is
        room: checked after a backoff that doubles up to the longest wait. The old model keeps
        serving meanwhile; a newer desired state cancels the wait."""
        attempt, rng = 0, random.Random()
        while True:
            self._short = None
            try:
                phase = await self.converge(target)
            except Exception as e:  # reported upstream (and logged), never left at "downloading"
                log.exception("release %d: the agent failed", target.release)
                return self._settle(target, DeploymentPhase.FAILED,
                                    reason=f"the agent failed: {type(e).__name__}: {e}")
            short = self._short
            if short is None:
                return phase
            first, longest = self._space_retry_s
            while True:
                await asyncio.sleep(backoff_delay(attempt, first, longest, rng))
                attempt += 1
                if has_room(self._data_dir, short.need_bytes, self._reserve_bytes):
                    break
            log.info("release %d: there is room on the disk now; trying again", target.release)

    async def wait(self) -> None:
        """Until the release in progress settles (tests, install-bundle)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the phases --------------------------------------------------------------------------

    async def converge(self, target: _Target, *, fetch: bool = True) -> str:
        """Take ``target`` as far as it goes; returns the phase it settled in."""
        try:
            manifest = verify(target.manifest_json, target.signature, self._public_key)
        except ManifestRefused as e:
            return self._refuse(target.manifest_json, target.signature, target.release, str(e))
        active = self.slots.active()
        if active is not None and active.release == manifest.release:
            return self._settle(target, DeploymentPhase.ACTIVE)  # already live (e.g. killed after the switch)
        running = _parsed(active)
        try:
            check_acceptable(manifest, profile=target.profile or self._profile,
                             hardware_arch=self._hardware.arch, isa_flags=list(self._hardware.isa_flags),
                             accelerators=[a.kind for a in self._hardware.accelerators],
                             now_ms=int(time.time() * 1000),
                             highest_accepted=self.accepted.floor(active.release if active else 0),
                             accepted_before=self.accepted.is_accepted(manifest.release,
                                                                       target.manifest_json),
                             running=running)
        except ManifestRefused as e:
            return self._refuse(target.manifest_json, target.signature, manifest.release, str(e))
        # From here on nothing at or below this release is accepted, even after a restart.
        try:
            await asyncio.to_thread(self.accepted.record, manifest.release, target.manifest_json)
        except OSError as e:
            return self._settle(target, DeploymentPhase.FAILED,
                                reason=f"can't record release {manifest.release} as accepted in "
                                f"{self.accepted.path}: {e}")
        if manifest.rollback:
            settled = await self._roll_back(target, manifest, running)
            if settled is not None:
                return settled
        try:
            await self._download(target, manifest, fetch)
            self._phase(target, DeploymentPhase.STAGING)
            staged = await asyncio.to_thread(self.slots.stage, manifest, target.manifest_json,
                                             target.signature, self.cache)
            self._phase(target, DeploymentPhase.GATING)
            return await self._gate_and_switch(target, manifest, staged)
        except InsufficientStorage as e:
            return self._out_of_space(target, manifest, e)
        except OSError as e:
            if e.errno in NO_SPACE:
                return self._out_of_space(target, manifest, e)
            return self._settle(target, DeploymentPhase.FAILED, reason=str(e))
        except (FetchFailed, VariantError) as e:
            return self._settle(target, DeploymentPhase.FAILED, reason=str(e))
        except ManifestRefused as e:  # a path the slot refuses (verify checked it already)
            return self._settle(target, DeploymentPhase.REFUSED, reason=str(e))

    async def _download(self, target: _Target, manifest: Manifest, fetch: bool) -> None:
        missing = self.cache.missing(manifest.files)
        partial = sum(self.cache.partial_size(f.sha256) for f in missing)
        total = manifest.total_bytes
        need = sum(f.size for f in missing) - partial
        self._progress.reset(self._bytes_on_disk(manifest, total))
        check_space(self._data_dir, need, what=f"to download release {manifest.release}",
                    reserve_bytes=self._reserve_bytes)
        self._phase(target, DeploymentPhase.DOWNLOADING,
                    detail={"files": len(manifest.files), "missing": len(missing), "bytes_to_fetch": need})
        if missing and not fetch:
            raise FetchFailed(f"{len(missing)} blobs are missing and this delivery has no network path")
        reporter = asyncio.create_task(self._report_progress(target, manifest, total))
        try:
            for entry in missing:
                log.info("fetching blob %s (%s) from byte %d of %d", entry.sha256, entry.path,
                         self.cache.partial_size(entry.sha256), entry.size)
                try:
                    await self._fetcher.fetch(entry.sha256, entry.size)
                except FetchFailed as e:
                    raise FetchFailed(f"{e} (file {entry.path})") from None
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        self._phase(target, DeploymentPhase.VERIFYING)
        # Each blob's hash was checked as it entered the cache; check that they are all there.
        still = self.cache.missing(manifest.files)
        if still:
            raise FetchFailed(f"blobs missing after the download: {', '.join(f.path for f in still)}")

    async def _report_progress(self, target: _Target, manifest: Manifest, total: int) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._progress.update(self._bytes_on_disk(manifest, total))
            self._send(DeploymentPhase.DOWNLOADING, target, done=self._progress.done, total=total,
                       rate=self._progress.rate())

    def _bytes_on_disk(self, manifest: Manifest, total: int) -> int:
        """What of the release's ``total`` bytes is on disk now, from the files themselves: a
        retried blob whose .part was dropped counts from 0 again, a resumed one once, and the
        figure never passes ``total``."""
        to_go = sum(max(0, f.size - self.cache.partial_size(f.sha256))
                    for f in self.cache.missing(manifest.files))
        return max(0, min(total, total - to_go))

    def _out_of_space(self, target: _Target, manifest: Manifest, error: Exception) -> str:
        """The disk is full: drop this release's partial files (they hold the space the device
        needs to keep running), report ``failed: insufficient storage (need, have)``, and let
        _converge_until_settled try again once there is room."""
        for entry in manifest.files:
            self.cache.drop_partial(entry.sha256)
        try:
            self.slots.gc(keep_releases=[manifest.release])  # a half-built staging dir, old slots
        except OSError as e:
            log.warning("could not clear old slots: %s", e)
        need = sum(f.size for f in self.cache.missing(manifest.files))
        if need == 0:  # every blob is in: what is short is room to stage it
            need = manifest.total_bytes
        self._short = shortage(
            self._data_dir, need, what=f"to download release {manifest.release}",
            reserve_bytes=self._reserve_bytes,
            then=f"the device retries by itself once there is room (the disk said: {error})")
        return self._settle(target, DeploymentPhase.FAILED, reason=str(self._short))

    async def _gate_and_switch(self, target: _Target, manifest: Manifest, staged: Path) -> str:
        baseline = psutil.Process().memory_info().rss
        started = time.perf_counter()
        engine = await asyncio.to_thread(Engine.load, staged, threads=self._threads)
        load_seconds = time.perf_counter() - started
        result = await asyncio.to_thread(run_gate, engine, manifest.gate, baseline_rss=baseline)
        if not result.passed:
            engine.close()
            return self._settle(target, DeploymentPhase.FAILED, reason=result.reason, detail=result.figures)
        # The switch: slots.json names the new release (one rename), then the engine takes the
        # old one's place (one assignment). A kill between the two serves the new release on
        # restart, which passed its gate; a kill before the first serves the old one.
        await asyncio.to_thread(self.slots.activate, manifest.release)
        self._slot.install(engine, name=manifest.model, version=str(manifest.version),
                           load_seconds=load_seconds)
        await asyncio.to_thread(self._collect_garbage)
        phase = self._settle(target, DeploymentPhase.ACTIVE, detail=result.figures)
        if self._on_active is not None:
            await self._on_active()
        return phase

    async def _roll_back(self, target: _Target, manifest: Manifest, running: Manifest | None) -> str | None:
        """A rollback instruction names files one of the two slots holds: the previous one (go
        back to it) or the active one (a call-off of an update the device never switched to:
        it stays). Either way no download and no gate (those files served here before); the
        files are staged again under the instruction's release number, which becomes the
        active one. None when neither slot holds them: they are installed like any release."""
        previous = _parsed(self.slots.previous())
        if running is not None and running.same_files(manifest):
            switch_back = False
        elif previous is not None and previous.same_files(manifest):
            switch_back = True
        else:
            return None
        if self.cache.missing(manifest.files):
            return None  # a blob of the slot is not in the cache (any more): fetch it
        try:
            self._phase(target, DeploymentPhase.STAGING)
            staged = await asyncio.to_thread(self.slots.stage, manifest, target.manifest_json,
                                             target.signature, self.cache)
            if not switch_back:
                # The engine serving the active slot serves these very files: only the number
                # changes. The old slot's directory is left to the next switch's clean-up.
                await asyncio.to_thread(self.slots.activate, manifest.release, replace=True)
                return self._settle(target, DeploymentPhase.ACTIVE)
            engine = await asyncio.to_thread(Engine.load, staged, threads=self._threads)
        except (VariantError, OSError) as e:
            return self._settle(target, DeploymentPhase.FAILED, reason=f"rollback: {e}")
        except ManifestRefused as e:
            return self._settle(target, DeploymentPhase.REFUSED, reason=str(e))
        await asyncio.to_thread(self.slots.activate, manifest.release)
        self._slot.install(engine, name=manifest.model, version=str(manifest.version), load_seconds=0.0)
        await asyncio.to_thread(self._collect_garbage)
        phase = self._settle(target, DeploymentPhase.ROLLED_BACK)
        if self._on_active is not None:
            await self._on_active()
        return phase

    def _collect_garbage(self) -> None:
        removed = self.slots.gc()
        freed = self.cache.gc(self.slots.blobs_in_use())
        if removed or freed:
            log.info("removed old releases %s and %d bytes of blobs", removed, freed)

    # --- state and reports -------------------------------------------------------------------

    def _phase(self, target: _Target, phase: DeploymentPhase, detail: dict[str, Any] | None = None) -> None:
        target.phase, target.reason = phase, ""
        self._write_state(target)
        self._send(phase, target, detail=detail)

    def _settle(self, target: _Target, phase: DeploymentPhase, *, reason: str = "",
                detail: dict[str, Any] | None = None) -> str:
        target.phase, target.reason = phase, reason
        self._write_state(target)
        (log.info if phase in (DeploymentPhase.ACTIVE, DeploymentPhase.ROLLED_BACK) else log.warning)(
            "release %d: %s%s", target.release, phase, f": {reason}" if reason else "")
        self._send(phase, target, reason=reason, detail=detail)
        return phase

    def _refuse(self, manifest_json: bytes, signature: bytes, release: int, reason: str) -> str:
        # Not written to deploy.json: a refused manifest must not displace the release in
        # progress, nor the record of the one that settled.
        target = _Target(manifest_json, signature, release, DeploymentPhase.REFUSED, reason)
        log.warning("refused release %d: %s", release, reason)
        self._send(DeploymentPhase.REFUSED, target, reason=reason)
        return DeploymentPhase.REFUSED

    def _send(self, phase: DeploymentPhase, target: _Target, *, reason: str = "",
              detail: dict[str, Any] | None = None, done: int = 0, total: int = 0,
              rate: float = 0.0) -> None:
        active, previous = self.slots.active(), self.slots.previous()
        model = ""
        try:
            model = json.loads(target.manifest_json)
            model = f"{model.get('model', '')}:{model.get('version', '')}"
        except (ValueError, AttributeError):
            model = ""
        status = delivery_pb2.DeploymentStatus(
            release=target.release, model=model if isinstance(model, str) else "",
            deployment_phase=phase_to_proto(phase),
            reason=reason[:2000], bytes_done=done, bytes_total=total, bytes_per_s=rate,
            active_model=active.model if active else "", active_release=active.release if active else 0,
            previous_model=previous.model if previous else "",
            previous_release=previous.release if previous else 0,
            detail_json=json.dumps(detail or {}), timestamp_ms=int(time.time() * 1000))
        self.last = status
        self.history.append(status)
        self._report(status)

    def _write_state(self, target: _Target) -> None:
        """Best effort: a full disk must not stop the phase from being reported upstream."""
        try:
            write_atomic(self._state_path, json.dumps(target.to_json()).encode())
        except OSError as e:
            log.error("could not record release %d's phase %s in %s: %s", target.release,
                      target.phase, self._state_path, e)

    def _read_profile(self) -> str:
        try:
            profile = json.loads((self._data_dir / PROFILE_FILE).read_text()).get("profile", "")
            return profile if isinstance(profile, str) else ""
        except (OSError, ValueError, AttributeError):
            return ""

    def _read_state(self) -> _Target | None:
        if not self._state_path.exists():
            return None
        try:
            data = json.loads(self._state_path.read_text())
            return _Target(base64.b64decode(data["manifest_json"]), base64.b64decode(data["signature"]),
                           int(data["release"]), DeploymentPhase(data["phase"]), str(data.get("reason", "")),
                           str(data.get("profile", "")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s is unreadable (%s); waiting for the controller's desired state",
                      self._state_path, e)
            return None


def _parsed(slot: SlotInfo | None) -> Manifest | None:
    """The manifest a slot was staged from (verified when it was staged and at start-up)."""
    if slot is None:
        return None
    try:
        return Manifest.from_json(json.loads(slot.manifest_json))
    except (ValueError, ManifestRefused):
        return None


class _Progress:
    """Bytes of a release on disk, and the download rate over the last few seconds."""

    def __init__(self) -> None:
        self.done = 0
        self._marks: list[tuple[float, int]] = []

    def reset(self, already: int) -> None:
        self.done, self._marks = already, [(time.monotonic(), already)]

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        self._marks.append((now, self.done))
        while len(self._marks) > 2 and now - self._marks[0][0] > 5.0:
            self._marks.pop(0)

    def rate(self) -> float:
        if len(self._marks) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._marks[0], self._marks[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0


def _short_of_space(target: _Target) -> bool:
    return target.phase == DeploymentPhase.FAILED and target.reason.startswith(SHORT_OF_SPACE)
