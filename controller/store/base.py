"""The fleet state behind one interface. SQL (SQLite by default, PostgreSQL by URL) implements it.

Servicers and the CLI never touch SQL; they call these methods. Every method is synchronous and
safe to call from several threads; the server calls them from worker threads.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.store.rollouts import RolloutStore


class StoreError(Exception):
    """A request the state can't satisfy; the message is meant for the user."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class TokenRejected(StoreError):
    """The enrollment token can't be used. ``reason`` is one of REASONS."""

    REASONS = ("unknown", "expired", "revoked", "used_up", "replayed")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TokenRecord:
    id: str
    # b"ed25519:" + the public key the token's secret derives (agent/enrollment_proof.py):
    # it checks a request's signature but can't make one. The secret itself is never stored.
    verifier: bytes
    labels: Mapping[str, str]
    created_at_ms: int
    expires_at_ms: int
    max_uses: int
    uses: int = 0
    revoked: bool = False


@dataclass(frozen=True)
class DeploymentReport:
    """Where a device stands with its releases, as it last reported (a DeploymentStatus,
    protos/delivery.proto); ``updated_at_ms`` is when the controller stored it (0: never)."""

    release: int = 0
    model: str = ""
    phase: str = ""
    reason: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_s: float = 0.0
    active_model: str = ""
    active_release: int = 0
    previous_model: str = ""
    previous_release: int = 0
    detail_json: str = ""
    timestamp_ms: int = 0
    updated_at_ms: int = 0


@dataclass(frozen=True)
class ReleaseRecord:
    """A signed manifest the controller issued. ``device_id`` "" for a bundle; ``rollback``: a
    signed instruction to go back to this (older) release."""

    release: int
    device_id: str
    model: str
    version: int
    profile: str
    manifest_json: bytes
    signature: bytes
    rollback: bool
    created_at_ms: int

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    name: str
    labels: Mapping[str, str]
    hardware: Mapping[str, object]  # the Hardware message as a dict (json_format.MessageToDict)
    profile: str
    agent_version: str
    cert_serial: str  # hex; only the certificate with this serial is accepted for the device
    enrolled_at_ms: int
    last_seen_ms: int = 0
    removed_at_ms: int = 0  # 0 while the device is in the fleet
    acked_through_seq: int = 0
    spool_dropped_total: int = 0
    desired_generation: int = 1
    desired_model: str = ""
    profile_override: str = ""  # the operator's choice; "" = the matched ``profile``
    desired_release: int = 0  # the release assigned; 0 = none
    desired_profile: str = ""  # the profile whose variant that release is
    deployment: DeploymentReport = field(default_factory=DeploymentReport)

    @property
    def effective_profile(self) -> str:
        """The profile the device is built for: the operator's override, else the matched one."""
        return self.profile_override or self.profile


@dataclass(frozen=True)
class SampleRow:
    seq: int
    timestamp_ms: int
    values: tuple[tuple[str, str, float], ...]  # (metric, series, value)


@dataclass(frozen=True)
class IngestItem:
    device_id: str
    samples: tuple[SampleRow, ...]  # in seq order
    dropped_total: int = 0


@dataclass(frozen=True)
class IngestResult:
    acked_through_seq: int
    stored: int
    duplicates: int


@dataclass(frozen=True)
class RawPoint:
    device_id: str
    metric: str
    series: str
    timestamp_ms: int
    value: float


@dataclass(frozen=True)
class BenchmarkRecord:
    """One on-device benchmark report; ``report`` is the agent's whole JSON object."""

    device_id: str
    model: str
    version: str
    profile: str
    precision: str
    variant_sha256: str
    command_id: str
    created_at_ms: int
    report: Mapping[str, object]
    id: int = 0  # set by the store


