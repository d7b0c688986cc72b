"""The agent's channel for downloads: its own mutual-TLS connection to the controller, beside the
fleet stream, so a 50 MB transfer never queues behind heartbeats and telemetry (or they behind it).

Its HTTP/2 receive window stays fixed (no bandwidth-delay probing; 256 KiB by default): what the
controller has sent but the agent has not yet written to disk is lost when the agent dies, and
with gRPC's growing windows that was 2-15 MiB per file in bench/delivery.py; with 256 KiB, under
0.6 MiB. A fixed window also caps one download at window / round-trip time (256 KiB over a
50 ms link: about 5 MB/s), so a device on a slow-to-answer link raises it
(``slmops-agent run --download-window-kb``) to its bandwidth times its round-trip time."""

from __future__ import annotations

import grpc

from agent.identity import Identity
from agent.link import CHANNEL_OPTIONS, channel_credentials

DEFAULT_WINDOW_BYTES = 256 << 10


class DeliveryChannel:
    def __init__(self, identity: Identity, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self._identity = identity
        self._window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window_bytes)]
        self._channel: grpc.aio.Channel | None = None

    def get(self) -> grpc.aio.Channel:
        """The channel, made on first use (grpc reconnects it by itself after a cut)."""
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self._identity.controller, channel_credentials(self._identity),
                [*CHANNEL_OPTIONS, *self._window,
                 ("grpc.ssl_target_name_override", self._identity.server_name)])
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(grace=None)  # at once: grpc-stubs 1.53 omits the default
            self._channel = None
