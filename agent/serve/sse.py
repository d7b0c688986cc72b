"""Streaming plumbing of the OpenAI endpoints: pieces from a generation thread to the request's
task (:class:`Bridge`), and the server-sent events OpenAI's streaming format is made of."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from agent.engine.engine import Piece, Stream


class _Done:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


# Pieces a worker may generate beyond what the request's task has taken; a window of 8 cost 15 %
# of int4 tokens/s on the 80 M model.
AHEAD = 64
# After a chunk is written, the next waits this long for more pieces to join it: at 800 tokens/s
# a chunk per token costs the client and the event loop a wake-up each, which on 2 cores slows
# the generation itself. 15 ms is under one frame of a 60 Hz screen, invisible to a reader. The
# first piece goes out at once, so time to first token is unchanged.
COALESCE_S = 0.015


class Bridge:
    """Pieces from a worker thread to the request's task, in order; the iteration ends when
    the generation does and raises the generation's error, if any. The worker stays at most
    ``AHEAD`` pieces ahead, so a client that hung up stops its generation within a few tokens
    instead of letting it run to the end unread. The worker wakes the event loop once per
    batch, not once per piece."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: Stream) -> None:
        self._loop, self._stream = loop, stream
        self._window = threading.Semaphore(AHEAD)
        self._lock = threading.Lock()
        self._pending: collections.deque[Piece | _Done] = collections.deque()
        self._wake_scheduled = False
        self._ready = asyncio.Event()
        self.first_at: float | None = None  # perf_counter() of the first piece

    def piece(self, piece: Piece) -> None:  # worker thread: wait for room, unless cancelled
        while not self._window.acquire(timeout=0.2):
            if self._stream.cancelled:
                return
        self._push(piece)

    def done(self, error: BaseException | None) -> None:  # worker thread
        self._push(_Done(error))

    def _push(self, item: Piece | _Done) -> None:
        with self._lock:
            self._pending.append(item)
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:  # event loop
        with self._lock:
            self._wake_scheduled = False
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[Piece]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    async def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces in order, grouped: each batch is what arrived while the last one was being
        written (and for COALESCE_S after it), so a slow reader gets fewer, larger chunks
        instead of falling behind."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            with self._lock:
                items = list(self._pending)
                self._pending.clear()
            batch = [item for item in items if not isinstance(item, _Done)]
            for _ in batch:
                self._window.release()
            if batch and self.first_at is None:
                self.first_at = time.perf_counter()
            done = next((item for item in items if isinstance(item, _Done)), None)
            if batch:
                yield batch
            if done is not None:
                if done.error is not None:
                    raise done.error
                return
            if batch:
                await asyncio.sleep(COALESCE_S)


def event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def usage(stream: Stream) -> dict[str, int]:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


class Chunks:
    """The chunks of one streamed answer: chat.completion.chunk deltas or text_completion
    texts, with ``"usage": null`` on each when the client asked for usage at the end."""

    def __init__(self, head: dict[str, Any], chat: bool, include_usage: bool) -> None:
        self.head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        self.chat, self.include_usage = chat, include_usage

    def _chunk(self, choice: dict[str, Any], finish: str | None) -> bytes:
        extra = {"usage": None} if self.include_usage else {}
        return event({**self.head, "choices": [{**choice, "index": 0, "logprobs": None,
                                                "finish_reason": finish}], **extra})

    def role(self) -> bytes:
        return self._chunk({"delta": {"role": "assistant", "content": ""}}, None)

    def text(self, text: str) -> bytes:
        return self._chunk({"delta": {"content": text}} if self.chat else {"text": text}, None)

    def finish(self, reason: str | None) -> bytes:
        return self._chunk({"delta": {}} if self.chat else {"text": ""}, reason)

    def usage(self, stream: Stream) -> bytes:
        return event({**self.head, "choices": [], "usage": usage(stream)})
