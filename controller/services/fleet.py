"""FleetService.Connect: the one long-lived stream per device.

The device is known from its certificate. Up: hello, heartbeats, telemetry (acknowledged only
once committed), deployment reports. Down: welcome, acknowledgements, desired state (labels,
profile and the signed manifest of the assigned release), commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.delivery.phases import DeploymentPhase, UnknownPhase
from agent.delivery.phases import from_proto as phase_from_proto
from controller import validation
from controller.build.profiles import ProfileSet
from controller.hub import Hub, Session
from controller.ingest import IngestWriter
from controller.profiles import match_profile
from controller.services.common import hardware_to_dict, now_ms, require_device
from controller.store import (
    BenchmarkRecord,
    DeviceRecord,
    FleetStore,
    IngestItem,
    SampleRow,
    StoreError,
    Touch,
)
from controller.store.base import DeploymentReport, ReleaseRecord
from protos import delivery_pb2, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 30
MAX_SAMPLES_PER_BATCH = 1000
MAX_VALUES_PER_SAMPLE = 512
MAX_REPORT_CHARS = 256 * 1024
MAX_DETAIL_CHARS = 64 * 1024
MAX_REASON_CHARS = 4096
_MAX_COUNT = 2**62  # releases and byte counts: far beyond any real one, within a BIGINT


def desired_state(device: DeviceRecord, release: ReleaseRecord | None = None) -> fleet_pb2.ConnectResponse:
    """The device's desired state; ``release`` is its desired signed manifest (store
    ``desired_manifest``), None while no model is assigned."""
    state = fleet_pb2.DesiredState(
        generation=device.desired_generation, labels=dict(device.labels), model=device.desired_model,
        profile=device.effective_profile,
    )
    if release is not None:
        state.manifest.CopyFrom(delivery_pb2.SignedManifest(manifest_json=release.manifest_json,
                                                            signature=release.signature))
    return fleet_pb2.ConnectResponse(desired_state=state)


async def load_desired_state(store: FleetStore, device: DeviceRecord) -> fleet_pb2.ConnectResponse:
    """desired_state with the device's desired manifest read from the store (off the loop)."""
    return desired_state(device, await asyncio.to_thread(store.desired_manifest, device.id))


def deployment_to_report(status: delivery_pb2.DeploymentStatus, now: int) -> DeploymentReport:
    """Validate a device's deployment status; every error names the field. A phase number this
    controller does not know (a newer agent's) is recorded as ``unknown`` with the number in the
    reason, so the operator sees it; a report with no phase at all is refused."""
    phase, reason = deployment_phase(status)
    for name, limit in (("model", 255), ("active_model", 255), ("previous_model", 255),
                        ("reason", MAX_REASON_CHARS), ("detail_json", MAX_DETAIL_CHARS)):
        validation.text(f"deployment.{name}", getattr(status, name), limit)
    for name in ("release", "bytes_done", "bytes_total", "active_release", "previous_release",
                 "timestamp_ms"):
        validation.int_range(f"deployment.{name}", getattr(status, name), 0, _MAX_COUNT)
    rate = validation.finite("deployment.bytes_per_s", status.bytes_per_s)
    if rate < 0:
        raise validation.Invalid(f"deployment.bytes_per_s: {rate} is negative")
    if status.detail_json:
        validation.json_object("deployment.detail_json", status.detail_json)
    return DeploymentReport(
        release=status.release, model=status.model, phase=phase, reason=reason,
        bytes_done=status.bytes_done, bytes_total=status.bytes_total, bytes_per_s=rate,
        active_model=status.active_model, active_release=status.active_release,
        previous_model=status.previous_model, previous_release=status.previous_release,
        detail_json=status.detail_json, timestamp_ms=status.timestamp_ms, updated_at_ms=now,
    )