@dataclass
class Touch:
    """A heartbeat's effect on a device row, applied in batches."""

    last_seen_ms: int
    spool_dropped_total: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class FleetStore(RolloutStore, abc.ABC):
    # tokens
    @abc.abstractmethod
    def create_token(self, token: TokenRecord) -> None: ...

    @abc.abstractmethod
    def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def revoke_token(self, token_id: str) -> TokenRecord:
        """Raises NotFound."""

    @abc.abstractmethod
    def enroll_device(self, token_id: str, now_ms: int, device: DeviceRecord, *,
                      nonce: bytes = b"", nonce_expires_at_ms: int = 0) -> DeviceRecord:
        """In one transaction: refuse a ``nonce`` seen before (TokenRejected "replayed") and
        record it until ``nonce_expires_at_ms``, check the token (TokenRejected with the
        reason), count one use, and insert the device with the token's labels under its own
        (the device's win).
        Raises Conflict if an active (not removed) device already has that name."""

    # devices
    @abc.abstractmethod
    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    def find_device(self, id_or_name: str) -> DeviceRecord | None:
        """By id, else by the name of an active device."""

    @abc.abstractmethod
    def list_devices(
        self, selector: Mapping[str, str] | None = None, include_removed: bool = False
    ) -> list[DeviceRecord]: ...

    @abc.abstractmethod
    def update_labels(
        self, device_id: str, set_labels: Mapping[str, str], remove: Iterable[str]
    ) -> DeviceRecord:
        """Raises NotFound. Bumps desired_generation (labels are part of the desired state)."""

    @abc.abstractmethod
    def remove_device(self, device_id: str, now_ms: int) -> DeviceRecord:
        """Marks it removed; its certificate stops working. Raises NotFound."""

    @abc.abstractmethod
    def record_hello(
        self, device_id: str, hardware: Mapping[str, object], agent_version: str,
        profile: str, now_ms: int,
    ) -> DeviceRecord: ...

    @abc.abstractmethod
    def touch_devices(self, touches: Mapping[str, Touch]) -> None:
        """Apply many heartbeats in one transaction (last_seen only moves forward)."""

    @abc.abstractmethod
    def set_profile_override(self, device_id: str, profile: str) -> DeviceRecord:
        """Set ("" clears) the operator's profile for an active device. Raises NotFound."""

    # releases (model delivery)
    @abc.abstractmethod
    def next_release(self) -> int:
        """A new release number, higher than every one handed out before (never reused)."""

    @abc.abstractmethod
    def add_release(self, record: ReleaseRecord, blobs: Iterable[str],
                    rollout_id: str = "") -> DeviceRecord | None:
        """Store a signed manifest and the sha256s of its files. For a device (``device_id``
        set), in the same transaction: the device may fetch those blobs, and the release becomes
        its desired state (desired_release, desired_model, desired_profile, and
        desired_generation + 1); returns the device as updated. None for a bundle. Raises
        NotFound for an unknown or removed device. With ``rollout_id``, also in that transaction:
        the device's row in that rollout goes from pending to assigned with this release, and
        Conflict (nothing stored) if it was not pending: a device is never assigned twice."""

    @abc.abstractmethod
    def desired_manifest(self, device_id: str) -> ReleaseRecord | None:
        """The device's desired signed manifest (its newest release row); None if none."""

    @abc.abstractmethod
    def get_release(self, release: int, device_id: str) -> ReleaseRecord | None:
        """The newest row of release number ``release`` issued to ``device_id`` ("" = bundles)."""

    @abc.abstractmethod
    def may_fetch(self, device_id: str, sha256: str) -> bool:
        """Whether a manifest issued to the device names this blob."""

    @abc.abstractmethod
    def record_deployment(self, device_id: str, report: DeploymentReport) -> DeviceRecord:
        """Store a device's deployment report (in place of the last one). Raises NotFound for an
        unknown or removed device."""

    # benchmarks
    @abc.abstractmethod
    def add_benchmark(self, record: BenchmarkRecord) -> BenchmarkRecord:
        """Store a report; returns it with its id. Raises NotFound for an unknown device."""

    @abc.abstractmethod
    def list_benchmarks(
        self, device_id: str = "", model: str = "", version: str = "", command_id: str = "",
        limit: int = 50,
    ) -> list[BenchmarkRecord]:
        """Newest first; each non-empty argument must match."""

    # telemetry
    @abc.abstractmethod
    def ingest(self, items: list[IngestItem]) -> list[IngestResult]:
        """Store many devices' batches in one transaction, each sample once: a sample whose seq
        is <= the device's acked_through_seq is a duplicate and is not stored again. Values
        whose metric is not in agent.telemetry.catalog are skipped. Returns one result per
        item, in order. After it returns, the data survives a crash of the process."""

    @abc.abstractmethod
    def query_points(
        self, device_ids: list[str], metric: str, start_ms: int, end_ms: int
    ) -> list[RawPoint]:
        """Raw points with start_ms <= timestamp < end_ms, ordered by device, series, time."""

    @abc.abstractmethod
    def apply_retention(self, older_than_ms: int) -> int:
        """Delete points older than this; return how many."""

    @abc.abstractmethod
    def close(self) -> None: ...
