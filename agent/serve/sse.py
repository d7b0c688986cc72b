"""Streaming plumbing of the OpenAI endpoints: pieces from a generation thread to the request's
task (:class:`Bridge`), and the server-sent events OpenAI's streaming format is made of."""

from __future__ import annotations

import asyncio
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


class Bridge:
    """Pieces from a worker thread to the request's task, in order; the iteration ends when
    the generation does and raises the generation's error, if any. The worker stays at most
    ``AHEAD`` pieces ahead, so a client that hung up stops its generation within a few tokens
    instead of letting it run to the end unread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: Stream) -> None:
        self._loop, self._queue = loop, asyncio.Queue[Piece | _Done]()
        self._stream, self._window = stream, threading.Semaphore(AHEAD)
        self.first_at: float | None = None  # perf_counter() of the first piece

    def piece(self, piece: Piece) -> None:  # worker thread: wait for room, unless cancelled
        while not self._window.acquire(timeout=0.2):
            if self._stream.cancelled:
                return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, piece)

    def done(self, error: BaseException | None) -> None:  # worker thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, _Done(error))

    async def __aiter__(self) -> AsyncIterator[Piece]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    async def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces in order, grouped: each batch is what arrived while the last one was being
        written, so a slow reader gets fewer, larger chunks instead of falling behind."""
        while True:
            batch: list[Piece] = []
            item = await self._queue.get()
            while True:
                if isinstance(item, _Done):
                    if batch:
                        yield batch
                    if item.error is not None:
                        raise item.error
                    return
                if self.first_at is None:
                    self.first_at = time.perf_counter()
                batch.append(item)
                self._window.release()
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            yield batch


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
