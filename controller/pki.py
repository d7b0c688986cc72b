"""The controller's own certificate authority: device, admin and server certificates.

Every certificate carries its role in the subject's OU (``device``, ``admin``, ``controller``);
a device certificate's CN is the device id. The CA key and the manifest signing key are files
with mode 0600 in the controller's data dir; they are made on first start.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.files import write_atomic, write_private

SERVER_NAME = "slmops-controller"  # clients verify the controller under this name
ROLE_DEVICE, ROLE_ADMIN, ROLE_CONTROLLER = "device", "admin", "controller"
DEVICE_CERT_DAYS = 365
MAX_CSR_BYTES = 16 * 1024


class CsrError(ValueError):
    pass


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    serial_hex: str
    key_pem: str = ""  # set when the CA made the key too (admin, server)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str, role: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "slmops"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_path}: not an EC key"
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name("slmops controller CA", "ca")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key).encode())
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def _sign(
        self, public_key: CertificatePublicKeyTypes, cn: str, role: str, days: int,
        client: bool, server_names: tuple[str, ...] = (),
    ) -> x509.Certificate:
        now = _now()
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, role)).issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_device_csr(self, csr_pem: str, device_id: str) -> Issued:
        """Sign a device's CSR. Only the public key is taken from it; the name is ours."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise CsrError(f"csr_pem is {len(csr_pem)} bytes; at most {MAX_CSR_BYTES}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as e:
            raise CsrError(f"csr_pem is not a PEM certificate signing request: {e}") from e
        if not csr.is_signature_valid:
            raise CsrError("csr_pem: the request's signature does not match its key")
        key = csr.public_key()
        ok = (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256
            or isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
            or isinstance(key, ed25519.Ed25519PublicKey)
        )
        if not ok:
            raise CsrError("csr_pem: key must be EC P-256 or larger, RSA 2048+ or Ed25519")
        cert = self._sign(key, device_id, ROLE_DEVICE, DEVICE_CERT_DAYS, client=True)
        return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), f"{cert.serial_number:x}")

    def issue(self, cn: str, role: str, server_names: tuple[str, ...] = (), days: int = 825) -> Issued:
        """A key pair and certificate made here: the admin's (client) or the server's."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(key.public_key(), cn, role, days, client=not server_names,
                          server_names=server_names)
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM).decode(),
            f"{cert.serial_number:x}",
            _key_pem(key),
        )


@dataclass(frozen=True)
class PeerCert:
    role: str
    common_name: str
    serial_hex: str


def parse_peer_cert(pem: bytes) -> PeerCert:
    cert = x509.load_pem_x509_certificate(pem)
    subject = cert.subject

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return PeerCert(
        attr(NameOID.ORGANIZATIONAL_UNIT_NAME), attr(NameOID.COMMON_NAME),
        f"{cert.serial_number:x}",
    )


def load_or_create_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The ed25519 key that signs manifests; agents pin its public half at enrollment."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ed25519.Ed25519PrivateKey), f"{path}: not an ed25519 key"
        return key
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return key


def raw_public_key(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
