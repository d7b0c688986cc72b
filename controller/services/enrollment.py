"""EnrollmentService: a device with a valid token gets an id and a certificate.

Served on the bootstrap port, which has no TLS: nothing secret crosses it (see
agent/enrollment_proof.py), and everything after enrollment runs over mutual TLS.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict

import grpc

from agent.enrollment_proof import proofs_equal, request_proof, response_proof
from controller import validation
from controller.build.profiles import ProfileSet
from controller.pki import SERVER_NAME, CertificateAuthority
from controller.profiles import match_profile
from controller.services.common import hardware_to_dict, maps_errors, now_ms
from controller.store import DeviceRecord, FleetStore
from protos import enrollment_pb2, enrollment_pb2_grpc

MAX_CLOCK_SKEW_MS = 15 * 60 * 1000


class NonceCache:
    """Nonces seen within the clock-skew window: a replayed request is refused."""

    def __init__(self, window_ms: int, limit: int = 100_000) -> None:
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._window_ms, self._limit = window_ms, limit

    def add(self, nonce: bytes, at_ms: int) -> bool:
        while self._seen and (
            len(self._seen) >= self._limit or next(iter(self._seen.values())) < at_ms - self._window_ms
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = at_ms
        return True


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, store: FleetStore, ca: CertificateAuthority, signing_public_key: bytes,
                 profiles: ProfileSet | None = None) -> None:
        self._store, self._ca, self._signing_public_key = store, ca, signing_public_key
        self._profiles = profiles  # None: the built-in ones
        self._nonces = NonceCache(2 * MAX_CLOCK_SKEW_MS)
        self._lock = asyncio.Lock()

    @maps_errors
    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.EnrollResponse:
        validation.token_id("token_id", request.token_id)
        validation.name("name", request.name)
        labels = validation.labels("labels", request.labels)
        validation.text("agent_version", request.agent_version, 64)
        validation.int_range("nonce", len(request.nonce), 16, 64, " bytes")
        now = now_ms()
        if abs(request.timestamp_ms - now) > MAX_CLOCK_SKEW_MS:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"timestamp_ms is {abs(request.timestamp_ms - now) // 1000} s away from the "
                "controller's clock; fix the device's clock (NTP) and retry",
            )
        token = await asyncio.to_thread(self._store.get_token, request.token_id)
        if token is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"enrollment token {request.token_id} is unknown to this controller",
            )
        assert token is not None
        if not proofs_equal(request.proof, request_proof(token.verifier, request)):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"wrong secret for enrollment token {request.token_id}; copy the whole token",
            )
        if not self._nonces.add(bytes(request.nonce), now):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "replayed enrollment request")
        device_id = "d-" + secrets.token_hex(6)
        issued = self._ca.sign_device_csr(request.csr_pem, device_id)
        hardware = hardware_to_dict(request.hardware)
        record = DeviceRecord(
            id=device_id, name=request.name, labels=labels, hardware=hardware,
            profile=match_profile(hardware, self._profiles), agent_version=request.agent_version,
            cert_serial=issued.serial_hex, enrolled_at_ms=now,
        )
        async with self._lock:  # token use counting is one transaction; keep them in order
            await asyncio.to_thread(self._store.enroll_device, request.token_id, now, record)
        response = enrollment_pb2.EnrollResponse(
            device_id=device_id, certificate_pem=issued.cert_pem,
            ca_certificate_pem=self._ca.cert_pem, server_name=SERVER_NAME,
            manifest_public_key=self._signing_public_key,
        )
        response.proof = response_proof(token.verifier, response)
        return response
