"""The agent's Fetcher against a real grpc.aio server on 127.0.0.1: resume after a cut or a
restart, a server that sends too much, a flipped byte, a busy controller, a controller that goes
away mid-download and comes back, the bandwidth cap, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.delivery.blobcache import BlobCache
from agent.delivery.fetch import Fetcher, FetchFailed, FetchStats
from protos import delivery_pb2, delivery_pb2_grpc

CHUNK = 64 * 1024
FAST = {"min_backoff_s": 0.01, "max_backoff_s": 0.05}
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
                   ("grpc.max_reconnect_backoff_ms", 200)]
WAIT_S = 20.0  # a bound, never an expectation


class DirDeliveryServicer(delivery_pb2_grpc.DeliveryServiceServicer):
    """FetchBlob from a directory of files named by their sha256, with faults to order.

    A stand-in so the agent's side can be tested alone, fault by fault; the controller's real
    DeliveryService is tested in tests/test_delivery_controller.py and end to end elsewhere.
    """

    def __init__(self, root: Path, *, abort_after: int | None = None, pause_after: int | None = None,
                 busy_first: int = 0, extra: bytes = b"") -> None:
        self.root = root
        self.abort_after = abort_after  # chunks; the first call that serves data is cut there
        self.pause_after = pause_after  # chunks; the first call that serves data stalls there
        self.busy_first = busy_first  # calls answered RESOURCE_EXHAUSTED
        self.extra = extra  # sent after the file's bytes, then the stream stays open: a blob
        # bigger than its manifest says, from a server that would never stop
        self.requests: list[tuple[str, int]] = []
        self.bytes_sent = 0
        self.paused = asyncio.Event()
        self._served = 0

    async def FetchBlob(self, request: delivery_pb2.FetchBlobRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[delivery_pb2.BlobChunk]:
        self.requests.append((request.sha256, request.offset))
        if len(self.requests) <= self.busy_first:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: retry with jitter")
        if not re.fullmatch(r"[0-9a-f]{64}", request.sha256):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sha256: not a sha256")
        path = self.root / request.sha256
        if not path.is_file():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"blob {request.sha256} was not issued to you")
        data = path.read_bytes() + self.extra
        offset = request.offset
        if offset > len(data):
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {offset} is past the end")
        self._served += 1
        first = self._served == 1
        sent = 0
        while offset < len(data):
            if first and self.abort_after is not None and sent == self.abort_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "cut mid-stream")
            if first and self.pause_after is not None and sent == self.pause_after:
                self.paused.set()
                await asyncio.Event().wait()  # until the client goes away
            piece = data[offset:offset + CHUNK]
            yield delivery_pb2.BlobChunk(offset=offset, data=piece, size=len(data))
            self.bytes_sent += len(piece)
            offset += len(piece)
            sent += 1
        if self.extra:
            await asyncio.Event().wait()  # and would go on: only the client can end this stream


@asynccontextmanager
async def serving(servicer: DirDeliveryServicer, port: int = 0) -> AsyncIterator[tuple[grpc.aio.Server, int]]:
    server = grpc.aio.server()
    delivery_pb2_grpc.add_DeliveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server, port
    finally:
        await server.stop(None)


@asynccontextmanager
async def channel_to(port: int) -> AsyncIterator[Callable[[], grpc.aio.Channel]]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        yield lambda: channel
    finally:
        await channel.close()


def blob(tmp_path: Path, size: int) -> tuple[Path, str, bytes]:
    """A random blob in the server's directory: (served dir, sha256, bytes)."""
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    (served / digest).write_bytes(data)
    return served, digest, data


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, WAIT_S)
    return asyncio.run(bounded())


async def fetch_from(servicer: DirDeliveryServicer, cache: BlobCache, digest: str, size: int,
                     **options: Any) -> FetchStats:
    async with serving(servicer) as (_, port), channel_to(port) as factory:
        return await Fetcher(factory, cache, **FAST, **options).fetch(digest, size)


def test_download_resumes_after_a_cut_and_only_the_rest_is_sent_again(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 10 * CHUNK + 123)
    servicer = DirDeliveryServicer(served, abort_after=4)
    cache = BlobCache(tmp_path / "blobs")
    progress: list[int] = []
    stats = run(fetch_from(servicer, cache, digest, len(data), on_progress=progress.append))
    assert servicer.requests == [(digest, 0), (digest, 4 * CHUNK)]
    assert servicer.bytes_sent == len(data)  # nothing sent twice
    assert (stats.bytes_received, stats.resumed_from, stats.attempts) == (len(data), 0, 2)
    assert sum(progress) == len(data)
    assert cache.has(digest) and cache.path(digest).read_bytes() == data
    assert cache.partial_size(digest) == 0


def test_download_cancelled_mid_way_resumes_from_the_bytes_on_disk(tmp_path: Path) -> None:
    """An agent restart: the task is cancelled, a new Fetcher picks up the .part file."""
    served, digest, data = blob(tmp_path, 8 * CHUNK)
    cache = BlobCache(tmp_path / "blobs")
    first = DirDeliveryServicer(served, pause_after=3)

    async def cancelled_mid_way() -> None:
        async with serving(first) as (_, port), channel_to(port) as factory:
            task = asyncio.create_task(Fetcher(factory, cache, **FAST).fetch(digest, len(data)))
            await first.paused.wait()
            while cache.partial_size(digest) < 3 * CHUNK:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(cancelled_mid_way())
    assert cache.partial_size(digest) == 3 * CHUNK and not cache.has(digest)
    second = DirDeliveryServicer(served)
    stats = run(fetch_from(second, BlobCache(tmp_path / "blobs"), digest, len(data)))
    assert second.requests == [(digest, 3 * CHUNK)]
    assert (stats.resumed_from, stats.bytes_received, second.bytes_sent) == (3 * CHUNK, 5 * CHUNK, 5 * CHUNK)
    assert cache.path(digest).read_bytes() == data


