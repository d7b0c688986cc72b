"""What PipelineService's ImportModel, ExportModel and DeleteModel do besides turning protos
into calls: the import job's uploaded files checked against its source, a version's (or a
variant's) files streamed out in the order its recorded digest lists them, and who in the fleet
deploys a version."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from controller import validation
from controller.rollouts.states import ACTIVE_STATES
from controller.store import FleetStore
from protos import pipeline_pb2

# An import's upload: model weights, far above a job's data files. Bounded so a runaway client
# can't fill the controller's disk without limit.
MAX_IMPORT_BYTES = 256 * 2**30
CHUNK_BYTES = 1 << 20


def check_import_files(source: str, names: Mapping[str, str]) -> list[str]:
    """The files of a directory import (as sent, sorted); Invalid when the upload doesn't fit
    the source: files with a hub id, not exactly the GGUF, a directory without config.json."""
    from controller.pipeline.steps.import_model import relative_file, source_kind
    from controller.pipeline.steps.params import ParamError

    kind = source_kind(source)
    if kind == "hub":
        if names:
            raise validation.Invalid(f"files: {source} is downloaded by the controller; send no files")
        return []
    if kind == "gguf":
        if set(names) != {source}:
            raise validation.Invalid(f"files: send the GGUF file {source!r} and nothing else "
                                     f"(got {', '.join(sorted(names)) or 'none'})")
        return []
    files = sorted(names)
    for name in files:
        try:
            relative_file(source, name)
        except ParamError as e:
            raise validation.Invalid(f"files[{name}]: {e.problem}") from None
    if f"{source.rstrip('/')}/config.json" not in names:
        raise validation.Invalid(f"{source}: no config.json; a Hugging Face model directory has "
                                 "config.json, the weights and the tokenizer files")
    return files


def listing(directory: Path) -> list[tuple[str, Path]]:
    """Every file under ``directory`` in the order registration hashed them (directories
    sorted, then files sorted, top level first): (relative path, file)."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        rel_root = Path(root).relative_to(directory)
        for name in sorted(files):
            found.append(((rel_root / name).as_posix(), Path(root) / name))
    return found


async def export_stream(header: pipeline_pb2.ExportHeader, files: list[tuple[str, Path]]
                        ) -> AsyncIterator[pipeline_pb2.ExportModelResponse]:
    yield pipeline_pb2.ExportModelResponse(header=header)
    for rel, path in files:
        f = await asyncio.to_thread(path.open, "rb")
        try:
            first = True
            while (data := await asyncio.to_thread(f.read, CHUNK_BYTES)) or first:
                first = False  # an empty file still sends one chunk
                yield pipeline_pb2.ExportModelResponse(file=pipeline_pb2.FileChunk(path=rel, data=data))
        finally:
            f.close()


def deployed_by(store: FleetStore | None, ref: str) -> list[str]:
    """Who deploys the version ``ref`` (NAME:VERSION): a device whose desired or active release
    is it, an active (running or paused) rollout of it."""
    if store is None:
        return []
    users = []
    for device in store.list_devices():
        if device.desired_model == ref:
            users.append(f"device {device.name} (desired release r{device.desired_release})")
        elif device.deployment.active_model == ref:
            users.append(f"device {device.name} (active release r{device.deployment.active_release})")
    users += [f"rollout {r.id} ({r.state})" for r in store.list_rollouts(list(ACTIVE_STATES))
              if r.model == ref]
    return users
