"""Serving the active model to local apps: the OpenAI-compatible HTTP server and its metrics."""

from __future__ import annotations

from agent.serve.openai_http import RunningServer, Server, start_server

__all__ = ["RunningServer", "Server", "start_server"]
