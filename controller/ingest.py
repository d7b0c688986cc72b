"""Group many devices' telemetry into few transactions, and acknowledge only what is committed.

Each stream awaits ``submit``; a single writer thread commits what arrived within a few
milliseconds in one transaction, then resolves every waiting stream. Heartbeats are folded
into the same writer at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, TypeVarTuple

from controller.store import FleetStore, IngestItem, IngestResult, Touch

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

log = logging.getLogger(__name__)
MAX_ITEMS_PER_COMMIT = 1000


class IngestWriter:
    def __init__(self, store: FleetStore, max_delay_ms: int = 20, retention_ms: int = 0) -> None:
        self._store = store
        self._max_delay = max_delay_ms / 1000
        self._retention_ms = retention_ms
        self._queue: asyncio.Queue[tuple[IngestItem, asyncio.Future[IngestResult]]] = (
            asyncio.Queue()
        )
        self._touches: dict[str, Touch] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._tasks: list[asyncio.Task[None]] = []
        self.committed_batches = 0

    async def submit(self, item: IngestItem) -> IngestResult:
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    def touch(self, device_id: str, touch: Touch) -> None:
        self._touches[device_id] = touch

    async def run_in_writer(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run a store call on the writer thread (keeps SQLite writes in one place)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="ingest-commit"),
            asyncio.create_task(self._touch_loop(), name="ingest-touch"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_touches()
        self._executor.shutdown(wait=True)

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = loop.time() + self._max_delay
            while len(batch) < MAX_ITEMS_PER_COMMIT:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    async with asyncio.timeout(timeout):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._store.ingest, items)
            except Exception as e:  # every waiting stream must hear of it
                log.exception("telemetry commit of %d batches failed", len(items))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.committed_batches += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _touch_loop(self) -> None:
        last_retention = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            await self._flush_touches()
            if self._retention_ms and time.monotonic() - last_retention > 600:
                last_retention = time.monotonic()
                cutoff = int(time.time() * 1000) - self._retention_ms
                deleted = await self.run_in_writer(self._store.apply_retention, cutoff)
                log.info("retention: deleted %d points older than %d", deleted, cutoff)

    async def _flush_touches(self) -> None:
        if not self._touches:
            return
        touches, self._touches = self._touches, {}
        try:
            await self.run_in_writer(self._store.touch_devices, touches)
        except Exception:  # last_seen is advisory; keep the writer alive
            log.exception("updating last_seen for %d devices failed", len(touches))
