"""A FAKE OpenAI-compatible server, for tests: no model stands behind it (none can be downloaded
here). It is real HTTP all the same — ``http.server`` on 127.0.0.1, port 0, in a thread — serving
``POST /v1/chat/completions``. The answer to a prompt comes from a callable; a fault picker can
make any request misbehave:

    "500", "401", "404", ...   that HTTP status with a JSON error body
    "429"       HTTP 429 with ``Retry-After: <retry_after>``
    "garbage"   HTTP 200 with a body that is not JSON
    "slow"      sleeps ``slow_s`` before answering (longer than the client's timeout)
    "empty"     HTTP 200, content ""
    "length"    HTTP 200, finish_reason "length"
    "drop"      closes the connection without answering

``fault(prompt, attempt)`` is called with the prompt and how many times it was asked before;
it returns a mode or None (answer normally). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Fault = Callable[[str, int], "str | None"]


def echo(prompt: str) -> str:
    return f"answer to: {prompt}"


class FakeOpenAIServer:
    def __init__(self, answer: Callable[[str], str] = echo, fault: Fault | None = None, *,
                 model: str = "fake-teacher", slow_s: float = 2.0, retry_after: str = "0") -> None:
        self.answer = answer
        self.fault = fault or (lambda prompt, attempt: None)
        self.model = model
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []
        self._asked: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def prompts_asked(self) -> list[str]:
        with self._lock:
            return [r["prompt"] for r in self.requests]

    def stop(self) -> None:
        """Stop serving; the port is closed afterwards, so the URL is a down endpoint."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._stopping.is_set():
            self.stop()

    # -- request handling ------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path.rstrip("/") != "/v1/chat/completions":
            return self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length))
        prompt = body["messages"][-1]["content"]
        with self._lock:
            attempt = self._asked.get(prompt, 0)
            self._asked[prompt] = attempt + 1
            self.requests.append({"prompt": prompt, "attempt": attempt, "body": body,
                                  "authorization": handler.headers.get("Authorization")})
        mode = self.fault(prompt, attempt)
        if mode == "slow":
            self._stopping.wait(self.slow_s)
            mode = None
        if mode == "drop":
            handler.close_connection = True
            return None
        if mode == "429":
            return self._send(handler, 429, {"error": {"message": "slow down"}},
                              {"Retry-After": self.retry_after})
        if mode is not None and mode.isdigit():
            return self._send(handler, int(mode), {"error": {"message": f"fake {mode}"}})
        if mode == "garbage":
            return self._send_raw(handler, 200, b"<html>this is not json", {})
        if mode not in (None, "empty", "length"):
            raise ValueError(f"fake server: unknown fault mode {mode!r}")
        content = "" if mode == "empty" else self.answer(prompt)
        finish = "length" if mode == "length" else "stop"
        return self._send(handler, 200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())},
        })

    def _send(self, handler: BaseHTTPRequestHandler, status: int, doc: Any,
              headers: dict[str, str] | None = None) -> None:
        self._send_raw(handler, status, json.dumps(doc).encode(), headers or {})

    @staticmethod
    def _send_raw(handler: BaseHTTPRequestHandler, status: int, payload: bytes,
                  headers: dict[str, str]) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out) before we answered

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server dispatches POST to
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler
