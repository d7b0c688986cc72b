"""FleetService.Connect: the one long-lived stream per device.

The device is known from its certificate. Up: hello, heartbeats, telemetry (acknowledged only
once committed). Down: welcome, acknowledgements, desired state, commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc

from controller import validation
from controller.build.profiles import ProfileSet
from controller.hub import Hub, Session
from controller.ingest import IngestWriter
from controller.profiles import match_profile
from controller.services.common import hardware_to_dict, now_ms, require_device
from controller.store import BenchmarkRecord, DeviceRecord, FleetStore, IngestItem, SampleRow, Touch
from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 30
MAX_SAMPLES_PER_BATCH = 1000
MAX_VALUES_PER_SAMPLE = 512
MAX_REPORT_CHARS = 256 * 1024


def desired_state(device: DeviceRecord) -> fleet_pb2.ConnectResponse:
    return fleet_pb2.ConnectResponse(desired_state=fleet_pb2.DesiredState(
        generation=device.desired_generation, labels=dict(device.labels), model=device.desired_model,
    ))


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
    try:
        body = json.loads(report.report_json)
    except ValueError as e:
        raise validation.Invalid(f"benchmark.report_json: not JSON ({e})") from None
    if not isinstance(body, dict):
        raise validation.Invalid("benchmark.report_json: must be a JSON object")
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

    async def Connect(
        self, request_iterator: AsyncIterator[fleet_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[fleet_pb2.ConnectResponse]:
        device = await require_device(context, self._store)
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
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
        session.send(desired_state(device))
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
                    result = request.command_result
                    log.info("device %s: command %s ok=%s %s", session.device_id, result.id,
                             result.ok, result.error)
                    self._hub.command_done(session.device_id, result)
                elif kind == "benchmark":
                    record = benchmark_to_record(session.device_id, request.benchmark, now_ms())
                    # Stored before the next message is read, so before the command's result.
                    record = await self._ingest.run_in_writer(self._store.add_benchmark, record)
                    log.info("device %s: benchmark %d of %s:%s stored", session.device_id,
                             record.id, record.model, record.version)
                else:
                    raise validation.Invalid(f"unexpected message {kind!r} after hello")
            session.close("the agent closed the stream")
        except validation.Invalid as e:
            session.close(str(e), "INVALID_ARGUMENT")
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            session.close("stream broken")
        except Exception as e:  # noqa: BLE001 - end this stream with a status, keep the server
            log.exception("stream of device %s failed", session.device_id)
            session.close(f"internal error: {e}", "INTERNAL")
