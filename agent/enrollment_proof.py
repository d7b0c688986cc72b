"""The enrollment token and the signatures both sides make with what it carries.

A token reads ``t-<id>.<secret>.<fingerprint>``:

- From the secret, HKDF-SHA256 (bound to the token id) derives the seed of an ed25519 key
  pair. The controller stores only the public half (the verifier); the agent signs its request
  with the private half, which exists only where the token is. So the database, read by
  anyone, lets nobody enrol a device: it holds no secret, no MAC key, only a public key.
- The fingerprint is the first 16 bytes of sha256 of the controller's manifest-signing public
  key. The controller signs its answer (CA certificate, device certificate, manifest key) with
  that key, over the digest of the request it answers; the agent checks the key against the
  fingerprint and the signature against the key. So the answer comes from the controller that
  made the token, and from no one who merely read its database.

The bootstrap port has no TLS and needs none: the request binds the device's CSR, so a captured
request yields a certificate only for a key the captor does not hold, and its nonce is recorded
by the controller so it is refused a second time, across restarts too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import Message

from protos import enrollment_pb2

TOKEN_RE = re.compile(r"^(t-[0-9a-f]{12})\.([A-Za-z0-9_-]{32,64})\.([A-Za-z0-9_-]{22})$")
VERIFIER_PREFIX = b"ed25519:"  # the stored verifier: this, then the raw public key
_REQUEST_DOMAIN = b"slmops.v2.EnrollRequest\x00"
_RESPONSE_DOMAIN = b"slmops.v2.EnrollResponse\x00"
_KEY_INFO = b"slmops.v2 enrollment request key\x00"


class TokenFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ParsedToken:
    id: str
    secret: str
    fingerprint: str  # of the controller's manifest-signing key

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return request_key(self.id, self.secret)

    @property
    def verifier(self) -> bytes:
        return verifier_of(self.id, self.secret)


def parse_token(text: str) -> ParsedToken:
    match = TOKEN_RE.match(text.strip())
    if not match:
        raise TokenFormatError(
            "--token is not an slmops enrollment token (expected t-<12 hex>.<secret>.<controller "
            "key fingerprint>); copy the whole 'token' value printed by `slmops token create` "
            "(a token made by an older controller has no fingerprint: create a new one)"
        )
    return ParsedToken(match.group(1), match.group(2), match.group(3))


def format_token(token_id: str, secret: str, controller_key: bytes) -> str:
    return f"{token_id}.{secret}.{fingerprint(controller_key)}"


def fingerprint(public_key: bytes) -> str:
    """What a token carries of the controller's raw ed25519 public key: 128 bits of its sha256."""
    return base64.urlsafe_b64encode(hashlib.sha256(public_key).digest()[:16]).decode().rstrip("=")


def request_key(token_id: str, secret: str) -> Ed25519PrivateKey:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_KEY_INFO + token_id.encode()).derive(secret.encode())
    return Ed25519PrivateKey.from_private_bytes(seed)


def verifier_of(token_id: str, secret: str) -> bytes:
    """What the controller stores for a token: the public half of its request key."""
    public = request_key(token_id, secret).public_key()
    return VERIFIER_PREFIX + public.public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)


def _body(message: Message) -> bytes:
    copy = type(message)()
    copy.CopyFrom(message)
    copy.ClearField("proof")
    return copy.SerializeToString(deterministic=True)


def request_digest(request: enrollment_pb2.EnrollRequest) -> bytes:
    return hashlib.sha256(_REQUEST_DOMAIN + _body(request)).digest()


def sign_request(key: Ed25519PrivateKey, request: enrollment_pb2.EnrollRequest) -> bytes:
    return key.sign(_REQUEST_DOMAIN + _body(request))


def request_signed(verifier: bytes, request: enrollment_pb2.EnrollRequest) -> bool:
    """True if ``request.proof`` is the token's signature; False for any other verifier (one
    stored by an older controller included)."""
    if not verifier.startswith(VERIFIER_PREFIX) or len(verifier) != len(VERIFIER_PREFIX) + 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(verifier[len(VERIFIER_PREFIX):]).verify(
            bytes(request.proof), _REQUEST_DOMAIN + _body(request))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_response(key: Ed25519PrivateKey, request: enrollment_pb2.EnrollRequest,
                  response: enrollment_pb2.EnrollResponse) -> bytes:
    return key.sign(_RESPONSE_DOMAIN + request_digest(request) + _body(response))


def response_signed(token: ParsedToken, request: enrollment_pb2.EnrollRequest,
                    response: enrollment_pb2.EnrollResponse) -> bool:
    """True if ``response`` answers ``request`` and is signed by the controller whose key the
    token names (the key comes in the response; the token's fingerprint pins it)."""
    key = bytes(response.manifest_public_key)
    if len(key) != 32 or not hmac.compare_digest(fingerprint(key), token.fingerprint):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            bytes(response.proof), _RESPONSE_DOMAIN + request_digest(request) + _body(response))
    except (InvalidSignature, ValueError):
        return False
    return True
