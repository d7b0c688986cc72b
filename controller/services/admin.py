"""AdminService: tokens, devices, telemetry queries and model delivery for the operator. Admin
certificate only.

Benchmarks and the profile override are in services/device_ops.py (a mixin of this servicer).
Rollouts are in services/rollouts.py (another mixin).
Model delivery: AssignModel and RollbackDevice sign a release (controller/delivery/releases.py)
and push the new desired state down the device's stream if it is online; ExportBundle streams a
signed release and its blobs as one tar file for a device with no network path.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent.delivery.bundle import BundleError, write_bundle
from agent.enrollment_proof import format_token, verifier_of
from agent.telemetry.catalog import METRICS
from controller import validation
from controller.build.profiles import ProfileSet, builtin_profiles
from controller.delivery.blobs import BlobError
from controller.delivery.releases import ReleaseRefused, Releases
from controller.hub import Hub
from controller.ingest import IngestWriter
from controller.rollouts.engine import RolloutEngine
from controller.services.common import (
    device_to_proto,
    maps_errors,
    maps_errors_with,
    maps_stream_errors_with,
    now_ms,
    require_admin,
    status_for,
    token_to_proto,
)
from controller.services.device_ops import DeviceOpsMixin
from controller.services.fleet import load_desired_state
from controller.services.rollouts import RolloutOpsMixin
from controller.store import DeviceRecord, FleetStore, NotFound, TokenRecord
from controller.telemetry.aggregate import AGGREGATIONS, bucketize
from protos import admin_pb2, admin_pb2_grpc

# Each RPC types its request and response itself.
Context = grpc.aio.ServicerContext[Any, Any]

MAX_TTL_MS = 366 * 24 * 3600 * 1000
MAX_WINDOW_MS = 366 * 24 * 3600 * 1000
MAX_BUCKETS = 10_000
BUNDLE_CHUNK_BYTES = 1 << 20


def _delivery_status(e: Exception) -> grpc.StatusCode | None:
    if isinstance(e, ReleaseRefused | BlobError | BundleError):  # stored blobs that don't fit
        return grpc.StatusCode.FAILED_PRECONDITION
    return status_for(e)


maps_delivery_errors = maps_errors_with(_delivery_status)
maps_delivery_stream_errors = maps_stream_errors_with(_delivery_status)


def _model_ref(value: str) -> str:
    if not value:
        raise validation.Invalid("model: give the model as NAME:VERSION (or NAME for its newest "
                                 "version); see `slmops models list`")
    return validation.text("model", value, 320)


class AdminServicer(DeviceOpsMixin, RolloutOpsMixin, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: FleetStore, hub: Hub, ingest: IngestWriter, offline_after_ms: int,
                 profiles: ProfileSet | None = None, releases: Releases | None = None,
                 rollouts: RolloutEngine | None = None, *, manifest_public_key: bytes) -> None:
        self._store, self._hub, self._ingest = store, hub, ingest
        self._manifest_public_key = manifest_public_key  # its fingerprint goes into every token
        self._offline_after_ms = offline_after_ms
        self._profiles = profiles or builtin_profiles()
        self._delivery = releases  # None: this controller does not deliver models
        self._rollouts = rollouts  # None: nor run rollouts

    def _device(self, device: DeviceRecord) -> admin_pb2.Device:
        return device_to_proto(device, self._hub, self._offline_after_ms)

    async def _find(self, id_or_name: str) -> DeviceRecord:
        validation.text("id", id_or_name, 64)
        device = await asyncio.to_thread(self._store.find_device, id_or_name)
        if device is None:
            raise NotFound(f"no device with id or name {id_or_name!r}; see `slmops devices list`")
        return device

    # tokens
    @maps_errors
    async def CreateToken(self, request: admin_pb2.CreateTokenRequest,
                          context: Context) -> admin_pb2.CreateTokenResponse:
        await require_admin(context)
        labels = validation.labels("labels", request.labels)
        validation.int_range("ttl_ms", request.ttl_ms, 60_000, MAX_TTL_MS, " ms")
        max_uses = validation.int_range("max_uses", request.max_uses or 1, 1, 100_000)
        secret = secrets.token_urlsafe(24)
        now = now_ms()
        token_id = "t-" + secrets.token_hex(6)
        token = TokenRecord(
            id=token_id, verifier=verifier_of(token_id, secret), labels=labels,
            created_at_ms=now, expires_at_ms=now + request.ttl_ms, max_uses=max_uses,
        )
        await self._ingest.run_in_writer(self._store.create_token, token)
        return admin_pb2.CreateTokenResponse(
            token=token_to_proto(token),
            secret_token=format_token(token.id, secret, self._manifest_public_key)
        )

    @maps_errors
    async def ListTokens(self, request: admin_pb2.ListTokensRequest,
                         context: Context) -> admin_pb2.ListTokensResponse:
        await require_admin(context)
        tokens = await asyncio.to_thread(self._store.list_tokens)
        return admin_pb2.ListTokensResponse(tokens=[token_to_proto(t) for t in tokens])

    @maps_errors
    async def RevokeToken(self, request: admin_pb2.RevokeTokenRequest,
                          context: Context) -> admin_pb2.RevokeTokenResponse:
        await require_admin(context)
        validation.token_id("id", request.id)
        token = await self._ingest.run_in_writer(self._store.revoke_token, request.id)
        return admin_pb2.RevokeTokenResponse(token=token_to_proto(token))

    # devices
    @maps_errors
    async def ListDevices(self, request: admin_pb2.ListDevicesRequest,
                          context: Context) -> admin_pb2.ListDevicesResponse:
        await require_admin(context)
        selector = validation.labels("selector", request.selector)
        devices = await asyncio.to_thread(
            self._store.list_devices, selector, request.include_removed
        )
        return admin_pb2.ListDevicesResponse(devices=[self._device(d) for d in devices])

    @maps_errors
    async def GetDevice(self, request: admin_pb2.GetDeviceRequest,
                        context: Context) -> admin_pb2.GetDeviceResponse:
        await require_admin(context)
        return admin_pb2.GetDeviceResponse(device=self._device(await self._find(request.id)))

    @maps_errors
    async def UpdateDeviceLabels(self, request: admin_pb2.UpdateDeviceLabelsRequest,
                                 context: Context) -> admin_pb2.UpdateDeviceLabelsResponse:
        await require_admin(context)
        set_labels = validation.labels("set", request.set)
        remove = validation.label_keys("remove", request.remove)
        device = await self._find(request.id)
        device = await self._ingest.run_in_writer(
            self._store.update_labels, device.id, set_labels, remove
        )
        session = self._hub.get(device.id)
        if session is not None:
            session.send(await load_desired_state(self._store, device))
        return admin_pb2.UpdateDeviceLabelsResponse(device=self._device(device))

    @maps_errors
    async def RemoveDevice(self, request: admin_pb2.RemoveDeviceRequest,
                           context: Context) -> admin_pb2.RemoveDeviceResponse:
        await require_admin(context)
        device = await self._find(request.id)
        device = await self._ingest.run_in_writer(self._store.remove_device, device.id, now_ms())
        self._hub.disconnect(device.id, f"device {device.id} was removed from the fleet",
                             "UNAUTHENTICATED")
        return admin_pb2.RemoveDeviceResponse(device=self._device(device))

    # telemetry
    @maps_errors
    async def ListMetrics(self, request: admin_pb2.ListMetricsRequest,
                          context: Context) -> admin_pb2.ListMetricsResponse:
        await require_admin(context)
        return admin_pb2.ListMetricsResponse(metrics=[
            admin_pb2.MetricInfo(name=m.name, unit=m.unit, help=m.help) for m in METRICS.values()
        ])

    @maps_errors
    async def QueryTelemetry(self, request: admin_pb2.QueryTelemetryRequest,
                             context: Context) -> admin_pb2.QueryTelemetryResponse:
        await require_admin(context)
        if request.metric not in METRICS:
            raise validation.Invalid(
                f"metric: {request.metric!r} is not a known metric; known: {', '.join(METRICS)}"
            )
        agg = request.agg or "avg"
        if agg not in AGGREGATIONS:
            raise validation.Invalid(f"agg: {agg!r} is not one of {', '.join(AGGREGATIONS)}")
        validation.int_range("since_ms", request.since_ms, 1, MAX_WINDOW_MS, " ms")
        validation.int_range("step_ms", request.step_ms, 0, MAX_WINDOW_MS, " ms")
        if request.until_ms < 0:
            raise validation.Invalid(f"until_ms: {request.until_ms} is negative")
        end = request.until_ms or now_ms()
        start = end - request.since_ms
        if request.step_ms and request.since_ms // request.step_ms > MAX_BUCKETS:
            raise validation.Invalid(
                f"step_ms: {request.step_ms} ms over {request.since_ms} ms gives more than "
                f"{MAX_BUCKETS} buckets; use a larger step"
            )
        selector = validation.labels("selector", request.selector)
        if request.device_id and selector:
            raise validation.Invalid("device_id and selector: give one or the other")
        if request.device_id:
            devices = [await self._find(request.device_id)]
        else:
            devices = await asyncio.to_thread(self._store.list_devices, selector, False)
        names = {d.id: d.name for d in devices}
        points = await asyncio.to_thread(
            self._store.query_points, list(names), request.metric, start, end
        )
        results = bucketize(points, start, end, request.step_ms, agg)
        return admin_pb2.QueryTelemetryResponse(
            start_ms=start, end_ms=end, step_ms=request.step_ms, agg=agg,
            series=[
                admin_pb2.Series(
                    device_id=r.device_id, device_name=names.get(r.device_id, ""),
                    metric=r.metric, series=r.series,
                    points=[admin_pb2.Point(timestamp_ms=p.timestamp_ms, value=p.value,
                                            count=p.count) for p in r.points],
                )
                for r in results
            ],
        )

    # model delivery
    def _releases(self) -> Releases:
        if self._delivery is None:
            raise ReleaseRefused("this controller was started without model delivery")
        return self._delivery

    async def _desired_changed(self, device_id: str) -> DeviceRecord:
        """The device as stored now; its new desired state goes down its stream if it is online."""
        device = await asyncio.to_thread(self._store.get_device, device_id)
        if device is None:
            raise NotFound(f"device {device_id} not found; see `slmops devices list`")
        session = self._hub.get(device_id)
        if session is not None:
            session.send(await load_desired_state(self._store, device))
        return device

    @maps_delivery_errors
    async def AssignModel(self, request: admin_pb2.AssignModelRequest,
                          context: Context) -> admin_pb2.AssignModelResponse:
        await require_admin(context)
        ref = _model_ref(request.model)
        device = await self._find(request.id)
        # An operator naming NAME:VERSION means that version, even an older one than the device
        # runs: the manifest is marked as an intended downgrade (NAME alone: the newest version).
        downgrade = ":" in ref
        # Hashing a new variant's files takes a while: off the loop, and off the writer thread.
        release = await asyncio.to_thread(self._releases().assign, device, ref, now_ms(),
                                          downgrade=downgrade)
        device = await self._desired_changed(device.id)
        return admin_pb2.AssignModelResponse(device=self._device(device), release=release.release)

    @maps_delivery_errors
    async def RollbackDevice(self, request: admin_pb2.RollbackDeviceRequest,
                             context: Context) -> admin_pb2.RollbackDeviceResponse:
        await require_admin(context)
        device = await self._find(request.id)
        release = await asyncio.to_thread(self._releases().rollback, device, now_ms())
        device = await self._desired_changed(device.id)
        return admin_pb2.RollbackDeviceResponse(device=self._device(device), release=release.release)

    @maps_delivery_stream_errors
    async def ExportBundle(self, request: admin_pb2.ExportBundleRequest,
                           context: Context) -> AsyncIterator[admin_pb2.BundleChunk]:
        await require_admin(context)
        ref = _model_ref(request.model)
        validation.text("profile", request.profile, 64)
        releases = self._releases()
        release = await asyncio.to_thread(releases.for_bundle, ref, request.profile, now_ms(),
                                          allow_downgrade=request.allow_downgrade)
        blobs = await asyncio.to_thread(releases.bundle_blobs, release)
        # The bundle is written to an unnamed file beside the blobs (gone when closed), then
        # streamed from there: whatever way the tar is written, memory stays at one chunk.
        with tempfile.TemporaryFile(dir=releases.scratch_dir) as out:
            await asyncio.to_thread(write_bundle, out, release.manifest_json, release.signature, blobs)
            await asyncio.to_thread(out.seek, 0)
            while data := await asyncio.to_thread(out.read, BUNDLE_CHUNK_BYTES):
                yield admin_pb2.BundleChunk(data=data)
