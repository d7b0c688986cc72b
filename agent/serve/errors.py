"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Handlers raise :class:`ApiError`; the middleware in openai_http turns it (and aiohttp's own
HTTP errors: unknown path, wrong method, body too large) into this shape, so every client
library's error handling works unchanged.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def from_http_exception(e: web.HTTPException) -> ApiError:
    """aiohttp's own errors (404 no route, 405, 413) in OpenAI's shape."""
    messages = {404: "Unknown request URL. See /v1/models, /v1/chat/completions, /v1/completions.",
                405: f"Method not allowed: {e.reason}.",
                413: "The request body is too large."}
    codes = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
    return ApiError(e.status, messages.get(e.status, e.reason or "error"), code=codes.get(e.status))
