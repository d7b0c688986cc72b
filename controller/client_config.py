"""The client config that `controller start` writes and the CLI reads: where the controller is,
its CA, and the admin credential. Mode 0600: it holds the admin key."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.files import write_private

FILE_NAME = "client.json"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ClientConfig:
    controller: str
    enroll_address: str
    server_name: str
    ca_cert_pem: str
    admin_cert_pem: str
    admin_key_pem: str

    def save(self, path: Path) -> None:
        write_private(path, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no client config at {path}; start a controller (`slmops controller start "
                "--data-dir DIR`) and pass --config DIR/client.json or set SLMOPS_CONFIG"
            ) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: can't read the client config: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the client config is not a JSON object")
        missing = [k for k in cls.__dataclass_fields__ if not isinstance(data.get(k), str)]
        if missing:
            raise ConfigError(f"{path}: missing or not text: {', '.join(missing)}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})
