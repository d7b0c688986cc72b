"""The agent's channel for downloads: its own mutual-TLS connection to the controller, beside the
fleet stream, so a 50 MB transfer never queues behind heartbeats and telemetry (or they behind it)."""

from __future__ import annotations

import grpc

from agent.identity import Identity
from agent.link import CHANNEL_OPTIONS, channel_credentials


class DeliveryChannel:
    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._channel: grpc.aio.Channel | None = None

    def get(self) -> grpc.aio.Channel:
        """The channel, made on first use (grpc reconnects it by itself after a cut)."""
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self._identity.controller, channel_credentials(self._identity),
                [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self._identity.server_name)])
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
