"""A bounded pool of generation threads: ``workers`` generations run at once, up to
``max_queued`` more wait their turn, and anything beyond that is refused at once (``Busy``), so
a flood of requests costs neither memory nor unbounded latency.

Generations run in these threads, never on an event loop. Each one is a ``Stream`` the worker
iterates, handing every piece to ``on_piece``; cancelling the stream (a client went away) frees
the worker before the next token, and a stream cancelled while queued never starts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from agent.engine.engine import Piece, Stream


class Busy(RuntimeError):
    """Every worker is busy and the queue is full; try again shortly."""


class GenerationPool:
    def __init__(self, workers: int = 2, max_queued: int = 64) -> None:
        if workers < 1 or max_queued < 0:
            raise ValueError(f"workers must be >= 1 and max_queued >= 0, got {workers}, {max_queued}")
        self.workers, self.max_queued = workers, max_queued
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="generate")
        self._lock = threading.Lock()
        self._queued = self._running = 0
        self._streams: set[Stream] = set()
        self._closed = False

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, stream: Stream, on_piece: Callable[[Piece], None],
               on_done: Callable[[BaseException | None], None]) -> None:
        """Queue ``stream``; ``on_piece`` and then ``on_done`` (with the error, if any) are called
        from the worker thread. Raises Busy when the pool and its queue are full."""
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down")
            if self._queued + self._running >= self.workers + self.max_queued:
                raise Busy(f"all {self.workers} generation workers are busy and {self._queued} "
                           "requests are queued; retry shortly")
            self._queued += 1
            self._streams.add(stream)
        self._executor.submit(self._run, stream, on_piece, on_done)

    def _run(self, stream: Stream, on_piece: Callable[[Piece], None],
             on_done: Callable[[BaseException | None], None]) -> None:
        with self._lock:
            self._queued -= 1
            self._running += 1
        error: BaseException | None = None
        try:
            for piece in stream:
                try:
                    on_piece(piece)
                except RuntimeError:  # the receiver's event loop is closed (it is gone): stop generating
                    stream.cancel()
        except Exception as e:  # noqa: BLE001 - any failure is reported to the caller through on_done
            error = e
            stream.cancel()
            next(stream, None)  # a cancelled stream ends at once, freeing its generation's memory
        finally:
            with self._lock:
                self._running -= 1
                self._streams.discard(stream)
            with contextlib.suppress(Exception):  # the receiver is gone; nothing is left to tell
                on_done(error)

    def shutdown(self) -> None:
        """Cancel every queued and running generation and stop the threads (not waiting)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()
        self._executor.shutdown(wait=False)
