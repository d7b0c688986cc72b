"""Fetching one blob from the controller into the blob cache: resumable, verified, polite.

``DeliveryService.FetchBlob(sha256, offset)`` streams chunks of about 1 MiB from the offset the
cache already has, so a cut or an agent restart costs at most the chunk that was in flight.
Each chunk must start where the last ended, and nothing past the manifest's size is kept (a
server sending more is stopped). The whole blob's sha256 is checked before it counts as
complete (BlobCache.finish).

What goes wrong, and what is done about it:

- the controller unreachable, a deadline, a cut stream, a stream silent for ``chunk_timeout_s``:
  retried for as long as it takes, with exponential backoff and jitter, keeping the bytes on
  disk (the delivery finishes when the controller is back; a newer desired state cancels it);
- RESOURCE_EXHAUSTED (the controller's limit of concurrent downloads): retried with jitter;
- a hash mismatch (or the server's blob shorter than the bytes on disk: OUT_OF_RANGE): the
  partial file is dropped and the blob fetched again from 0, with backoff, ``mismatch_attempts``
  times in all, then FetchFailed("hash mismatch: ..."); a chunk at the wrong offset counts the
  same, keeping the bytes on disk;
- NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, UNAUTHENTICATED: FetchFailed with the server's
  message; retrying would get the same answer.

Cancellation leaves the .part file, so the next fetch resumes from it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from agent.delivery.blobcache import BlobCache, BlobMismatch
from agent.link import backoff_delay
from protos import delivery_pb2, delivery_pb2_grpc

log = logging.getLogger(__name__)
FATAL = {
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
}
DEFAULT_CHUNK_TIMEOUT_S = 120.0  # a stream that sends nothing for this long is treated as cut


class FetchFailed(Exception):
    """The fetcher gave up on a blob; the message is the reason reported upstream."""


@dataclass
class FetchStats:
    bytes_received: int  # bytes written to the cache by this fetch (all attempts)
    resumed_from: int  # bytes already on disk when it started
    attempts: int  # FetchBlob calls made
    throttled_s: float = 0.0  # seconds slept to keep under the bandwidth cap


class _BadStream(Exception):
    """The server's chunks do not line up with the file on disk (counted like a mismatch)."""


class _Stalled(Exception):
    """The stream sent nothing for too long (treated like a cut)."""


class _RateCap:
    """Keeps the average rate under ``bytes_per_s`` across fetches: after ``n`` bytes arrive,
    the next may come ``n / bytes_per_s`` seconds later. Idle time earns no credit, so a burst
    is at most one chunk. While we sleep, gRPC stops reading and HTTP/2 flow control slows the
    controller down."""

    def __init__(self, bytes_per_s: float) -> None:
        self.bytes_per_s = bytes_per_s
        self._free_at = 0.0

    async def take(self, n: int) -> float:
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + n / self.bytes_per_s
        delay = self._free_at - now
        if delay > 0:
            await asyncio.sleep(delay)
        return max(0.0, delay)


