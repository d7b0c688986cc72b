"""The OpenAI-compatible HTTP server (aiohttp): ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (with SSE streaming), ``/healthz`` and ``/metrics``.

Generation never runs on the event loop: a request's ``Stream`` goes to the bounded
``GenerationPool`` and its pieces come back through an asyncio queue. A client that goes away
(the handler is cancelled, or a write fails) cancels its stream, which frees the worker before
the next token. When an API key is set, ``/v1/*`` asks for ``Authorization: Bearer KEY``;
``/healthz`` and ``/metrics`` stay open, like the rest bound to 127.0.0.1 unless told otherwise.

    running = await start_server(slot, "127.0.0.1", 0)   # port 0: any free port
    ...; running.stats(); await running.stop()
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.engine.engine import EngineClosed, Stream
from agent.engine.pool import Busy, GenerationPool
from agent.engine.sampling import ParamError
from agent.engine.slot import Loaded, ModelSlot
from agent.serve.bridge import Bridge
from agent.serve.errors import ApiError, from_http_exception
from agent.serve.metrics import ServeMetrics, gauge
from agent.serve.parse import GenerationRequest, parse_chat, parse_completion
from agent.serve.sse import DONE, Chunks, event, usage

log = logging.getLogger(__name__)
# A request that finds the model it looked up swapped out (closed) before it started asks the
# model now in place instead, for up to this long, before it answers 503 model_reloading.
SWAP_RETRY_S = 5.0
MAX_BODY = 4 << 20
STARTED = web.RequestKey("slmops_started", float)  # perf_counter() when the request arrived
CANCELLED = web.RequestKey("slmops_cancelled", bool)  # the client went away mid-answer
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self, slot: ModelSlot, *, api_key: str | None = None, workers: int = 2,
                 max_queued: int = 64, pool: GenerationPool | None = None,
                 metrics: ServeMetrics | None = None) -> None:
        """``pool`` and ``metrics`` may be shared with other front ends (gRPC); a pool passed in
        belongs to the caller, one made here is shut down by RunningServer.stop."""
        self.slot, self.api_key = slot, api_key or None
        self.owns_pool = pool is None
        self.pool = pool or GenerationPool(workers, max_queued)
        self.metrics = metrics or ServeMetrics()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        return app

    def stats(self) -> dict[str, Any]:
        """Cumulative serving counters plus the live state, for the agent's telemetry."""
        loaded = self.slot.current
        return {**self.metrics.stats(), "running": self.pool.running, "queued": self.pool.queued,
                "model": loaded.name if loaded else None, "version": loaded.version if loaded else None}

    # -- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[STARTED] = started
        endpoint = getattr(request.match_info.route.resource, "canonical", None) or "unmatched"
        status, error_type = 500, None
        try:
            if self.api_key and endpoint.startswith("/v1/"):
                self._check_key(request)
            response = await handler(request)
            status = response.status
            return response
        except ApiError as e:
            status, error_type = e.status, e.code or e.type
            return e.response()
        except web.HTTPException as e:
            if e.status < 400:
                raise
            error = from_http_exception(e)
            status, error_type = error.status, error.code or error.type
            return error.response()
        except asyncio.CancelledError:
            request[CANCELLED] = True
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            error_type = "internal_error"
            return ApiError(500, "The server had an error while processing your request.",
                            code="internal_error").response()
        finally:
            if request.get(CANCELLED):
                status, error_type = 499, None  # the client closed the connection (nginx's code)
            self.metrics.request(endpoint, status, time.perf_counter() - started, error_type)

    def _check_key(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 (self.api_key or "").encode()):
            raise ApiError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"We could not parse the JSON body of your request ({e}). Send a "
                           "JSON object with Content-Type: application/json.", code="invalid_json") from e
        except RecursionError as e:  # json's C scanner recurses once per nesting level
            raise ApiError(400, "The JSON body of your request is nested too deeply to parse. Send "
                           "an OpenAI request object: messages are a flat list of {role, content}.",
                           code="invalid_json") from e
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        return body

    def _loaded(self, model: str | None = None) -> Loaded:
        loaded = self.slot.current
        if loaded is None:
            raise ApiError(503, "No model is loaded on this device yet.", code="model_not_loaded")
        if model is not None and model not in (loaded.name, f"{loaded.name}:{loaded.version}"):
            raise ApiError(404, f"The model `{model}` does not exist. This server serves "
                           f"`{loaded.name}` (see /v1/models).", param="model", code="model_not_found")
        return loaded

    @staticmethod
    def _model_card(loaded: Loaded) -> dict[str, Any]:
        info = loaded.engine.info
        return {"id": loaded.name, "object": "model", "created": int(loaded.loaded_at),
                "owned_by": "slmops", "version": loaded.version, "precision": info.precision,
                "context_length": info.context_length, "size_bytes": info.size_bytes}

    # -- endpoints -----------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        loaded = self.slot.current
        return web.json_response({"object": "list", "data": [self._model_card(loaded)] if loaded else []})

    async def get_model(self, request: web.Request) -> web.Response:
        return web.json_response(self._model_card(self._loaded(request.match_info["model"])))

    async def healthz(self, request: web.Request) -> web.Response:
        loaded = self.slot.current
        body = {"status": "ok" if loaded else "no_model", "model": loaded.name if loaded else None,
                "version": loaded.version if loaded else None, "last_load_error": self.slot.last_error,
                "running": self.pool.running, "queued": self.pool.queued}
        return web.json_response(body, status=200 if loaded else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(self._gauges).encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def _gauges(self) -> list[str]:
        loaded = self.slot.current
        lines = gauge("slmops_model_loaded", "1 if a model is loaded.", 1 if loaded else 0)
        if loaded:
            info = loaded.engine.info
            lines += gauge("slmops_model_info", "The model being served (value always 1).", 1,
                           (("model", loaded.name), ("version", loaded.version),
                            ("variant", info.name), ("precision", info.precision)))
            lines += gauge("slmops_model_size_bytes", "Size of the served variant's files.", info.size_bytes)
            lines += gauge("slmops_model_load_seconds", "How long the served model took to load.",
                           loaded.load_seconds)
        lines += gauge("slmops_model_load_failed", "1 if the last model load failed.",
                       1 if self.slot.last_error else 0)
        lines += gauge("slmops_generation_workers", "Generations that can run at once.", self.pool.workers)
        lines += gauge("slmops_generations_running", "Generations running now.", self.pool.running)
        lines += gauge("slmops_generations_queued", "Generations waiting for a worker.", self.pool.queued)
        return lines

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    # -- generation ----------------------------------------------------------------------------

    async def _start(self, req: GenerationRequest, chat: bool) -> tuple[Loaded, Stream]:
        deadline = time.monotonic() + SWAP_RETRY_S
        while True:
            loaded = self._loaded(req.model)
            engine = loaded.engine
            try:
                prompt = (await asyncio.to_thread(engine.chat_prompt, req.messages or []) if chat
                          else req.prompt or "")
                return loaded, await asyncio.to_thread(engine.stream, prompt, req.params)
            except EngineClosed as e:  # swapped out between the lookup and now
                if self._loaded(req.model).engine is not engine and time.monotonic() < deadline:
                    continue  # a newer model is in place: ask it
                raise ApiError(503, "The model is being replaced; retry.", code="model_reloading",
                               headers={"Retry-After": "1"}) from e

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._json(request)
        try:
            req = parse_chat(body) if chat else parse_completion(body)
            loaded, stream = await self._start(req, chat)
        except ParamError as e:
            field = "messages" if chat and e.field == "prompt" else e.field
            code = "context_length_exceeded" if "context" in e.message else "invalid_value"
            raise ApiError(400, e.message, param=field, code=code) from e
        bridge = Bridge(asyncio.get_running_loop(), stream, streaming=req.stream)
        try:
            self.pool.submit(stream, bridge.piece, bridge.done)
        except Busy as e:
            raise ApiError(503, str(e), code="overloaded", headers={"Retry-After": "1"}) from e
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = {"id": ident, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": loaded.name}
        try:
            if req.stream:
                return await self._stream_response(request, req, stream, bridge, head, chat)
            text = "".join([piece.text async for piece in bridge])
            if stream.finish_reason == "cancelled":  # not by this client: the server is stopping
                raise ApiError(503, "The server is shutting down; retry.", code="shutting_down")
            choice: dict[str, Any] = ({"message": {"role": "assistant", "content": text}} if chat
                                      else {"text": text})
            choice.update(index=0, logprobs=None, finish_reason=stream.finish_reason)
            return web.json_response({**head, "choices": [choice], "usage": usage(stream)})
        finally:
            finished = stream.finish_reason in ("stop", "length")
            stream.cancel()  # a no-op if it finished; frees the worker if the client went away
            end = time.perf_counter()
            first = bridge.first_at
            self.metrics.generation(stream.prompt_tokens, stream.completion_tokens,
                                    None if first is None else first - request[STARTED],
                                    0.0 if first is None else end - first, cancelled=not finished)

    async def _stream_response(self, request: web.Request, req: GenerationRequest, stream: Stream,
                               bridge: Bridge, head: dict[str, Any], chat: bool) -> web.StreamResponse:
        chunks = Chunks(head, chat, req.include_usage)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            if chat:
                await response.write(chunks.role())
            try:
                async for batch in bridge.batches():
                    text = "".join(piece.text for piece in batch)
                    if text:  # a token can end inside a UTF-8 character: nothing to send yet
                        await response.write(chunks.text(text))
            except ConnectionResetError:
                raise
            except Exception as e:  # the generation failed after the 200 went out: say so in-band
                log.exception("generation failed")
                await response.write(event(ApiError(500, f"generation failed: {e}").body()))
                return response
            if stream.finish_reason == "cancelled":  # not by this client: the server is stopping
                await response.write(event(ApiError(503, "The server is shutting down.",
                                                    code="shutting_down").body()))
                return response
            await response.write(chunks.finish(stream.finish_reason))
            if req.include_usage:
                await response.write(chunks.usage(stream))
            await response.write(DONE)
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-stream (aiohttp's reset error)
            request[CANCELLED] = True
        return response


@dataclass
class RunningServer:
    server: Server
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    async def stop(self) -> None:
        """Stop accepting, cancel running generations (of the server's own pool), close the
        connections."""
        if self.server.owns_pool:
            self.server.pool.shutdown()
        await self.runner.cleanup()


async def start_server(slot: ModelSlot, host: str = "127.0.0.1", port: int = 8080,
                       api_key: str | None = None, *, workers: int = 2, max_queued: int = 64,
                       pool: GenerationPool | None = None,
                       metrics: ServeMetrics | None = None) -> RunningServer:
    """Serve ``slot`` on ``host:port`` (port 0 picks a free port) in the running event loop."""
    server = Server(slot, api_key=api_key, workers=workers, max_queued=max_queued, pool=pool,
                    metrics=metrics)
    runner = web.AppRunner(server.make_app(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        if server.owns_pool:
            server.pool.shutdown()
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return RunningServer(server, runner, host, bound)
