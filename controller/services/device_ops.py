"""AdminService's device operations: benchmark a device's active model, list the stored
benchmarks, and the operator's profile override. A mixin of AdminServicer (services/admin.py).

A benchmark is a ``bench`` command on the device's stream; the agent sends a BenchmarkReport
(stored by the fleet servicer as it arrives) and then the command's result, so by the time the
result is here the report is in the store, found again by its command id.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc

from controller import validation
from controller.build.profiles import ProfileSet
from controller.hub import DeviceOffline, Hub
from controller.ingest import IngestWriter
from controller.services.common import maps_errors_with, require_admin, status_for
from controller.services.fleet import load_desired_state
from controller.store import BenchmarkRecord, DeviceRecord, FleetStore
from protos import admin_pb2

DEFAULT_BENCH_TIMEOUT_MS = 300_000
MAX_BENCH_TIMEOUT_MS = 3_600_000
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000


class CommandFailed(Exception):
    """The device answered a command with an error (e.g. it has no active model)."""


class CommandTimedOut(Exception):
    pass


def _status(e: Exception) -> grpc.StatusCode | None:
    # Not UNAVAILABLE for an offline device: clients read that as "the controller is down".
    if isinstance(e, DeviceOffline | CommandFailed):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(e, CommandTimedOut):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return status_for(e)


maps_errors = maps_errors_with(_status)


def parse_model_ref(field: str, ref: str) -> tuple[str, str]:
    """NAME or NAME:VERSION -> (name, version or "")."""
    name, _, version = ref.partition(":")
    validation.text(field, ref, 320)
    if not name or (":" in ref and not version):
        raise validation.Invalid(f"{field}: {ref!r} is not NAME or NAME:VERSION")
    return name, version


def benchmark_to_proto(record: BenchmarkRecord, device_name: str) -> admin_pb2.Benchmark:
    return admin_pb2.Benchmark(
        id=record.id, device_id=record.device_id, device_name=device_name, model=record.model,
        version=record.version, profile=record.profile, precision=record.precision,
        variant_sha256=record.variant_sha256, command_id=record.command_id,
        created_at_ms=record.created_at_ms, report_json=json.dumps(dict(record.report)),
    )


class DeviceOpsMixin:
    _store: FleetStore
    _hub: Hub
    _ingest: IngestWriter
    _profiles: ProfileSet  # the controller's device profiles (built-in and custom)

    if TYPE_CHECKING:  # AdminServicer's
        async def _find(self, id_or_name: str) -> DeviceRecord: ...

        def _device(self, device: DeviceRecord) -> admin_pb2.Device: ...

    @maps_errors
    async def DeviceBench(self, request: admin_pb2.DeviceBenchRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> admin_pb2.DeviceBenchResponse:
        await require_admin(context)
        timeout_ms = request.timeout_ms or DEFAULT_BENCH_TIMEOUT_MS
        validation.int_range("timeout_ms", timeout_ms, 1000, MAX_BENCH_TIMEOUT_MS, " ms")
        validation.int_range("prompts", request.prompts, 0, 1000)
        validation.int_range("max_tokens", request.max_tokens, 0, 8192)
        device = await self._find(request.id)
        if device.removed_at_ms:
            raise DeviceOffline(f"device {device.name} ({device.id}) was removed from the fleet")
        args: dict[str, Any] = {k: v for k, v in (("prompts", request.prompts),
                                                  ("max_tokens", request.max_tokens)) if v}
        try:
            command_id, future = self._hub.send_command(device.id, "bench", args,
                                                        wait=not request.detach)
        except DeviceOffline as e:
            raise DeviceOffline(f"{e}; start its agent (`slmops-agent run`) and try again") \
                from None
        if future is None:
            return admin_pb2.DeviceBenchResponse(command_id=command_id)
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                result = await future
        except TimeoutError:
            raise CommandTimedOut(
                f"device {device.name} ({device.id}) sent no benchmark within {timeout_ms / 1000:g}"
                f" s; it may still be running: its report is stored when it arrives (see "
                f"`slmops devices show {device.name}`), or give a longer --timeout"
            ) from None
        finally:
            self._hub.forget(command_id)
        if not result.ok:
            raise CommandFailed(f"device {device.name} ({device.id}): {result.error}")
        found = await asyncio.to_thread(self._store.list_benchmarks, command_id=command_id, limit=1)
        if not found:
            raise CommandFailed(f"device {device.name} ({device.id}) finished the benchmark but "
                                "sent no report; update its agent")
        return admin_pb2.DeviceBenchResponse(
            command_id=command_id, benchmark=benchmark_to_proto(found[0], device.name))

    @maps_errors
    async def ListBenchmarks(self, request: admin_pb2.ListBenchmarksRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> admin_pb2.ListBenchmarksResponse:
        await require_admin(context)
        limit = validation.int_range("limit", request.limit or DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        name, version = parse_model_ref("model", request.model) if request.model else ("", "")
        device_id = (await self._find(request.device_id)).id if request.device_id else ""
        records = await asyncio.to_thread(self._store.list_benchmarks, device_id=device_id,
                                          model=name, version=version, limit=limit)
        names = {d.id: d.name for d in await asyncio.to_thread(self._store.list_devices, None, True)}
        return admin_pb2.ListBenchmarksResponse(
            benchmarks=[benchmark_to_proto(r, names.get(r.device_id, "")) for r in records])

    @maps_errors
    async def SetDeviceProfile(self, request: admin_pb2.SetDeviceProfileRequest,
                               context: grpc.aio.ServicerContext[Any, Any]
                               ) -> admin_pb2.SetDeviceProfileResponse:
        await require_admin(context)
        if request.profile:
            known = sorted(self._profiles.names)
            if request.profile not in known:
                raise validation.Invalid(
                    f"profile: {request.profile!r} is not a known profile; known: "
                    f"{', '.join(known)} (or \"\" to clear the override)")
        device = await self._find(request.id)
        device = await self._ingest.run_in_writer(
            self._store.set_profile_override, device.id, request.profile)
        session = self._hub.get(device.id)
        if session is not None:  # the profile is part of the desired state the agent checks against
            session.send(await load_desired_state(self._store, device))
        return admin_pb2.SetDeviceProfileResponse(device=self._device(device))