class Fetcher:
    def __init__(self, channel_factory: Callable[[], grpc.aio.Channel], cache: BlobCache, *,
                 max_bytes_per_s: float = 0.0, mismatch_attempts: int = 3, min_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, on_progress: Callable[[int], None] | None = None,
                 chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S, rng: random.Random | None = None) -> None:
        if max_bytes_per_s < 0:
            raise ValueError(f"max_bytes_per_s: {max_bytes_per_s}; 0 (no cap) or more")
        if mismatch_attempts < 1:
            raise ValueError(f"mismatch_attempts: {mismatch_attempts}; at least 1")
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError(f"backoff: min {min_backoff_s} s, max {max_backoff_s} s; need 0 < min <= max")
        self._channel_factory, self._cache = channel_factory, cache
        self._cap = _RateCap(max_bytes_per_s) if max_bytes_per_s > 0 else None
        self._mismatch_attempts = mismatch_attempts
        self._min_backoff, self._max_backoff = min_backoff_s, max_backoff_s
        self._on_progress = on_progress
        self._chunk_timeout = chunk_timeout_s
        self._rng = rng or random.Random()

    async def fetch(self, sha: str, size: int) -> FetchStats:
        """Bring blob ``sha`` of ``size`` bytes (the manifest's) into the cache, verified."""
        self._cache.path(sha)  # ValueError for a name that is not a sha256
        stats = FetchStats(0, self._cache.partial_size(sha), 0)
        if self._cache.has(sha):
            return stats
        mismatches = unreachable = busy = 0
        while True:
            offset = self._cache.partial_size(sha)
            try:
                if offset < size:
                    stats.attempts += 1
                    before = stats.bytes_received
                    try:
                        await self._stream(sha, offset, size, stats)
                    finally:
                        if stats.bytes_received > before:
                            unreachable = busy = 0  # progress: a cut starts the backoff afresh
                await asyncio.to_thread(self._cache.finish, sha, size)
                return stats
            except (BlobMismatch, _BadStream) as e:
                mismatches += 1
                log.warning("blob %s: %s (attempt %d of %d)", sha, e, mismatches, self._mismatch_attempts)
                if mismatches >= self._mismatch_attempts:
                    raise FetchFailed(_reason(e, mismatches)) from None
                delay = backoff_delay(mismatches - 1, self._min_backoff, self._max_backoff, self._rng)
            except _Stalled as e:
                log.info("blob %s: %s; retrying", sha, e)
                delay = backoff_delay(unreachable, self._min_backoff, self._max_backoff, self._rng)
                unreachable += 1
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in FATAL:
                    raise FetchFailed(f"fetch of blob {sha} refused by the controller "
                                      f"({code.name}): {e.details()}") from None
                if code == grpc.StatusCode.OUT_OF_RANGE:  # the file on disk is longer than theirs
                    self._cache.drop_partial(sha)
                    mismatches += 1
                    if mismatches >= self._mismatch_attempts:
                        raise FetchFailed(_reason(Exception(f"blob {sha}: {e.details()}"), mismatches)) \
                            from None
                    delay = backoff_delay(mismatches - 1, self._min_backoff, self._max_backoff, self._rng)
                elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the controller is busy
                    delay = backoff_delay(busy, self._min_backoff, self._max_backoff, self._rng)
                    busy += 1
                else:  # UNAVAILABLE, DEADLINE_EXCEEDED, a cut stream (CANCELLED, INTERNAL, ...)
                    log.info("blob %s: %s (%s); retrying", sha, code.name, e.details())
                    delay = backoff_delay(unreachable, self._min_backoff, self._max_backoff, self._rng)
                    unreachable += 1
            await asyncio.sleep(delay)

    async def _stream(self, sha: str, offset: int, size: int, stats: FetchStats) -> None:
        """One FetchBlob call from ``offset``, appended to the cache until the stream ends or
        ``size`` bytes are on disk (then the call is cancelled: extra bytes are never kept)."""
        stub = delivery_pb2_grpc.DeliveryServiceStub(self._channel_factory())
        call = stub.FetchBlob(delivery_pb2.FetchBlobRequest(sha256=sha, offset=offset))
        try:
            while offset < size:
                try:
                    async with asyncio.timeout(self._chunk_timeout):
                        chunk = await call.read()
                except TimeoutError:
                    raise _Stalled(f"nothing received for {self._chunk_timeout:g} s") from None
                if chunk is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks grpc.aio.EOF
                    return  # ended short: BlobCache.finish reports the short file
                if chunk.offset != offset:
                    raise _BadStream(f"blob {sha}: the controller sent a chunk at offset {chunk.offset} "
                                     f"where {offset} was expected")
                written = self._cache.append(sha, offset, chunk.data, size)
                offset += written
                stats.bytes_received += written
                if written and self._on_progress is not None:
                    self._on_progress(written)
                if written and self._cap is not None:
                    stats.throttled_s += await self._cap.take(written)
        finally:
            call.cancel()  # a no-op once the call is done; stops a server that sends too much


def _reason(e: Exception, attempts: int) -> str:
    text = str(e)
    if not text.startswith("hash mismatch"):
        text = f"hash mismatch: {text}"
    return f"{text} (gave up after {attempts} attempts)"
