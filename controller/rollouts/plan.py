"""Planning a rollout: which devices, which wave each is in, and which are skipped and why.

Done once, when the rollout is created, so the plan an operator sees is the plan that runs:
the selector is resolved over device labels then, each device is matched to the passed variant
for its own profile (or reported skipped with the reason), and the waves spec ("1,25%,100%":
counts, or cumulative percentages; the first wave is the canary) becomes device counts.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from controller.registry import ModelRegistry, NotDeployable
from controller.rollouts.states import RolloutDeviceState, RolloutState
from controller.store import DeviceRecord
from controller.store.rollouts import GATE_NAMES, RolloutDeviceRecord, RolloutRecord
from controller.validation import Invalid

MAX_WAVES = 20
MAX_BAKE_MS = 7 * 24 * 3600 * 1000
OFFLINE_POLICIES = (RolloutDeviceState.FAILED, RolloutDeviceState.SKIPPED)  # what an offline device counts as
_PART = re.compile(r"^(\d{1,6})(%?)$")


def wave_sizes(spec: str, n: int) -> tuple[int, ...]:
    """Devices per wave for ``n`` devices. A plain number is that many devices in the wave; a
    percentage is where the waves so far must reach (cumulative, rounded up). Waves that would
    add no device are dropped; the spec must cover every device."""
    parts = [p.strip() for p in spec.split(",")] if spec.strip() else []
    if not parts:
        raise Invalid("waves: give the waves, e.g. 1,25%,100% (the first is the canary)")
    if len(parts) > MAX_WAVES:
        raise Invalid(f"waves: {len(parts)} waves; at most {MAX_WAVES}")
    sizes: list[int] = []
    done = 0
    for part in parts:
        match = _PART.match(part)
        if match is None:
            raise Invalid(f"waves: {part!r} is neither a device count nor a percentage like 25%")
        value = int(match.group(1))
        if match.group(2):
            if not 0 < value <= 100:
                raise Invalid(f"waves: {part!r} is not a percentage in 1..100%")
            reach = math.ceil(n * value / 100)
        else:
            if value < 1:
                raise Invalid(f"waves: {part!r}: a wave has at least one device")
            reach = done + value
        reach = min(reach, n)
        if reach > done:
            sizes.append(reach - done)
            done = reach
    if done < n:
        raise Invalid(f"waves: {spec!r} covers {done} of the {n} devices; end it with 100%")
    return tuple(sizes)


def allowed_failures(max_failure: str, started: int) -> int:
    """How many of ``started`` devices may fail: "N" devices, or "P%" of them (rounded down)."""
    match = _PART.match(max_failure.strip())
    if match is None:
        raise Invalid(f"max_failure: {max_failure!r} is neither a count nor a percentage like 10%")
    value = int(match.group(1))
    if match.group(2):
        if value > 100:
            raise Invalid(f"max_failure: {max_failure!r} is over 100%")
        return math.floor(started * value / 100)
    return value


@dataclass(frozen=True)
class RolloutSpec:
    """What the operator asked for; ``check`` validates it, naming the field."""

    model: str
    selector: Mapping[str, str]
    waves: str = "1,25%,100%"
    bake_ms: int = 120_000
    max_failure: str = "0"
    gates: Mapping[str, float] | None = None
    auto_rollback: bool = True
    offline_timeout_ms: int = 300_000
    offline_policy: str = RolloutDeviceState.FAILED

    def check(self) -> None:
        if not self.selector:
            raise Invalid("selector: give at least one KEY=VALUE the devices' labels must match")
        wave_sizes(self.waves, 1000)  # the syntax; the sizes come with the devices
        if not 0 <= self.bake_ms <= MAX_BAKE_MS:
            raise Invalid(f"bake_ms: {self.bake_ms} is out of range; allowed 0 to 7 days")
        allowed_failures(self.max_failure, 0)
        for name, limit in (self.gates or {}).items():
            if name not in GATE_NAMES:
                raise Invalid(f"gates: {name!r} is not one of {', '.join(GATE_NAMES)}")
            if not math.isfinite(limit) or limit < 0:
                raise Invalid(f"gates.{name}: {limit} is not a finite, non-negative number")
        min_accuracy = (self.gates or {}).get("min_device_accuracy", 0)
        if min_accuracy > 1:
            raise Invalid(f"gates.min_device_accuracy: {min_accuracy} is over 1 "
                          "(it is a share, 0..1)")
        if not 1000 <= self.offline_timeout_ms <= MAX_BAKE_MS:
            raise Invalid(f"offline_timeout_ms: {self.offline_timeout_ms} is out of range; allowed "
                          "1 s to 7 days")
        if self.offline_policy not in OFFLINE_POLICIES:
            raise Invalid(f"offline_policy: {self.offline_policy!r} is not one of "
                          f"{', '.join(OFFLINE_POLICIES)}")


def plan(spec: RolloutSpec, devices: list[DeviceRecord], registry: ModelRegistry, actor: str,
         now_ms: int) -> tuple[RolloutRecord, list[RolloutDeviceRecord]]:
    """The rollout and its devices, not yet stored. ``devices``: those the selector matched."""
    spec.check()
    ref = registry.get(spec.model).ref  # NAME alone: pinned to its newest version now
    rollout_id = "r-" + secrets.token_hex(6)
    targets: list[tuple[DeviceRecord, str]] = []
    skipped: list[RolloutDeviceRecord] = []
    verdicts: dict[str, str] = {}  # profile -> "" (deployable) or why not
    for device in sorted(devices, key=lambda d: (d.name, d.id)):
        profile = device.effective_profile
        if not profile:
            reason = "no profile yet (its agent has not reported its hardware)"
        else:
            if profile not in verdicts:
                try:
                    registry.deployable_variant(ref, profile)
                    verdicts[profile] = ""
                except NotDeployable as e:
                    verdicts[profile] = str(e)
            reason = verdicts[profile]
        if reason:
            skipped.append(RolloutDeviceRecord(rollout_id, device.id, device.name, -1, profile,
                                               RolloutDeviceState.SKIPPED, reason=reason,
                                               updated_at_ms=now_ms))
        else:
            targets.append((device, profile))
    if not targets:
        why = "; ".join(f"{d.device_name}: {d.reason}" for d in skipped[:5]) or \
            f"no device has the labels {dict(spec.selector)}"
        raise Invalid(f"selector: no device can take {ref} ({why})")
    sizes = wave_sizes(spec.waves, len(targets))
    planned: list[RolloutDeviceRecord] = []
    index = 0
    for wave, size in enumerate(sizes):
        for device, profile in targets[index:index + size]:
            planned.append(RolloutDeviceRecord(rollout_id, device.id, device.name, wave, profile,
                                               RolloutDeviceState.PENDING, updated_at_ms=now_ms))
        index += size
    rollout = RolloutRecord(
        id=rollout_id, model=ref, selector=dict(spec.selector), waves_spec=spec.waves,
        wave_sizes=sizes, bake_ms=spec.bake_ms, max_failure=spec.max_failure.strip(),
        gates=dict(spec.gates or {}), auto_rollback=spec.auto_rollback,
        offline_timeout_ms=spec.offline_timeout_ms, offline_policy=spec.offline_policy,
        state=RolloutState.RUNNING, created_by=actor, created_at_ms=now_ms, updated_at_ms=now_ms)
    return rollout, planned + skipped
