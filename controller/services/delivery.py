"""DeliveryService.FetchBlob: the bytes of one blob, to a device a manifest named it for.

The device is known from its certificate; it gets only blobs named by a manifest issued to it
(NOT_FOUND otherwise, the same answer as for a blob that does not exist, so nothing is learnt
about other devices' models). Chunks of 1 MiB, well under gRPC's message limit, from the offset
the agent already has. Files are read off the event loop, a chunk at a time.

At most ``max_concurrent`` downloads run at once; one more is refused at once with
RESOURCE_EXHAUSTED, and the agent retries with jitter, so a fleet updating together queues
at the devices rather than in this process's memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import grpc

from controller.delivery.releases import Releases
from controller.services.common import require_device
from controller.store import FleetStore
from controller.validation import Invalid
from protos import delivery_pb2, delivery_pb2_grpc

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20


class DeliveryServicer(delivery_pb2_grpc.DeliveryServiceServicer):
    def __init__(self, store: FleetStore, releases: Releases, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent: {max_concurrent}; at least 1")
        self._store, self._releases, self._max = store, releases, max_concurrent
        self.active = 0  # downloads being served now (only touched on the event loop)
        self.bytes_sent = 0

    async def FetchBlob(
        self, request: delivery_pb2.FetchBlobRequest,
        context: grpc.aio.ServicerContext[delivery_pb2.FetchBlobRequest, delivery_pb2.BlobChunk],
    ) -> AsyncIterator[delivery_pb2.BlobChunk]:
        device = await require_device(context, self._store)
        if self.active >= self._max:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the controller is serving its limit of {self._max} concurrent "
                                "downloads; retry in a few seconds (with jitter)")
        self.active += 1
        fd, start, offset = -1, 0, 0
        try:
            try:
                path = await asyncio.to_thread(self._releases.blob_path, device.id, request.sha256)
            except Invalid as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if path is None:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"blob {request.sha256} was not issued to device {device.id}; "
                                    "fetch only the files of the manifest in your desired state")
            try:
                fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
                size = (await asyncio.to_thread(os.fstat, fd)).st_size
            except FileNotFoundError:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"blob {request.sha256} is no longer stored on the controller; "
                                    "ask the operator to assign the model again")
            offset = start = request.offset
            if offset > size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                    f"offset: {offset} is past the end of blob {request.sha256} "
                                    f"({size} bytes); restart the file from 0")
            if offset == size:  # nothing left: say how big it is
                yield delivery_pb2.BlobChunk(offset=offset, data=b"", size=size)
            while offset < size:
                data = await asyncio.to_thread(os.pread, fd, min(CHUNK_BYTES, size - offset), offset)
                if not data:  # truncated under us: the agent's hash check will tell
                    break
                chunk = delivery_pb2.BlobChunk(offset=offset, data=data, size=size)
                offset += len(data)  # counted as sent once handed to gRPC, cut or not
                self.bytes_sent += len(data)
                yield chunk
        finally:
            self.active -= 1
            if offset > start:  # what each (resumed) download cost: see bench/delivery.py
                log.info("served blob %s to %s: bytes %d..%d", request.sha256, device.id, start, offset)
            if fd >= 0:
                os.close(fd)
