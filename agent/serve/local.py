"""Everything the agent serves to local apps, started and stopped together: the OpenAI-compatible
HTTP server and the gRPC InferenceService, over one model slot, one worker pool and one set of
counters (so /metrics and telemetry count both)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.engine import ModelSlot
from agent.serve.grpc_inference import GrpcInferenceServer, start_grpc_inference
from agent.serve.openai_http import RunningServer, start_server


@dataclass
class LocalServing:
    http: RunningServer
    grpc: GrpcInferenceServer | None
    grpc_host: str = "127.0.0.1"

    def info(self) -> dict[str, Any]:
        loaded = self.http.server.slot.current
        engine = loaded.engine.info if loaded else None
        return {"url": self.http.url, "grpc": f"{self.grpc_host}:{self.grpc.port}" if self.grpc else None,
                "model": loaded.name if loaded else None,
                "variant": str(engine.path) if engine else None,
                "precision": engine.precision if engine else None,
                "context_length": engine.context_length if engine else None,
                "api_key": self.http.server.api_key is not None}

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.http.stop()


async def start_local_serving(slot: ModelSlot, host: str, port: int, grpc_listen: str, *,
                              api_key: str | None = None, workers: int = 2,
                              max_queued: int = 64) -> LocalServing:
    """HTTP on ``host:port``; gRPC on ``grpc_listen`` unless it is empty. Raises OSError or
    ValueError (naming the option) when an address can't be bound; nothing is left running."""
    http = await start_server(slot, host, port, api_key, workers=workers, max_queued=max_queued)
    if not grpc_listen:
        return LocalServing(http, None)
    try:
        grpc = await start_grpc_inference(slot, http.server.pool, grpc_listen, http.server.metrics)
    except BaseException:
        await http.stop()
        raise
    return LocalServing(http, grpc, grpc_listen.rpartition(":")[0].strip("[]") or "127.0.0.1")
