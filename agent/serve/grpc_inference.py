"""gRPC InferenceService.Generate (protos/inference.proto) over the agent's model slot.

Generations run in the serving GenerationPool (agent/engine/pool.py), shared with the HTTP
endpoint, so both together respect one bound; a full pool answers RESOURCE_EXHAUSTED. A worker
stays at most a window of pieces ahead of what the RPC has sent (agent/serve/bridge.py, as for
HTTP, with its text sent a batch per message), so a client that stops reading
holds it for a window, not a whole answer. When the client cancels (or its deadline passes)
the generation stops before its next token and the worker is free again. Every request is
counted in the shared ServeMetrics (endpoint "grpc.Generate"), hence in /metrics and telemetry.

Plain grpc.aio without TLS: it binds to loopback unless told otherwise, like the HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from agent.engine import Engine, EngineClosed, ModelSlot, NoModel, ParamError, SamplingParams, Stream
from agent.engine.pool import Busy, GenerationPool
from agent.serve.bridge import Bridge
from agent.serve.metrics import ServeMetrics
from protos import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

ENDPOINT = "grpc.Generate"
MAX_PROMPT_CHARS = 1_000_000  # can't fit any context; refused before it is tokenized
# The HTTP status a gRPC outcome counts as in the shared request metrics (499: client went away).
HTTP_STATUS = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.INTERNAL: 500,
               grpc.StatusCode.UNAVAILABLE: 503}
_END = object()


def sampling_params(request: inference_pb2.GenerateRequest) -> SamplingParams:
    """The request's sampling fields; an unset one keeps SamplingParams' default, except
    max_tokens, which defaults to the rest of the context (as on the HTTP endpoint)."""
    given: dict[str, Any] = {name: getattr(request, name)
                             for name in ("max_tokens", "temperature", "top_p", "top_k", "seed")
                             if request.HasField(name)}
    given.setdefault("max_tokens", None)
    return SamplingParams(stop=tuple(request.stop), **given)


def prompt_text(request: inference_pb2.GenerateRequest, engine: Engine) -> str:
    if bool(request.prompt) == bool(request.messages):
        raise ParamError("prompt", "give either prompt (raw text) or messages (a chat), "
                         + ("not both" if request.prompt else "neither was given"))
    if request.messages:
        return engine.chat_prompt([{"role": m.role, "content": m.content} for m in request.messages])
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise ParamError("prompt", f"the prompt is {len(request.prompt)} characters, far longer "
                         "than this model's context; shorten it")
    return request.prompt


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, slot: ModelSlot, pool: GenerationPool,
                 metrics: ServeMetrics | None = None) -> None:
        self._slot, self._pool, self._metrics = slot, pool, metrics

    def _start(self, request: inference_pb2.GenerateRequest) -> tuple[str, Stream]:
        """(model name, stream) on the served model; runs in a thread (tokenizing takes a while)."""
        for _ in range(3):
            try:
                loaded = self._slot.get()
            except NoModel:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded on this agent; "
                             "start it with --model VARIANT_DIR") from None
            if request.model and request.model != loaded.name:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"model: {request.model!r} is not served "
                             f"here; this agent serves {loaded.name!r} (or send model \"\")")
            try:
                return loaded.name, loaded.engine.stream(prompt_text(request, loaded.engine),
                                                         sampling_params(request))
            except EngineClosed:  # swapped for a new model meanwhile: start on that one
                continue
            except ParamError as e:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{e.field}: {e.message}") from None
        raise _Abort(grpc.StatusCode.UNAVAILABLE, "the model kept changing; try again")

    def _count(self, code: grpc.StatusCode, started: float, error_type: str | None = None) -> None:
        if self._metrics is not None:
            self._metrics.request(ENDPOINT, HTTP_STATUS.get(code, 500),
                                  time.perf_counter() - started, error_type)

    async def Generate(self, request: inference_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext[inference_pb2.GenerateRequest,
                                                         inference_pb2.GenerateResponse]
                       ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            name, stream = await asyncio.to_thread(self._start, request)
        except _Abort as e:
            self._count(e.code, started, e.code.name.lower())
            await context.abort(e.code, e.message)
        bridge = Bridge(loop, stream)
        try:
            self._pool.submit(stream, bridge.piece, bridge.done)
        except Busy as e:
            self._count(grpc.StatusCode.RESOURCE_EXHAUSTED, started, "busy")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        code = grpc.StatusCode.CANCELLED
        try:
            try:
                async for batch in bridge.batches():  # a delta per batch, as the HTTP stream does
                    yield inference_pb2.GenerateResponse(
                        delta=inference_pb2.TextDelta(text="".join(piece.text for piece in batch)))
            except Exception as e:  # noqa: BLE001 - the generation's own error, reported to the client
                log.error("generation failed: %r", e)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"generation failed: {e}")
            yield inference_pb2.GenerateResponse(done=inference_pb2.GenerateDone(
                model=name, finish_reason=stream.finish_reason or "stop", usage=inference_pb2.Usage(
                    prompt_tokens=stream.prompt_tokens, completion_tokens=stream.completion_tokens,
                    total_tokens=stream.prompt_tokens + stream.completion_tokens)))
            code = grpc.StatusCode.OK
        finally:
            stream.cancel()  # a no-op after the end; else the worker stops before its next token
            self._count(code, started, None if code == grpc.StatusCode.OK else code.name.lower())
            if self._metrics is not None:
                end = time.perf_counter()
                first = None if bridge.first_at is None else bridge.first_at - started
                self._metrics.generation(stream.prompt_tokens, stream.completion_tokens, first,
                                         end - bridge.first_at if bridge.first_at is not None else 0.0,
                                         cancelled=code == grpc.StatusCode.CANCELLED)


@dataclass
class GrpcInferenceServer:
    server: grpc.aio.Server
    port: int

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.server.stop(grace_s)


async def start_grpc_inference(slot: ModelSlot, pool: GenerationPool, listen: str = "127.0.0.1:50051",
                               metrics: ServeMetrics | None = None) -> GrpcInferenceServer:
    """Serve InferenceService on ``listen`` (HOST:PORT; port 0 picks one). Raises ValueError
    naming --grpc-listen if the address can't be bound. The caller owns ``pool``."""
    # no SO_REUSEPORT (gRPC's default): a second server on a port in use must fail, not share it
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024),
                                      ("grpc.so_reuseport", 0)])
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(
        InferenceServicer(slot, pool, metrics), server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as e:
        raise ValueError(f"--grpc-listen: can't listen on {listen!r} ({e}); is the port in use?") \
            from None
    await server.start()
    log.info("gRPC InferenceService on %s:%d", listen.rpartition(":")[0], port)
    return GrpcInferenceServer(server, port)