def deployment_phase(status: delivery_pb2.DeploymentStatus) -> tuple[DeploymentPhase, str]:
    """The report's phase and reason: a number this controller does not know is UNKNOWN, with
    the number in the reason; a report without a phase is Invalid."""
    try:
        return phase_from_proto(status.deployment_phase), status.reason
    except UnknownPhase as e:
        if e.number == 0:
            raise validation.Invalid("deployment.deployment_phase: not set; every report names the "
                                     "phase of its release (is the agent older than this "
                                     "controller? upgrade it)") from None
    return DeploymentPhase.UNKNOWN, (f"unknown phase {status.deployment_phase} (the agent is newer "
                                     "than this controller)"
                                     + (f": {status.reason}" if status.reason else ""))


def batch_to_item(device_id: str, batch: fleet_pb2.TelemetryBatch) -> IngestItem:
    """Validate a batch; every error names the field, e.g. telemetry.samples[3].seq."""
    validation.int_range("telemetry.samples", len(batch.samples), 0, MAX_SAMPLES_PER_BATCH, " samples")
    rows = []
    previous = 0
    for i, sample in enumerate(batch.samples):
        where = f"telemetry.samples[{i}]"
        if sample.seq <= previous:
            raise validation.Invalid(f"{where}.seq: {sample.seq} does not follow {previous}; "
                                     "samples must be in increasing seq order, starting at 1")
        previous = sample.seq
        if sample.timestamp_ms <= 0:
            raise validation.Invalid(f"{where}.timestamp_ms: {sample.timestamp_ms} is not a time")
        validation.int_range(f"{where}.values", len(sample.values), 0, MAX_VALUES_PER_SAMPLE, " values")
        values = []
        for j, v in enumerate(sample.values):
            validation.text(f"{where}.values[{j}].metric", v.metric, 64)
            validation.text(f"{where}.values[{j}].series", v.series, 128)
            values.append((v.metric, v.series, validation.finite(f"{where}.values[{j}].value", v.value)))
        rows.append(SampleRow(sample.seq, sample.timestamp_ms, tuple(values)))
    return IngestItem(device_id, tuple(rows), batch.dropped_total)


