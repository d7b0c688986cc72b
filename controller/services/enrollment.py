"""EnrollmentService: a device with a valid token gets an id and a certificate.

Served on the bootstrap port, which has no TLS: nothing secret crosses it (see
agent/enrollment_proof.py), and everything after enrollment runs over mutual TLS. A request is
signed with the token's key and checked against the public key stored for it; the answer is
signed with the manifest key, which the token's fingerprint pins. Each request's nonce is
recorded in the fleet store with the device it enrolled, so a replay is refused even after a
restart.
"""

from __future__ import annotations

import asyncio
import secrets

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.enrollment_proof import VERIFIER_PREFIX, request_signed, sign_response
from controller import validation
from controller.build.profiles import ProfileSet
from controller.pki import SERVER_NAME, CertificateAuthority, raw_public_key
from controller.profiles import match_profile
from controller.services.common import hardware_to_dict, maps_errors, now_ms
from controller.store import DeviceRecord, FleetStore
from protos import enrollment_pb2, enrollment_pb2_grpc

MAX_CLOCK_SKEW_MS = 15 * 60 * 1000


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, store: FleetStore, ca: CertificateAuthority, signing_key: Ed25519PrivateKey,
                 profiles: ProfileSet | None = None) -> None:
        self._store, self._ca, self._signing_key = store, ca, signing_key
        self._signing_public_key = raw_public_key(signing_key)
        self._profiles = profiles  # None: the built-in ones
        self._lock = asyncio.Lock()

    @maps_errors
    async def Enroll(
        self, request: enrollment_pb2.EnrollRequest,
        context: grpc.aio.ServicerContext[enrollment_pb2.EnrollRequest, enrollment_pb2.EnrollResponse],
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
        if not token.verifier.startswith(VERIFIER_PREFIX):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"enrollment token {request.token_id} was made by an older controller, whose "
                "tokens this one no longer accepts; create a new one with `slmops token create`",
            )
        if not request_signed(token.verifier, request):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"wrong secret for enrollment token {request.token_id}; copy the whole token",
            )
        device_id = "d-" + secrets.token_hex(6)
        issued = self._ca.sign_device_csr(request.csr_pem, device_id)
        hardware = hardware_to_dict(request.hardware)
        record = DeviceRecord(
            id=device_id, name=request.name, labels=labels, hardware=hardware,
            profile=match_profile(hardware, self._profiles), agent_version=request.agent_version,
            cert_serial=issued.serial_hex, enrolled_at_ms=now,
        )
        async with self._lock:  # token use counting is one transaction; keep them in order
            await asyncio.to_thread(self._store.enroll_device, request.token_id, now, record,
                                    nonce=bytes(request.nonce),
                                    nonce_expires_at_ms=now + 2 * MAX_CLOCK_SKEW_MS)
        response = enrollment_pb2.EnrollResponse(
            device_id=device_id, certificate_pem=issued.cert_pem,
            ca_certificate_pem=self._ca.cert_pem, server_name=SERVER_NAME,
            manifest_public_key=self._signing_public_key,
        )
        response.proof = sign_response(self._signing_key, request, response)
        return response
