"""A teacher behind any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp's
server, a hosted model), spoken with the standard library's urllib: no new dependency.

A prompt is sent as the user's message; a conversation as its messages (system message and
earlier turns included). Prompts go out ``concurrency`` at a time. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff and jitter (a Retry-After header is
honoured); other 4xx are not. A
response that can't be parsed becomes an "error" Answer for that prompt only. The first prompt
is sent alone as a probe: if the endpoint can't be reached, or rejects us outright (401, 403,
404), generate() raises TeacherError at once instead of hammering it with every prompt; if it
goes away later, a run of failures in a row trips the same error.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from controller.pipeline.events import Events
from controller.pipeline.teachers.base import Answer, GenerationSettings, Prompt, TeacherError

TASK = "teacher/generate"
REJECTED = (401, 403, 404)  # the same for every prompt: wrong key, wrong model or wrong URL


@dataclass(frozen=True)
class _Outcome:
    answer: Answer
    unreachable: bool = False  # gave up after retries without ever getting an HTTP answer
    status: int | None = None


class _Run:
    """What the concurrent requests of one generate() call share."""

    def __init__(self, trip_after: int) -> None:
        self.abort = threading.Event()
        self.trip_after = trip_after
        self.lock = threading.Lock()
        self.unreachable_in_a_row = 0
        self.tripped = ""

    def reached(self) -> None:
        with self.lock:
            self.unreachable_in_a_row = 0

    def unreachable(self, detail: str) -> None:
        with self.lock:
            self.unreachable_in_a_row += 1
            if self.unreachable_in_a_row >= self.trip_after and not self.tripped:
                self.tripped = detail
                self.abort.set()


class OpenAITeacher:
    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 concurrency: int = 8, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise TeacherError(f"teacher.base_url: {base_url!r} is not an http(s) URL such as "
                               "http://127.0.0.1:8000/v1")
        if not isinstance(model, str) or not model.strip():
            raise TeacherError(f"teacher.model: expected the served model's name, got {model!r}")
        for name, value, minimum in (("concurrency", concurrency, 1), ("retries", retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise TeacherError(f"teacher.{name}: expected an integer >= {minimum}, got {value!r}")
        for name, seconds in (("timeout_s", timeout_s), ("backoff_s", backoff_s),
                              ("max_backoff_s", max_backoff_s)):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise TeacherError(f"teacher.{name}: expected a number > 0, got {seconds!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._url = self.base_url + "/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._jitter = random.Random()

    def identity(self) -> dict[str, Any]:
        return {"kind": "openai", "base_url": self.base_url, "model": self.model}

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings,
                 events: Events) -> list[Answer]:
        total = len(prompts)
        if not total:
            return []
        run = _Run(trip_after=max(3, self.concurrency))
        body = {"model": self.model, "max_tokens": settings.max_new_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}

        events.check_cancelled()
        probe = self._ask(prompts[0], body, events, run)
        if probe.unreachable:
            raise TeacherError(f"teacher endpoint {self.base_url} is unreachable: "
                               f"{probe.answer.error}; check that the server runs and base_url is right")
        if probe.status in REJECTED:
            raise TeacherError(f"teacher endpoint {self.base_url} rejected the request: "
                               f"{probe.answer.error}; check base_url, model and the API key")
        answers: list[Answer | None] = [probe.answer] + [None] * (total - 1)
        every = max(1, total // 100)
        events.progress(TASK, 1, total, unit="prompt")

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        try:
            pending: dict[Future[_Outcome], int] = {
                pool.submit(self._ask, prompts[i], body, events, run): i for i in range(1, total)}
            done = 1
            while pending:
                finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in finished:
                    answers[pending.pop(future)] = future.result().answer
                    done += 1
                    if done % every == 0 or done == total:
                        events.progress(TASK, done, total, unit="prompt")
                events.check_cancelled()
        except BaseException:
            run.abort.set()
            raise
        finally:
            # On error don't wait for requests in flight: they end within timeout_s and are
            # dropped. On success nothing is pending.
            pool.shutdown(wait=False, cancel_futures=True)
        if run.tripped:
            raise TeacherError(f"teacher endpoint {self.base_url} became unreachable: "
                               f"{run.trip_after} requests in a row failed ({run.tripped}); "
                               "answers so far are kept, rerun to resume")
        return [a if a is not None else Answer("", "error", "not answered") for a in answers]

    # -- one prompt ------------------------------------------------------------------------

    def _ask(self, prompt: Prompt, body: dict[str, Any], events: Events, run: _Run) -> _Outcome:
        # a conversation goes as it is, without the training weights the data format allows
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else [{"role": m["role"], "content": m["content"]} for m in prompt])
        data = json.dumps({**body, "messages": messages}).encode()
        attempts = self.retries + 1
        for attempt in range(attempts):
            if run.abort.is_set():
                return _Outcome(Answer("", "error", "not asked: the run was stopped"))
            retry_after: float | None = None
            try:
                status, headers, payload = self._post(data)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                unreachable, detail = True, _describe(e)
            else:
                unreachable = False
                run.reached()
                if status == 200:
                    return _Outcome(_parse(payload), status=status)
                detail = f"HTTP {status}: {_snippet(payload)}"
                if status != 429 and status < 500:
                    return _Outcome(Answer("", "error", detail), status=status)
                retry_after = _retry_after(headers.get("Retry-After"))
            if attempt + 1 == attempts:
                break
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * self._jitter.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff_s))
            events.log(f"teacher: {detail}; retry {attempt + 1}/{self.retries} in {delay:.1f} s"
                       + (" (Retry-After)" if retry_after is not None else ""))
            run.abort.wait(delay)
        error = f"{detail} (gave up after {attempts} attempts)"
        if unreachable:
            run.unreachable(detail)
        return _Outcome(Answer("", "error", error), unreachable=unreachable)

    def _post(self, data: bytes) -> tuple[int, Any, bytes]:
        request = urllib.request.Request(self._url, data=data, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:  # a real HTTP answer with a non-2xx status
            try:
                payload = e.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            return e.code, e.headers, payload


def _parse(payload: bytes) -> Answer:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Answer("", "error", f"unparseable response (not JSON): {_snippet(payload)}")
    try:
        choice = doc["choices"][0]
        content = choice["message"].get("content")
        finish = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return Answer("", "error", f"unexpected response (no choices[0].message): {_snippet(payload)}")
    if not isinstance(content, str):
        return Answer("", "error", f"no text in choices[0].message.content: {content!r}"[:200])
    if finish in (None, "stop", "eos"):  # some servers leave finish_reason out
        return Answer(content.strip(), "stop")
    if finish == "length":
        return Answer(content.strip(), "length")
    return Answer("", "error", f"finish_reason {finish!r}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # URLError wraps the socket error
    error = reason if isinstance(reason, BaseException) else error
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _snippet(payload: bytes, limit: int = 200) -> str:
    text = " ".join(payload.decode("utf-8", errors="replace").split())
    return (text[:limit] + "…") if len(text) > limit else (text or "(empty body)")
