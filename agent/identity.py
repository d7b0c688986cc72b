"""The device's identity: its id, key, certificate, the controller's CA and signing key.

Kept in ``DATA_DIR/identity.json`` with mode 0600, written atomically. A restarted agent reads
it and is the same device; it enrolls only when the file is absent.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.files import write_private

FILE_NAME = "identity.json"


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    device_id: str
    controller: str  # mTLS address
    server_name: str
    key_pem: str
    cert_pem: str
    ca_cert_pem: str
    manifest_public_key_b64: str

    @property
    def manifest_public_key(self) -> bytes:
        return base64.b64decode(self.manifest_public_key_b64)

    def save(self, data_dir: Path) -> None:
        write_private(data_dir / FILE_NAME, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def load(cls, data_dir: Path) -> Identity | None:
        path = data_dir / FILE_NAME
        if not path.exists():
            return None
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # tighten a file someone loosened; it holds the device key
        try:
            data = json.loads(path.read_text())
            return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError) as e:
            raise IdentityError(
                f"{path} is unreadable ({e}); move it aside and enroll again with a new token"
            ) from e
