"""The enrollment token and the HMAC proofs both sides compute from it.

A token reads ``t-<id>.<secret>``. The controller stores only ``sha256(secret)`` (the
verifier). The agent never sends the secret: it sends HMAC-SHA256(verifier, request), and the
controller answers with HMAC-SHA256(verifier, response), so the agent learns the CA and the
signing key from the controller that made the token, over a channel that needs no prior trust.
The request binds the device's CSR, so a replayed request only yields a certificate for a key
the replayer does not hold.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from protos import enrollment_pb2

TOKEN_RE = re.compile(r"^(t-[0-9a-f]{12})\.([A-Za-z0-9_-]{32,64})$")
_REQUEST_DOMAIN = b"slmops.v1.EnrollRequest\x00"
_RESPONSE_DOMAIN = b"slmops.v1.EnrollResponse\x00"


class TokenFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ParsedToken:
    id: str
    secret: str

    @property
    def verifier(self) -> bytes:
        return verifier_of(self.secret)


def parse_token(text: str) -> ParsedToken:
    match = TOKEN_RE.match(text.strip())
    if not match:
        raise TokenFormatError(
            "--token is not an slmops enrollment token (expected t-<12 hex>.<secret>); "
            "copy the whole 'token' value printed by `slmops token create`"
        )
    return ParsedToken(match.group(1), match.group(2))


def verifier_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _mac(verifier: bytes, domain: bytes, message: object) -> bytes:
    copy = type(message)()  # type: ignore[operator]
    copy.CopyFrom(message)  # type: ignore[attr-defined]
    copy.ClearField("proof")  # type: ignore[attr-defined]
    body = copy.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
    return hmac.new(verifier, domain + body, hashlib.sha256).digest()


def request_proof(verifier: bytes, request: enrollment_pb2.EnrollRequest) -> bytes:
    return _mac(verifier, _REQUEST_DOMAIN, request)


def response_proof(verifier: bytes, response: enrollment_pb2.EnrollResponse) -> bytes:
    return _mac(verifier, _RESPONSE_DOMAIN, response)


def proofs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
