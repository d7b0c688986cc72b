"""Real requests to the agents' OpenAI-compatible endpoints: the demo's questions, and light
background traffic during the rollout so its serving gates (p95 latency, error rate) judge real
figures. Plain HTTP from the standard library: what any local app would send."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from agent.chat_format import normalize

REQUEST_TIMEOUT_S = 60.0


def model_id(base_url: str) -> str:
    """The id of the model the endpoint serves (/v1/models)."""
    with urllib.request.urlopen(f"{base_url}/models", timeout=REQUEST_TIMEOUT_S) as response:
        return str(json.loads(response.read())["data"][0]["id"])


def chat(base_url: str, prompt: str, max_tokens: int = 48) -> dict[str, Any]:
    """One greedy /v1/chat/completions request: its answer, usage and wall time."""
    body = json.dumps({"model": model_id(base_url), "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        reply = json.loads(response.read())
    seconds = time.perf_counter() - t0
    usage = reply.get("usage") or {}
    tokens = int(usage.get("completion_tokens") or 0)
    return {"answer": reply["choices"][0]["message"]["content"], "latency_ms": 1000 * seconds,
            "completion_tokens": tokens, "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "tokens_per_s": tokens / seconds if seconds > 0 else None, "model": reply.get("model", "")}


def ask(base_url: str, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each row's prompt through the endpoint, its answer checked against the expected one."""
    results = []
    for row in rows:
        try:
            reply = chat(base_url, row["prompt"])
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            results.append({"prompt": row["prompt"], "expected": row["answer"], "error": str(e),
                            "correct": False})
            continue
        results.append({"prompt": row["prompt"], "expected": row["answer"], **reply,
                        "correct": normalize(reply["answer"]) == normalize(row["answer"])})
    return results


class BackgroundTraffic:
    """One request at a time, in turn, to every agent that serves, until stopped."""

    def __init__(self, urls: Callable[[], list[str]], prompts: list[str], pause_s: float = 0.3) -> None:
        self._urls, self._prompts, self._pause_s = urls, prompts, pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self.sent = self.failed = 0

    def __enter__(self) -> BackgroundTraffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            for url in self._urls():
                if self._stop.is_set():
                    return
                try:
                    chat(url, self._prompts[i % len(self._prompts)], max_tokens=32)
                    self.sent += 1
                except (OSError, urllib.error.URLError, ValueError, KeyError):
                    self.failed += 1  # a device switching models may refuse for a moment
                i += 1
            self._stop.wait(self._pause_s)
