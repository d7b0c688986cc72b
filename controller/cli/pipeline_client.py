"""The CLI's connection to PipelineService: uploads in chunks, and a job's events followed to
its end across a controller restart."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from controller.cli.client import DEADLINE_S, AdminClient
from controller.cli.output import CliError
from protos import pipeline_pb2, pipeline_pb2_grpc

CHUNK_BYTES = 1 << 20  # well under any message limit (a 4 MiB message fails gRPC's default)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_IMPORT_BYTES = 256 * 2**30  # controller/services/model_io.py's limit for a model's files
UPLOAD_S_PER_MIB = 1.0
FOLLOW_DEADLINE_S = 7 * 24 * 3600.0  # a follow ends when the job does; this only bounds it
RECONNECT_FOR_S = 60.0  # how long a follow retries a controller that went away


def _chunks(files: Mapping[str, Path]) -> Iterator[pipeline_pb2.FileChunk]:
    for name, path in files.items():
        with path.open("rb") as f:
            first = True
            while (data := f.read(CHUNK_BYTES)) or first:  # an empty file still sends one chunk
                first = False
                yield pipeline_pb2.FileChunk(path=name, data=data)


def _upload_size(files: Mapping[str, Path], limit: int = MAX_UPLOAD_BYTES, what: str = "a job") -> int:
    total = 0
    for name, path in files.items():
        try:
            total += path.stat().st_size
        except OSError as e:
            raise CliError(f"{name}: can't read {path}: {e.strerror}", "invalid_argument", 2) from None
    if total > limit:
        raise CliError(f"the files to upload hold {total / 2**20:.1f} MiB; {what} takes at most "
                       f"{limit // 2**20} MiB", "invalid_argument", 2)
    return total


class PipelineClient(AdminClient):
    """AdminClient's mTLS channel, with the PipelineService stub on it."""

    def __init__(self, config_path: Path | None) -> None:
        super().__init__(config_path)
        self.pipeline = pipeline_pb2_grpc.PipelineServiceStub(self.channel)

    def submit(self, recipe_yaml: str, files: Mapping[str, Path]) -> pipeline_pb2.Job:
        size = _upload_size(files)

        def requests() -> Iterator[pipeline_pb2.SubmitJobRequest]:
            yield pipeline_pb2.SubmitJobRequest(spec=pipeline_pb2.JobSpec(recipe_yaml=recipe_yaml))
            for chunk in _chunks(files):
                yield pipeline_pb2.SubmitJobRequest(file=chunk)

        return self.call(self.pipeline.SubmitJob, requests(),
                        DEADLINE_S + UPLOAD_S_PER_MIB * size / 2**20).job

    def evaluate(self, ref: str, eval_name: str, data_name: str, data: Path,
                 metrics: Sequence[str] = ()) -> pipeline_pb2.Job:
        size = _upload_size({data_name: data})

        def requests() -> Iterator[pipeline_pb2.EvaluateModelRequest]:
            yield pipeline_pb2.EvaluateModelRequest(
                spec=pipeline_pb2.EvalSpec(ref=ref, eval_name=eval_name, metrics=list(metrics)))
            for chunk in _chunks({data_name: data}):
                yield pipeline_pb2.EvaluateModelRequest(file=chunk)

        return self.call(self.pipeline.EvaluateModel, requests(),
                        DEADLINE_S + UPLOAD_S_PER_MIB * size / 2**20).job

    def import_model(self, source: str, name: str, files: Mapping[str, Path]) -> pipeline_pb2.Job:
        """Submit an import job: ``files`` (name as sent -> file here) are the GGUF file or every
        file of the directory; none for a hub id."""
        size = _upload_size(files, MAX_IMPORT_BYTES, "an import")

        def requests() -> Iterator[pipeline_pb2.ImportModelRequest]:
            yield pipeline_pb2.ImportModelRequest(spec=pipeline_pb2.ImportSpec(source=source, name=name))
            for chunk in _chunks(files):
                yield pipeline_pb2.ImportModelRequest(file=chunk)

        return self.call(self.pipeline.ImportModel, requests(),
                        DEADLINE_S + UPLOAD_S_PER_MIB * size / 2**20).job

    def export_model(self, ref: str, profile: str) -> Iterator[pipeline_pb2.ExportModelResponse]:
        """The header, then the files' chunks. The deadline allows 1 s per MiB of a 64 GiB
        model; a stream that stops is an error, never a short file (the caller checks sizes and
        the digest)."""
        request = pipeline_pb2.ExportModelRequest(ref=ref, profile=profile)
        try:
            yield from self.pipeline.ExportModel(request, timeout=DEADLINE_S + 64 * 1024 * UPLOAD_S_PER_MIB)
        except grpc.RpcError as e:
            raise self.error(e) from None

    def watch(self, job_id: str, from_seq: int = 0, follow: bool = True
              ) -> Iterator[pipeline_pb2.WatchJobResponse]:
        """The job's events from ``from_seq``. While following, a controller that goes away
        (restarts) is retried with backoff for up to a minute, from the next event: a loop of
        our own, because a retry policy in the service config can't resume a stream midway."""
        next_seq = from_seq
        retry_until = 0.0
        delay = 0.5
        while True:
            request = pipeline_pb2.WatchJobRequest(id=job_id, from_seq=next_seq, follow=follow)
            try:
                for response in self.pipeline.WatchJob(
                        request, timeout=FOLLOW_DEADLINE_S if follow else DEADLINE_S):
                    retry_until, delay = 0.0, 0.5
                    if response.events:
                        next_seq = response.events[-1].seq + 1
                    yield response
                    if response.HasField("job"):
                        return
                return
            except grpc.RpcError as e:
                retryable = e.code() in (grpc.StatusCode.UNAVAILABLE,
                                         grpc.StatusCode.DEADLINE_EXCEEDED)
                if not (follow and retryable):
                    raise self.error(e) from None
                retry_until = retry_until or time.monotonic() + RECONNECT_FOR_S
                if time.monotonic() > retry_until:
                    raise self.error(e) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
