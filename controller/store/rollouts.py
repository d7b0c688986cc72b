"""Rollout state in the fleet store: the records and the store methods the rollout engine needs.

A rollout's whole state machine lives in the database, so a controller that is stopped or killed
resumes it exactly. The one step that must never happen twice, assigning a device its release,
is recorded in the same transaction as the release itself (``FleetStore.add_release`` with a
``rollout_id``), so after a crash a device is either assigned and recorded, or neither.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.rollouts.states import ACTIVE_STATES as ACTIVE_STATES  # re-exported: held devices
from controller.rollouts.states import RolloutDeviceState, RolloutState

STATES = tuple(RolloutState)
DEVICE_STATUSES = tuple(RolloutDeviceState)
GATE_NAMES = ("min_device_accuracy", "max_p95_ms", "max_error_rate", "max_memory_bytes")


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    model: str  # NAME:VERSION, resolved at create time
    selector: Mapping[str, str]
    waves_spec: str  # as given, e.g. "1,25%,100%"
    wave_sizes: tuple[int, ...]  # devices per wave, resolved at create time
    bake_ms: int
    max_failure: str  # "N" devices or "P%" of the devices started so far
    gates: Mapping[str, float]  # GATE_NAMES -> limit; a gate not present is not checked
    auto_rollback: bool
    offline_timeout_ms: int
    offline_policy: str  # "failed" | "skipped"
    state: str  # a RolloutState
    created_by: str
    created_at_ms: int
    updated_at_ms: int
    current_wave: int = 0
    wave_started_ms: int = 0  # 0: the current wave has not started
    bake_started_ms: int = 0  # 0: the current wave's devices have not all settled yet
    reason: str = ""
    gate_results: tuple[Mapping[str, Any], ...] = ()
    finished_at_ms: int = 0


@dataclass(frozen=True)
class RolloutDeviceRecord:
    rollout_id: str
    device_id: str
    device_name: str
    wave: int  # -1: skipped when the rollout was planned
    profile: str
    status: str  # a RolloutDeviceState
    release: int = 0
    previous_release: int = 0
    previous_model: str = ""
    reason: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    assigned_at_ms: int = 0
    updated_at_ms: int = 0


@dataclass(frozen=True)
class RolloutEventRecord:
    rollout_id: str
    actor: str
    action: str
    detail: str
    at_ms: int


class RolloutStore(abc.ABC):
    """The rollout half of FleetStore."""

    @abc.abstractmethod
    def create_rollout(self, rollout: RolloutRecord, devices: Sequence[RolloutDeviceRecord],
                       event: RolloutEventRecord) -> RolloutRecord:
        """In one transaction: refuse (Conflict, naming the rollout and the devices) when an
        active rollout holds any of the devices that would be changed; else insert it all."""

    @abc.abstractmethod
    def get_rollout(self, rollout_id: str) -> RolloutRecord | None: ...

    @abc.abstractmethod
    def list_rollouts(self, states: Sequence[str] = ()) -> list[RolloutRecord]:
        """Newest first; only those in ``states`` if given."""

    @abc.abstractmethod
    def rollout_devices(self, rollout_id: str) -> list[RolloutDeviceRecord]:
        """In wave order, then name."""

    @abc.abstractmethod
    def rollout_events(self, rollout_id: str) -> list[RolloutEventRecord]:
        """Oldest first."""

    @abc.abstractmethod
    def count_in_flight(self) -> int:
        """Devices assigned by running or paused rollouts that have not settled yet."""

    @abc.abstractmethod
    def update_rollout(self, rollout_id: str, expect_states: Sequence[str],
                       event: RolloutEventRecord | None = None, **changes: Any) -> RolloutRecord | None:
        """Apply ``changes`` (RolloutRecord fields) only if the rollout is in one of
        ``expect_states`` (all when empty), with the audit event, in one transaction. Returns
        the rollout as updated, or None if its state did not match. Raises NotFound."""

    @abc.abstractmethod
    def update_rollout_device(self, rollout_id: str, device_id: str, expect_statuses: Sequence[str],
                              **changes: Any) -> bool:
        """Apply ``changes`` (RolloutDeviceRecord fields) only if the device's status is one of
        ``expect_statuses``; whether it did."""
