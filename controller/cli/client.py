"""The CLI's connection to the controller: config lookup, mTLS channel, deadlines, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from controller.cli.output import CliError
from controller.client_config import ClientConfig, ConfigError
from controller.settings import config_path_from_env, default_data_dir
from protos import admin_pb2_grpc

T = TypeVar("T")
DEADLINE_S = 15.0


def resolve_config_path(explicit: Path | None) -> Path:
    return explicit or config_path_from_env() or default_data_dir() / "client.json"


class AdminClient:
    def __init__(self, config_path: Path | None) -> None:
        path = resolve_config_path(config_path)
        try:
            self.config = ClientConfig.load(path)
        except ConfigError as e:
            raise CliError(str(e), "config", 2) from None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.config.ca_cert_pem.encode(),
            private_key=self.config.admin_key_pem.encode(),
            certificate_chain=self.config.admin_cert_pem.encode(),
        )
        self._channel = grpc.secure_channel(
            self.config.controller, credentials,
            options=[("grpc.ssl_target_name_override", self.config.server_name)],
        )
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    @property
    def channel(self) -> grpc.Channel:
        """The mTLS channel, for the stubs of the controller's other services."""
        return self._channel

    def call(self, method: Callable[..., T], request: Any, timeout: float = DEADLINE_S) -> T:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as e:
            raise self.error(e) from None

    def error(self, e: grpc.RpcError) -> CliError:
        """A failed call as the CLI's error; UNAVAILABLE says what to check."""
        code = e.code()
        details = e.details() or f"the call failed with {code.name}"
        if code == grpc.StatusCode.UNAVAILABLE:
            details = (f"controller at {self.config.controller} is unreachable ({details}); "
                       "is `slmops controller start` running?")
        return CliError(details, code.name.lower())

    def close(self) -> None:
        self._channel.close()