def benchmark_to_record(device_id: str, report: fleet_pb2.BenchmarkReport,
                        now: int) -> BenchmarkRecord:
    """Validate a device's benchmark report; every error names the field."""
    for name, limit in (("command_id", 64), ("model", 255), ("version", 64), ("profile", 255),
                        ("precision", 32), ("variant_sha256", 64)):
        validation.text(f"benchmark.{name}", getattr(report, name), limit)
    validation.text("benchmark.report_json", report.report_json, MAX_REPORT_CHARS)
    body = validation.json_object("benchmark.report_json", report.report_json)
    return BenchmarkRecord(
        device_id=device_id, model=report.model, version=report.version, profile=report.profile,
        precision=report.precision, variant_sha256=report.variant_sha256,
        command_id=report.command_id, created_at_ms=now, report=body,
    )


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, store: FleetStore, hub: Hub, ingest: IngestWriter,
                 profiles: ProfileSet | None = None) -> None:
        self._store, self._hub, self._ingest = store, hub, ingest
        self._profiles = profiles  # None: the built-in ones
        self._unknown_phases: set[tuple[str, int]] = set()  # (device, number) warned about

    async def Connect(
        self, request_iterator: AsyncIterator[fleet_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[fleet_pb2.ConnectResponse]:
        device = await require_device(context, self._store)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                first = await anext(request_iterator)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"send hello within {HELLO_TIMEOUT_S} s of opening the stream")
        if first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message on a stream must be hello")
        hello = first.hello
        try:
            validation.text("hello.agent_version", hello.agent_version, 64)
            validation.int_range("hello.heartbeat_interval_ms", hello.heartbeat_interval_ms,
                                 100, 3_600_000, " ms")
        except validation.Invalid as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        hardware = hardware_to_dict(hello.hardware)
        device = await self._ingest.run_in_writer(
            self._store.record_hello, device.id, hardware, hello.agent_version,
            match_profile(hardware, self._profiles), now_ms(),
        )
        session = self._hub.attach(device.id)
        session.last_seen_ms = now_ms()
        log.info("device %s (%s) connected", device.id, device.name)
        session.send(fleet_pb2.ConnectResponse(welcome=fleet_pb2.Welcome(
            device_id=device.id, acked_through_seq=device.acked_through_seq,
            server_time_ms=now_ms(),
        )))
        session.send(await load_desired_state(self._store, device))
        reader = asyncio.create_task(self._read(request_iterator, session))
        try:
            while (message := await session.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            self._hub.detach(session)
            self._ingest.touch(device.id, Touch(last_seen_ms=session.last_seen_ms))
            log.info("device %s disconnected: %s", device.id, session.closed_reason or "stream ended")
        if session.close_code:
            await context.abort(getattr(grpc.StatusCode, session.close_code), session.closed_reason)

    async def _deployment(self, device_id: str, status: delivery_pb2.DeploymentStatus) -> None:
        """Store a deployment report. A bad one is logged and dropped: the stream goes on, as
        the report is informational and the next one replaces it."""
        try:
            report = deployment_to_report(status, now_ms())
            await self._ingest.run_in_writer(self._store.record_deployment, device_id, report)
        except (validation.Invalid, StoreError) as e:
            log.warning("device %s: deployment report ignored: %s", device_id, e)
            return
        if report.phase == DeploymentPhase.UNKNOWN:
            key = (device_id, status.deployment_phase)
            if key not in self._unknown_phases:  # once per device and number, not every report
                self._unknown_phases.add(key)
                log.warning("device %s: release %d: %s; recorded as phase unknown", device_id,
                            report.release, report.reason)
            return
        # every few s while downloading
        level = logging.DEBUG if report.phase == DeploymentPhase.DOWNLOADING else logging.INFO
        log.log(level, "device %s: release %d %s%s", device_id, report.release, report.phase,
                f" ({report.reason})" if report.reason else "")

    async def _read(
        self, request_iterator: AsyncIterator[fleet_pb2.ConnectRequest], session: Session
    ) -> None:
        try:
            async for request in request_iterator:
                session.last_seen_ms = now_ms()
                kind = request.WhichOneof("body")
                if kind == "telemetry":
                    item = batch_to_item(session.device_id, request.telemetry)
                    result = await self._ingest.submit(item)
                    session.send(fleet_pb2.ConnectResponse(telemetry_ack=fleet_pb2.TelemetryAck(
                        batch_id=request.telemetry.batch_id,
                        acked_through_seq=result.acked_through_seq,
                        stored=result.stored, duplicates=result.duplicates,
                    )))
                elif kind == "heartbeat":
                    self._ingest.touch(session.device_id, Touch(
                        last_seen_ms=session.last_seen_ms,
                        spool_dropped_total=request.heartbeat.spool_dropped_total,
                    ))
                elif kind == "command_result":
                    answer = request.command_result
                    log.info("device %s: command %s ok=%s %s", session.device_id, answer.id,
                             answer.ok, answer.error)
                    self._hub.command_done(session.device_id, answer)
                elif kind == "benchmark":
                    record = benchmark_to_record(session.device_id, request.benchmark, now_ms())
                    # Stored before the next message is read, so before the command's result.
                    record = await self._ingest.run_in_writer(self._store.add_benchmark, record)
                    log.info("device %s: benchmark %d of %s:%s stored", session.device_id,
                             record.id, record.model, record.version)
                elif kind == "deployment":
                    await self._deployment(session.device_id, request.deployment)
                else:
                    raise validation.Invalid(f"unexpected message {kind!r} after hello")
            session.close("the agent closed the stream")
        except validation.Invalid as e:
            session.close(str(e), "INVALID_ARGUMENT")
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            session.close("stream broken")
        except Exception as e:  # logged: end this stream with a status, keep the server
            log.exception("stream of device %s failed", session.device_id)
            session.close(f"internal error: {e}", "INTERNAL")
