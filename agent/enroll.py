"""Enroll this device with a token: make a key here, send a CSR, get a certificate back."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import __version__
from agent.enrollment_proof import parse_token, response_signed, sign_request
from agent.identity import Identity
from protos import common_pb2, enrollment_pb2, enrollment_pb2_grpc


class EnrollmentError(Exception):
    """Enrollment failed; the message says why and what to do. ``retryable`` if the controller
    could not be reached."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def _key_and_csr(name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def enroll(
    *, enroll_address: str, controller: str, token: str, name: str,
    labels: Mapping[str, str], hardware: common_pb2.Hardware, timeout_s: float = 15.0,
) -> Identity:
    parsed = parse_token(token)
    key_pem, csr_pem = _key_and_csr(name)
    request = enrollment_pb2.EnrollRequest(
        token_id=parsed.id, csr_pem=csr_pem, name=name, labels=dict(labels), hardware=hardware,
        agent_version=__version__, timestamp_ms=int(time.time() * 1000),
        nonce=secrets.token_bytes(32),
    )
    request.proof = sign_request(parsed.signing_key, request)
    with grpc.insecure_channel(enroll_address) as channel:
        stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
        try:
            response = stub.Enroll(request, timeout=timeout_s, wait_for_ready=False)
        except grpc.RpcError as e:
            code = e.code()
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            raise EnrollmentError(
                f"enrollment at {enroll_address} failed: {code.name}: {e.details()}",
                retryable=retryable,
            ) from None
    if not response_signed(parsed, request, response):
        raise EnrollmentError(
            f"the answer from {enroll_address} is not signed by the controller that made this "
            "token. Check --controller / --enroll-address."
        )
    return Identity(
        device_id=response.device_id, controller=controller, server_name=response.server_name,
        key_pem=key_pem, cert_pem=response.certificate_pem,
        ca_cert_pem=response.ca_certificate_pem,
        manifest_public_key_b64=base64.b64encode(response.manifest_public_key).decode(),
    )