def test_server_sending_more_than_the_manifest_says_is_cut_off(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 3 * CHUNK + 10)
    servicer = DirDeliveryServicer(served, extra=os.urandom(5 * CHUNK))
    cache = BlobCache(tmp_path / "blobs")
    stats = run(fetch_from(servicer, cache, digest, len(data)))
    assert stats.bytes_received == len(data)
    assert cache.path(digest).read_bytes() == data
    assert stats.attempts == 1  # it returned: the fetcher stopped the endless stream itself
    assert cache.partial_size(digest) == 0


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_blob_on_the_server_is_retried_then_fails_with_the_reason(tmp_path: Path,
                                                                          damage: str) -> None:
    served, digest, data = blob(tmp_path, 2 * CHUNK + 7)
    bad = bytearray(data)
    if damage == "flipped byte":
        bad[CHUNK + 3] ^= 0x01
    else:
        del bad[-100:]
    (served / digest).write_bytes(bytes(bad))
    servicer = DirDeliveryServicer(served)
    cache = BlobCache(tmp_path / "blobs")
    with pytest.raises(FetchFailed, match=f"hash mismatch: blob {digest}") as failed:
        run(fetch_from(servicer, cache, digest, len(data), mismatch_attempts=3))
    assert "gave up after 3 attempts" in str(failed.value)
    assert servicer.requests == [(digest, 0)] * 3  # each retry from 0
    assert not cache.has(digest) and cache.partial_size(digest) == 0
    assert os.listdir(tmp_path / "blobs") == []


def test_busy_controller_is_retried_until_it_serves(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, CHUNK + 1)
    servicer = DirDeliveryServicer(served, busy_first=3)
    cache = BlobCache(tmp_path / "blobs")
    stats = run(fetch_from(servicer, cache, digest, len(data)))
    assert stats.attempts == 4 and len(servicer.requests) == 4
    assert cache.path(digest).read_bytes() == data


@pytest.mark.parametrize("sha_on_server", ["missing", "invalid"])
def test_refusals_fail_at_once_with_the_server_message(tmp_path: Path, sha_on_server: str) -> None:
    served, digest, data = blob(tmp_path, 100)
    (served / digest).unlink()
    servicer = DirDeliveryServicer(served)
    cache = BlobCache(tmp_path / "blobs")
    if sha_on_server == "missing":
        with pytest.raises(FetchFailed, match="NOT_FOUND.*was not issued to you"):
            run(fetch_from(servicer, cache, digest, len(data)))
        assert len(servicer.requests) == 1
    else:
        with pytest.raises(ValueError, match="not a sha256"):
            run(fetch_from(servicer, cache, "../../etc/passwd", 100))
        assert servicer.requests == []


def test_controller_unreachable_mid_download_then_back_finishes_the_download(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 8 * CHUNK + 5)
    cache = BlobCache(tmp_path / "blobs")
    first, second = DirDeliveryServicer(served, pause_after=2), DirDeliveryServicer(served)

    async def scenario() -> FetchStats:
        async with serving(first) as (server, port), channel_to(port) as factory:
            task = asyncio.create_task(Fetcher(factory, cache, **FAST).fetch(digest, len(data)))
            await first.paused.wait()
            while cache.partial_size(digest) < 2 * CHUNK:
                await asyncio.sleep(0.01)
            await server.stop(None)  # the controller goes away mid-stream
            await asyncio.sleep(0.3)  # the fetcher retries against nothing meanwhile
            assert not task.done()
            async with serving(second, port):  # back, on the same address
                return await task

    stats = run(scenario())
    assert second.requests[0] == (digest, 2 * CHUNK)
    assert second.bytes_sent == len(data) - 2 * CHUNK
    assert stats.attempts >= 3  # cut, at least one refused connection, then the rest
    assert cache.path(digest).read_bytes() == data


def test_stalled_stream_is_abandoned_and_resumed(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 4 * CHUNK)
    servicer = DirDeliveryServicer(served, pause_after=1)
    cache = BlobCache(tmp_path / "blobs")
    stats = run(fetch_from(servicer, cache, digest, len(data), chunk_timeout_s=0.3))
    assert servicer.requests == [(digest, 0), (digest, CHUNK)]
    assert stats.attempts == 2 and cache.path(digest).read_bytes() == data


def test_bandwidth_cap_throttles_and_still_completes(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 6 * CHUNK)
    servicer = DirDeliveryServicer(served)
    cache = BlobCache(tmp_path / "blobs")
    stats = run(fetch_from(servicer, cache, digest, len(data), max_bytes_per_s=8 * CHUNK))
    assert stats.throttled_s > 0  # the cap's sleeps ran (no assertion on the rate: no timings)
    assert cache.path(digest).read_bytes() == data
    with pytest.raises(ValueError, match="max_bytes_per_s"):
        Fetcher(lambda: None, cache, max_bytes_per_s=-1)


def test_a_blob_already_in_the_cache_is_not_fetched_again(tmp_path: Path) -> None:
    served, digest, data = blob(tmp_path, 1000)
    cache = BlobCache(tmp_path / "blobs")
    run(fetch_from(DirDeliveryServicer(served), cache, digest, len(data)))
    again = DirDeliveryServicer(served)
    stats = run(fetch_from(again, cache, digest, len(data)))
    assert (stats.attempts, stats.bytes_received, again.requests) == (0, 0, [])
