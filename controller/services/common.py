"""What every servicer shares: the caller's certificate, error mapping, record -> proto."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from agent.delivery.phases import to_proto as phase_to_proto
from controller import validation
from controller.hub import Hub
from controller.pki import ROLE_ADMIN, ROLE_DEVICE, CsrError, PeerCert, parse_peer_cert
from controller.store import (
    Conflict,
    DeviceRecord,
    FleetStore,
    NotFound,
    TokenRecord,
    TokenRejected,
)
from protos import admin_pb2, common_pb2

T = TypeVar("T")


def now_ms() -> int:
    return int(time.time() * 1000)


StatusFor = Callable[[Exception], "grpc.StatusCode | None"]


def status_for(e: Exception) -> grpc.StatusCode | None:
    """The status code of a domain error; None for anything else (a bug, left to propagate)."""
    if isinstance(e, validation.Invalid | CsrError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, Conflict):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(e, TokenRejected):
        return grpc.StatusCode.UNAUTHENTICATED
    return None


def maps_errors_with(status: StatusFor) -> Callable[[Callable[..., Awaitable[T]]],
                                                     Callable[..., Awaitable[T]]]:
    """A decorator for unary handlers: errors ``status`` knows leave with their code, never
    UNKNOWN."""

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
            try:
                return await fn(self, request, context)
            except Exception as e:
                if (code := status(e)) is None:
                    raise
                await context.abort(code, str(e))
            raise AssertionError("unreachable")  # abort raises

        return wrapper

    return decorate


def maps_stream_errors_with(status: StatusFor) -> Callable[[Callable[..., AsyncIterator[T]]],
                                                            Callable[..., AsyncIterator[T]]]:
    """The same for server-streaming handlers."""

    def decorate(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any,
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[T]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as e:
                if (code := status(e)) is None:
                    raise
                await context.abort(code, str(e))

        return wrapper

    return decorate


maps_errors = maps_errors_with(status_for)


def peer_cert(context: grpc.aio.ServicerContext[Any, Any]) -> PeerCert | None:
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    return parse_peer_cert(pems[0]) if pems else None


async def require_admin(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    cert = peer_cert(context)
    if cert is None or cert.role != ROLE_ADMIN:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "this call needs the admin credential (the client config written by "
            "`slmops controller start`)",
        )


async def require_device(context: grpc.aio.ServicerContext[Any, Any], store: FleetStore) -> DeviceRecord:
    """The calling device, known from its certificate; refused if removed or superseded."""
    cert = peer_cert(context)
    if cert is None or cert.role != ROLE_DEVICE:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "a device certificate is required")
    assert cert is not None
    device = await asyncio.to_thread(store.get_device, cert.common_name)
    if device is None or device.cert_serial != cert.serial_hex:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"certificate for {cert.common_name} is not valid for any device; enroll again",
        )
    assert device is not None
    if device.removed_at_ms:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"device {device.id} was removed from the fleet; its certificate no longer works",
        )
    return device


def hardware_to_dict(hardware: common_pb2.Hardware) -> dict[str, object]:
    return json_format.MessageToDict(hardware)


def hardware_from_dict(data: dict[str, object]) -> common_pb2.Hardware:
    return json_format.ParseDict(json.loads(json.dumps(data)), common_pb2.Hardware(),
                                 ignore_unknown_fields=True)


def device_status(device: DeviceRecord, hub: Hub, offline_after_ms: int) -> tuple[str, int]:
    """(status, last_seen_ms), with the live stream's last message counted."""
    if device.removed_at_ms:
        return "removed", device.last_seen_ms
    session = hub.get(device.id)
    last_seen = max(device.last_seen_ms, session.last_seen_ms if session else 0)
    online = session is not None and now_ms() - last_seen <= offline_after_ms
    return ("online" if online else "offline"), last_seen


def deployment_to_proto(device: DeviceRecord) -> admin_pb2.Deployment:
    """What the device was assigned and, as it last reported, runs and is doing."""
    r = device.deployment
    return admin_pb2.Deployment(
        desired_model=device.desired_model, desired_release=device.desired_release,
        desired_variant=device.desired_profile, active_model=r.active_model,
        active_release=r.active_release, previous_model=r.previous_model,
        previous_release=r.previous_release, deployment_phase=phase_to_proto(r.phase), reason=r.reason,
        bytes_done=r.bytes_done, bytes_total=r.bytes_total, bytes_per_s=r.bytes_per_s,
        detail_json=r.detail_json, updated_at_ms=r.updated_at_ms,
    )


def device_to_proto(device: DeviceRecord, hub: Hub, offline_after_ms: int) -> admin_pb2.Device:
    status, last_seen = device_status(device, hub, offline_after_ms)
    return admin_pb2.Device(
        id=device.id, name=device.name, status=status, labels=dict(device.labels),
        hardware=hardware_from_dict(dict(device.hardware)), profile=device.effective_profile,
        matched_profile=device.profile, profile_override=device.profile_override,
        agent_version=device.agent_version, enrolled_at_ms=device.enrolled_at_ms,
        last_seen_ms=last_seen, acked_through_seq=device.acked_through_seq,
        spool_dropped_total=device.spool_dropped_total,
        desired_generation=device.desired_generation, deployment=deployment_to_proto(device),
    )


def token_to_proto(token: TokenRecord) -> admin_pb2.Token:
    return admin_pb2.Token(
        id=token.id, labels=dict(token.labels), created_at_ms=token.created_at_ms,
        expires_at_ms=token.expires_at_ms, max_uses=token.max_uses, uses=token.uses,
        revoked=token.revoked,
    )
