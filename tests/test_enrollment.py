"""Enrollment through a real controller: tokens, proofs, certificates, files on disk."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inproc import HARDWARE, RunningController

from agent.enroll import EnrollmentError, _key_and_csr, enroll
from agent.enrollment_proof import (
    format_token,
    parse_token,
    request_digest,
    response_signed,
    sign_request,
    sign_response,
)
from agent.identity import Identity
from controller.store import TokenRecord
from protos import admin_pb2, enrollment_pb2, enrollment_pb2_grpc


def _devices(ctl: RunningController) -> list:
    return list(ctl.admin.ListDevices(admin_pb2.ListDevicesRequest(include_removed=True),
                                      timeout=10).devices)


def test_enrolled_device_opens_the_stream_under_its_own_id(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1", room="a")
    welcome = ctl.stream(identity).hello()
    assert welcome.device_id == identity.device_id
    [device] = _devices(ctl)
    assert (device.name, device.status, dict(device.labels)) == ("edge-1", "online", {"room": "a"})
    assert device.profile == "cpu-x86-avx2-int8"


FINGERPRINT = "A" * 22  # of no controller's key: for tokens a controller never answers


def _expired(ctl: RunningController) -> str:
    now = int(time.time() * 1000)
    token = "t-0123456789ab.expiredexpiredexpiredexpiredexpired." + FINGERPRINT
    parsed = parse_token(token)
    ctl.store.create_token(TokenRecord(id=parsed.id, verifier=parsed.verifier, labels={},
                                       created_at_ms=now - 7200_000, expires_at_ms=now - 1,
                                       max_uses=5))
    return token


def _made_by_an_older_controller(ctl: RunningController) -> str:
    now = int(time.time() * 1000)
    secret = "o" * 32
    ctl.store.create_token(TokenRecord(id="t-0123456789ac", labels={}, created_at_ms=now,
                                       verifier=hashlib.sha256(secret.encode()).digest(),
                                       expires_at_ms=now + 3_600_000, max_uses=5))
    return f"t-0123456789ac.{secret}.{FINGERPRINT}"


def _revoked(ctl: RunningController) -> str:
    token = ctl.token()
    ctl.admin.RevokeToken(admin_pb2.RevokeTokenRequest(id=token.split(".")[0]), timeout=10)
    return token


def _used_up(ctl: RunningController) -> str:
    token = ctl.token(uses=1)
    ctl.enroll("first", token=token)
    return token


def _wrong_secret(ctl: RunningController) -> str:
    token_id, _, fingerprint = ctl.token().split(".")
    return f"{token_id}.{'x' * 32}.{fingerprint}"


@pytest.mark.parametrize(("make_token", "reason"), [
    (lambda ctl: f"t-000000000000.{'y' * 32}.{FINGERPRINT}", "unknown"),
    (_wrong_secret, "wrong secret"),
    (_expired, "expired"),
    (_revoked, "revoked"),
    (_used_up, "used"),
    (_made_by_an_older_controller, "older controller"),
], ids=["unknown", "wrong-secret", "expired", "revoked", "used-up", "old-scheme"])
def test_bad_token_is_unauthenticated_with_the_reason_and_creates_no_device(
    ctl: RunningController, make_token, reason: str
) -> None:
    token = make_token(ctl)
    before = len(_devices(ctl))
    with pytest.raises(EnrollmentError) as info:
        ctl.enroll("edge-bad", token=token)
    assert "UNAUTHENTICATED" in str(info.value)
    assert reason in str(info.value)
    assert len(_devices(ctl)) == before


def test_malformed_token_text_is_refused_before_any_call(ctl: RunningController) -> None:
    with pytest.raises(ValueError, match="--token is not an slmops enrollment token"):
        ctl.enroll("edge-1", token="not-a-token")


def _raw_request(ctl: RunningController, token: str, name: str) -> enrollment_pb2.EnrollRequest:
    parsed = parse_token(token)
    _, csr = _key_and_csr(name)
    request = enrollment_pb2.EnrollRequest(
        token_id=parsed.id, csr_pem=csr, name=name, hardware=HARDWARE, agent_version="t",
        timestamp_ms=int(time.time() * 1000), nonce=os.urandom(32))
    request.proof = sign_request(parsed.signing_key, request)
    return request


def test_replayed_enrollment_request_is_refused(ctl: RunningController) -> None:
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(ctl.endpoints.enroll))
    request = _raw_request(ctl, ctl.token(uses=5), "edge-r")
    stub.Enroll(request, timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        stub.Enroll(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in info.value.details()


def test_altered_request_fails_its_proof(ctl: RunningController) -> None:
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(ctl.endpoints.enroll))
    request = _raw_request(ctl, ctl.token(), "edge-a")
    request.labels["role"] = "admin"  # changed after the proof was made
    with pytest.raises(grpc.RpcError) as info:
        stub.Enroll(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_response_signature_binds_the_ca_the_request_and_the_tokens_controller() -> None:
    controller, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw = controller.public_key().public_bytes_raw()
    parsed = parse_token(format_token("t-0123456789ab", "s" * 32, raw))
    request = enrollment_pb2.EnrollRequest(token_id=parsed.id, nonce=b"n" * 32)
    response = enrollment_pb2.EnrollResponse(device_id="d-1", ca_certificate_pem="real CA",
                                             manifest_public_key=raw)
    response.proof = sign_response(controller, request, response)
    assert response_signed(parsed, request, response)
    other_request = enrollment_pb2.EnrollRequest(token_id=parsed.id, nonce=b"m" * 32)
    assert not response_signed(parsed, other_request, response)  # an answer to another request
    response.ca_certificate_pem = "attacker's CA"
    assert not response_signed(parsed, request, response)
    response.manifest_public_key = impostor.public_key().public_bytes_raw()
    response.proof = sign_response(impostor, request, response)  # validly signed, wrong key
    assert not response_signed(parsed, request, response)


@pytest.mark.parametrize(("field", "mutate"), [
    ("name", lambda r: setattr(r, "name", "")),
    ("labels", lambda r: r.labels.__setitem__("bad key!", "v")),
    ("nonce", lambda r: setattr(r, "nonce", b"short")),
    ("csr_pem", lambda r: setattr(r, "csr_pem", "not a csr")),
])
def test_malformed_enrollment_is_invalid_argument_naming_the_field(
    ctl: RunningController, field: str, mutate
) -> None:
    token = ctl.token()
    request = _raw_request(ctl, token, "edge-m")
    mutate(request)
    request.proof = sign_request(parse_token(token).signing_key, request)
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(ctl.endpoints.enroll))
    with pytest.raises(grpc.RpcError) as info:
        stub.Enroll(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert _devices(ctl) == []


def test_a_second_active_device_cannot_take_a_name(ctl: RunningController) -> None:
    ctl.enroll("edge-1")
    with pytest.raises(EnrollmentError, match="ALREADY_EXISTS.*edge-1"):
        ctl.enroll("edge-1")


def test_unreachable_enrollment_port_is_retryable() -> None:
    with pytest.raises(EnrollmentError) as info:
        enroll(enroll_address="127.0.0.1:1", controller="127.0.0.1:1",
               token=f"t-0123456789ab.{'s' * 32}.{FINGERPRINT}", name="x", labels={}, hardware=HARDWARE,
               timeout_s=2)
    assert info.value.retryable


def test_keys_and_credentials_on_disk_are_owner_only(ctl: RunningController, tmp_path) -> None:
    identity = ctl.enroll("edge-1")
    identity.save(tmp_path / "agent")
    assert Identity.load(tmp_path / "agent") == identity
    data_dir = ctl.controller.settings.data_dir
    for path in [tmp_path / "agent" / "identity.json", data_dir / "pki" / "ca.key",
                 data_dir / "pki" / "manifest-signing.key", data_dir / "client.json",
                 data_dir / "fleet.db"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # tokens are stored as a public key derived from their secret, never the secret itself
    secret = ctl.token().split(".")[1]
    assert secret.encode() not in (data_dir / "fleet.db").read_bytes()


def _uses(ctl: RunningController, token: str) -> int:
    return int(ctl.store.get_token(token.split(".")[0]).uses)


def test_request_forged_with_only_the_stored_verifier_is_refused(ctl: RunningController) -> None:
    token = ctl.token(uses=5)
    stored = ctl.store.get_token(token.split(".")[0]).verifier  # what reading the database gives
    request = _raw_request(ctl, token, "ghost")
    body = enrollment_pb2.EnrollRequest()
    body.CopyFrom(request)
    body.ClearField("proof")
    serialized = body.SerializeToString(deterministic=True)
    forgeries = [
        # the scheme before: HMAC-SHA256 keyed with the stored sha256(secret)
        hmac.new(stored, b"slmops.v1.EnrollRequest\x00" + serialized, hashlib.sha256).digest(),
        # a key pair seeded from the stored value
        Ed25519PrivateKey.from_private_bytes(hashlib.sha256(stored).digest()).sign(serialized),
        stored,
    ]
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(ctl.endpoints.enroll))
    for proof in forgeries:
        request.proof = proof
        with pytest.raises(grpc.RpcError) as info:
            stub.Enroll(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "wrong secret" in info.value.details()
    assert _devices(ctl) == []
    assert _uses(ctl, token) == 0


def test_enrollment_answer_is_signed_by_the_controller_that_made_the_token(
        ctl: RunningController) -> None:
    token = ctl.token()
    request = _raw_request(ctl, token, "edge-s")
    stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(ctl.endpoints.enroll))
    response = stub.Enroll(request, timeout=10)
    assert response_signed(parse_token(token), request, response)
    assert len(request_digest(request)) == 32


def test_replayed_enrollment_request_is_refused_after_a_controller_restart(tmp_path: Path) -> None:
    first = RunningController(tmp_path / "ctl")
    try:
        token = first.token(uses=5)
        request = _raw_request(first, token, "edge-r")  # captured on the wire
        stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(first.endpoints.enroll))
        device_id = stub.Enroll(request, timeout=10).device_id
        # the operator removes the device: its name is free, so only the nonce stops a replay
        first.admin.RemoveDevice(admin_pb2.RemoveDeviceRequest(id=device_id), timeout=10)
    finally:
        first.stop()
    second = RunningController(tmp_path / "ctl")  # a new server on the same data dir
    try:
        assert _uses(second, token) == 1
        stub = enrollment_pb2_grpc.EnrollmentServiceStub(grpc.insecure_channel(second.endpoints.enroll))
        with pytest.raises(grpc.RpcError) as info:
            stub.Enroll(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "replayed" in info.value.details()
        assert _uses(second, token) == 1
        assert [(d.name, d.status) for d in _devices(second)] == [("edge-r", "removed")]
    finally:
        second.stop()
