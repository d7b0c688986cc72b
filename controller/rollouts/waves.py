"""One step of one rollout's state machine, run by the engine on each tick (synchronous, in a
worker thread; every decision is read from and written to the store, so a restarted controller
takes up where the last one stopped).

A step starts the current wave's devices (under the in-flight cap), follows each assigned device
through its deployment reports, counts offline devices by the policy once their timeout passes,
and, when every device of the wave has settled, checks the failures, bakes, judges the gates and
moves to the next wave, finishes, or halts (and with auto-rollback, rolls back). Each step
returns the devices whose desired state changed, for the engine to push down their streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.delivery.phases import DeploymentPhase
from controller.delivery.releases import ReleaseRefused, Releases
from controller.rollouts import gates
from controller.rollouts.plan import allowed_failures
from controller.rollouts.states import (
    UNSETTLED,
    RolloutDeviceState,
    RolloutEvent,
    RolloutState,
    sources,
    transition,
)
from controller.store import Conflict, FleetStore, NotFound
from controller.store.rollouts import RolloutDeviceRecord, RolloutEventRecord, RolloutRecord

log = logging.getLogger(__name__)
SYSTEM = "system"  # the actor of what the engine decides on its own


@dataclass(frozen=True)
class Limits:
    max_in_flight: int = 20  # devices being updated at once, over all rollouts
    waves_per_minute: float = 10.0


def _min_accuracy(rollout: RolloutRecord) -> float:
    """The rollout's --min-device-accuracy: the on-device gate holds the device to it before
    the switch, so a canary that can't reach it never serves (0: the build's minimum alone)."""
    return float(rollout.gates.get("min_device_accuracy", 0.0))


def event(rollout_id: str, actor: str, action: str, detail: str, now_ms: int) -> RolloutEventRecord:
    return RolloutEventRecord(rollout_id, actor, action, detail, now_ms)


class WaveStepper:
    def __init__(self, store: FleetStore, releases: Releases, online: Callable[[str], bool],
                 limits: Limits) -> None:
        self._store, self._releases, self._online, self._limits = store, releases, online, limits
        self._last_wave_start: dict[str, int] = {}

    # --- the step ------------------------------------------------------------------------------

    def step(self, rollout: RolloutRecord, now: int) -> list[str]:
        pushes: list[str] = []
        if rollout.state == RolloutState.RUNNING and not rollout.wave_started_ms:
            gap = 60_000 / self._limits.waves_per_minute
            if now - self._last_started(rollout.id) < gap:
                return pushes
            names = [d.device_name for d in self._store.rollout_devices(rollout.id)
                     if d.wave == rollout.current_wave]
            started = self._store.update_rollout(
                rollout.id, [RolloutState.RUNNING], event(rollout.id, SYSTEM, "wave_started",
                                               f"wave {rollout.current_wave + 1} of "
                                               f"{len(rollout.wave_sizes)}: {', '.join(names)}", now),
                wave_started_ms=now, bake_started_ms=0, updated_at_ms=now)
            if started is None:
                return pushes
            rollout = started
            self._last_wave_start[rollout.id] = now
        for d in self._store.rollout_devices(rollout.id):
            if d.status == RolloutDeviceState.ASSIGNED:
                self._follow(rollout, d, now)
        if rollout.state != RolloutState.RUNNING:
            return pushes  # paused: in-flight updates finish, nothing new starts
        self._start_wave(rollout, now, pushes)
        self._judge_wave(rollout, now, pushes)
        return pushes

    def _last_started(self, rollout_id: str) -> int:
        """When the rollout last started a wave; after a restart, from its audit trail, so the
        waves-per-minute cap holds across one."""
        if rollout_id not in self._last_wave_start:
            started = [e.at_ms for e in self._store.rollout_events(rollout_id) if e.action == "wave_started"]
            self._last_wave_start[rollout_id] = max(started, default=0)
        return self._last_wave_start[rollout_id]

    def _set(self, d: RolloutDeviceRecord, now: int, **changes: Any) -> None:
        self._store.update_rollout_device(d.rollout_id, d.device_id, [d.status], updated_at_ms=now,
                                          **changes)

    def _offline_verdict(self, rollout: RolloutRecord, d: RolloutDeviceRecord, since: int,
                         now: int) -> None:
        seconds = (now - since) / 1000
        self._set(d, now, status=rollout.offline_policy,
                  reason=f"offline: no live stream for {seconds:.0f} s after its update was due "
                         f"(offline timeout {rollout.offline_timeout_ms / 1000:g} s, policy "
                         f"{rollout.offline_policy}); it converges when it returns")

    def _follow(self, rollout: RolloutRecord, d: RolloutDeviceRecord, now: int) -> None:
        device = self._store.get_device(d.device_id)
        if device is None or device.removed_at_ms:
            self._set(d, now, status=RolloutDeviceState.FAILED,
                      reason="removed from the fleet during the rollout")
            return
        report = device.deployment
        if device.desired_release != d.release:
            self._set(d, now, status=RolloutDeviceState.FAILED,
                      reason=f"assigned release {device.desired_release} outside this rollout while "
                      "it was being updated")
        elif report.release == d.release and report.phase == DeploymentPhase.ACTIVE and \
                report.active_release == d.release:
            self._set(d, now, status=RolloutDeviceState.ACTIVE, reason="",
                      previous_release=report.previous_release, previous_model=report.previous_model,
                      figures=gates.figures(self._store, device, now, now))
        elif report.release == d.release and \
                report.phase in (DeploymentPhase.FAILED, DeploymentPhase.REFUSED):
            self._set(d, now, status=RolloutDeviceState.FAILED, reason=f"{report.phase}: {report.reason}",
                      figures=gates.figures(self._store, device, now, now))
        elif not self._online(d.device_id) and now - d.assigned_at_ms > rollout.offline_timeout_ms:
            self._offline_verdict(rollout, d, d.assigned_at_ms, now)

    def _start_wave(self, rollout: RolloutRecord, now: int, pushes: list[str]) -> None:
        in_flight = self._store.count_in_flight()
        for d in self._store.rollout_devices(rollout.id):
            if d.wave != rollout.current_wave or d.status != RolloutDeviceState.PENDING:
                continue
            if in_flight >= self._limits.max_in_flight:
                return
            device = self._store.get_device(d.device_id)
            if device is None or device.removed_at_ms:
                self._set(d, now, status=RolloutDeviceState.FAILED, reason="removed from the fleet")
                continue
            if not self._online(d.device_id):
                if now - rollout.wave_started_ms > rollout.offline_timeout_ms:
                    self._offline_verdict(rollout, d, rollout.wave_started_ms, now)
                continue
            try:
                # A rollout names its version (NAME alone was pinned at creation): one older than
                # what a device runs is the operator's intent, as with `devices assign NAME:V`.
                self._releases.assign(device, rollout.model, now, rollout_id=rollout.id,
                                      min_accuracy=_min_accuracy(rollout), downgrade=True)
            except Conflict:
                continue  # recorded as assigned already (by a step before a restart)
            except (ReleaseRefused, NotFound) as e:
                self._set(d, now, status=RolloutDeviceState.FAILED, reason=str(e))
                continue
            pushes.append(d.device_id)
            in_flight += 1

    def _judge_wave(self, rollout: RolloutRecord, now: int, pushes: list[str]) -> None:
        wave = rollout.current_wave
        devices = [d for d in self._store.rollout_devices(rollout.id) if d.wave >= 0]
        if any(d.status in UNSETTLED for d in devices if d.wave == wave):
            return
        so_far = [d for d in devices if d.wave <= wave]
        failed = [d for d in so_far if d.status == RolloutDeviceState.FAILED]
        allowed = allowed_failures(rollout.max_failure, len(so_far))
        if len(failed) > allowed:
            failures: list[dict[str, Any]] = [
                {"gate": "max_failure", "device_id": d.device_id, "device_name": d.device_name,
                 "value": None, "limit": None, "passed": False, "detail": d.reason} for d in failed]
            why = "; ".join(f"{d.device_name}: {d.reason}" for d in failed)
            self._halt(rollout, f"wave {wave + 1}: {len(failed)} of {len(so_far)} devices failed, "
                       f"more than max_failure {rollout.max_failure} ({why})", failures, now, pushes)
            return
        if not rollout.bake_started_ms:
            self._store.update_rollout(rollout.id, [RolloutState.RUNNING], bake_started_ms=now,
                                       updated_at_ms=now)
            return
        if now - rollout.bake_started_ms < rollout.bake_ms:
            return
        results: list[dict[str, Any]] = []
        for d in so_far:
            device = self._store.get_device(d.device_id)
            if d.status != RolloutDeviceState.ACTIVE or device is None:
                continue
            figs = gates.figures(self._store, device, rollout.bake_started_ms, now)
            self._set(d, now, figures=figs)
            results.extend(gates.judge(rollout.gates, d.device_id, d.device_name, figs))
        bad = [r for r in results if not r["passed"]]
        if bad:
            self._halt(rollout, f"wave {wave + 1}: {gates.summary(bad)}", results, now, pushes)
            return
        last = wave + 1 >= len(rollout.wave_sizes)
        detail = f"wave {wave + 1} passed its gates after a {rollout.bake_ms / 1000:g} s bake"
        if last:
            done = self._store.update_rollout(
                rollout.id, sources(RolloutEvent.SUCCEED),
                event(rollout.id, SYSTEM, RolloutEvent.SUCCEED.audit_action, detail, now),
                state=transition(rollout.state, RolloutEvent.SUCCEED, rollout.id),
                gate_results=tuple(results), finished_at_ms=now, updated_at_ms=now)
            if done is not None:
                self._converge_offline(done, now, pushes)
        else:
            self._store.update_rollout(
                rollout.id, [RolloutState.RUNNING], event(rollout.id, SYSTEM, "wave_passed", detail, now),
                current_wave=wave + 1, wave_started_ms=0, bake_started_ms=0,
                gate_results=tuple(results), updated_at_ms=now)

    def _converge_offline(self, rollout: RolloutRecord, now: int, pushes: list[str]) -> None:
        """After success, devices counted out while offline get the release as their desired
        state, so each converges when it comes back."""
        for d in self._store.rollout_devices(rollout.id):
            if d.status in (RolloutDeviceState.FAILED, RolloutDeviceState.SKIPPED) and \
                    d.reason.startswith("offline"):
                device = self._store.get_device(d.device_id)
                if device is None or device.removed_at_ms:
                    continue
                try:
                    release = self._releases.assign(device, rollout.model, now, downgrade=True,
                                                    min_accuracy=_min_accuracy(rollout))
                except (ReleaseRefused, NotFound) as e:
                    self._set(d, now, reason=f"{d.reason}; can't be assigned: {e}")
                    continue
                self._set(d, now, status=RolloutDeviceState.ASSIGNED, release=release.release,
                          assigned_at_ms=now,
                          reason="offline during the rollout; assigned at its end, it converges "
                                 "when it returns")
                pushes.append(d.device_id)

    # --- halt and roll back --------------------------------------------------------------------

    def _halt(self, rollout: RolloutRecord, reason: str, results: list[dict[str, Any]], now: int,
              pushes: list[str]) -> None:
        log.warning("rollout %s halted: %s", rollout.id, reason)
        # with auto-rollback the state goes straight to rolled_back once the devices are on their
        # way back, never "halted" meanwhile
        state = transition(rollout.state, RolloutEvent.HALT, rollout.id)
        halted = self._store.update_rollout(
            rollout.id, sources(RolloutEvent.HALT),
            event(rollout.id, SYSTEM, RolloutEvent.HALT.audit_action, reason, now),
            **({} if rollout.auto_rollback else {"state": state}), reason=reason,
            gate_results=tuple(results), finished_at_ms=now, updated_at_ms=now)
        if halted is not None and rollout.auto_rollback:
            pushes.extend(self.roll_back(halted, SYSTEM, now))

    def roll_back(self, rollout: RolloutRecord, actor: str, now: int) -> list[str]:
        """Every device this rollout gave its release to goes back to what it ran before,
        whatever its state: one that switched to its previous release, and one that did not
        (still updating, failed, or offline mid-update and counted by the offline policy) has
        its update called off, with the release it runs by its last report as its desired
        state, so that it does not install the rollout's release when it returns. A device
        whose desired state changed outside the rollout since is left alone. The rollout ends
        rolled_back."""
        current = self._store.get_rollout(rollout.id)
        if current is None:
            raise NotFound(f"no rollout {rollout.id}; see `slmops rollout list`")
        target = transition(current.state, RolloutEvent.ROLL_BACK, rollout.id)
        pushes, back, kept = [], [], []
        for d in self._store.rollout_devices(rollout.id):
            if not d.release or d.status == RolloutDeviceState.ROLLED_BACK:
                continue  # never given the rollout's release (pending, skipped), or back already
            device = self._store.get_device(d.device_id)
            if device is None or device.removed_at_ms:
                continue
            if device.desired_release != d.release:
                kept.append(f"{d.device_name}: assigned release {device.desired_release} outside "
                            "this rollout since")
                continue
            switched = device.deployment.active_release == d.release
            try:
                release = (self._releases.rollback(device, now) if switched else
                           self._releases.stay(device, now, calling_off=d.release))
            except (ReleaseRefused, NotFound) as e:
                kept.append(f"{d.device_name}: {e}")
                self._set(d, now, reason=f"not rolled back: {e}" if switched else
                          f"its update could not be called off when the rollout was rolled back: {e}")
                continue
            # A device whose own report said the update failed keeps that status and its reason,
            # the figures the halt was about; every other one is rolled_back.
            failed_there = d.status == RolloutDeviceState.FAILED and not d.reason.startswith("offline")
            called_off = f"called off: it stays on {release.ref}, as release {release.release}"
            self._set(d, now, status=RolloutDeviceState.FAILED if failed_there else
                      RolloutDeviceState.ROLLED_BACK,
                      reason=f"back to {release.ref} as release {release.release}" if switched else
                      f"{d.reason}; {called_off}" if failed_there else
                      f"its update was {called_off} ({d.status}: {d.reason or 'updating'})")
            back.append(d.device_name)
            pushes.append(d.device_id)
        detail = f"{len(back)} device(s) back to their previous model: {', '.join(back) or '-'}"
        if kept:
            detail += f"; not rolled back: {'; '.join(kept)}"
        # the final state and its event together, once every device is on its way back: a reader
        # never sees a finished rollout whose devices were not yet sent back
        self._store.update_rollout(rollout.id, sources(RolloutEvent.ROLL_BACK),
                                   event(rollout.id, actor, RolloutEvent.ROLL_BACK.audit_action,
                                         detail, now),
                                   state=target, updated_at_ms=now,
                                   finished_at_ms=current.finished_at_ms or now)
        return pushes
