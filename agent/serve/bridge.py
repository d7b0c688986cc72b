"""Pieces from a generation's worker thread to the request's task on the event loop, shared by
the OpenAI endpoints and the gRPC InferenceService."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator

from agent.engine.engine import Piece, Stream


class _Done:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


# Pieces a worker may generate beyond what the request's task has taken; a window of 8 cost 15 %
# of int4 tokens/s on the 80 M model. Half a window pending ends a COALESCE_S pause early, so a
# fast generation does not wait for room.
AHEAD = 64
# After a chunk is written, the next waits this long for more pieces to join it (the first piece
# and the end of the answer go out at once). On 2 cores every chunk wakes the server's event
# loop and the client, and each wake-up can preempt one of onnxruntime's two spinning threads,
# which stalls the op both are in: a chunk per token cost 15-20 % of int4 tokens/s, a chunk every
# 15 ms about 7 % of a 128-token answer with the official client, every 50 ms about 4 %
# (docs/benchmarks.md). 50 ms only groups tokens that come faster than 20 a second, faster than
# anyone reads.
COALESCE_S = 0.05


class Bridge:
    """Pieces from a worker thread to the request's task, in order; the iteration ends when
    the generation does and raises the generation's error, if any.

    Streamed (``streaming``): the worker stays at most ``AHEAD`` pieces ahead, so a client that
    hung up stops its generation within a few tokens instead of letting it run to the end
    unread, and it wakes the event loop at most once per batch the request takes. Not streamed:
    the worker runs free and wakes the loop once, when the generation ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: Stream, *, streaming: bool = True) -> None:
        self._loop, self._stream, self._streaming = loop, stream, streaming
        self._window = threading.Semaphore(AHEAD)
        self._lock = threading.Lock()
        self._pending: collections.deque[Piece | _Done] = collections.deque()
        self._wake_scheduled = False  # until the request takes what is pending
        self._ready = asyncio.Event()
        self.first_at: float | None = None  # perf_counter() of the first piece (worker thread)

    def piece(self, piece: Piece) -> None:  # worker thread
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self._streaming:  # wait for room, unless cancelled
            while not self._window.acquire(timeout=0.2):
                if self._stream.cancelled:
                    return
        self._push(piece, wake=self._streaming)

    def done(self, error: BaseException | None) -> None:  # worker thread
        self._push(_Done(error), wake=True, always=True)

    def _push(self, item: Piece | _Done, *, wake: bool, always: bool = False) -> None:
        """``always``: wake the loop even in a pause between chunks, which then ends early (the
        end of the answer goes out at once, not up to COALESCE_S later); so does half a window
        of pieces."""
        with self._lock:
            self._pending.append(item)
            always = always or (wake and len(self._pending) == AHEAD // 2)
            if not always and (not wake or self._wake_scheduled):
                return
            self._wake_scheduled = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def __aiter__(self) -> AsyncIterator[Piece]:
        async for batch in self.batches():
            for piece in batch:
                yield piece

    async def batches(self) -> AsyncIterator[list[Piece]]:
        """The pieces in order, grouped: each batch is what arrived while the last one was being
        written (and for COALESCE_S after it), so a slow reader gets fewer, larger chunks
        instead of falling behind. While a batch is written and the next one gathers, pieces
        don't wake the loop: it looks for them when the pause ends, or when the generation does."""
        while True:
            await self._ready.wait()
            while items := self._take():
                batch = [item for item in items if not isinstance(item, _Done)]
                if self._streaming:
                    for _ in batch:
                        self._window.release()
                done = next((item for item in items if isinstance(item, _Done)), None)
                if batch:
                    yield batch
                if done is not None:
                    if done.error is not None:
                        raise done.error
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(COALESCE_S):
                        await self._ready.wait()

    def _take(self) -> list[Piece | _Done]:
        """What is pending; when nothing is, the next piece wakes the loop again."""
        self._ready.clear()  # what woke the loop is in what is taken now
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            if not items:
                self._wake_scheduled = False
            return items
