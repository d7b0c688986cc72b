"""PipelineService: jobs, the model registry and device variants for the operator. Admin
certificate only.

Thin: it checks what arrives, receives uploads, and turns protos into JobManager and
ModelRegistry calls and back. A build runs as a job of one ``build`` step (steps/build.py); the
device profiles it may name are the controller's (built-in plus its profiles file).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from controller import validation
from controller.build.profiles import DeviceProfile, ProfileError, ProfileSet, builtin_profiles
from controller.delivery.blobs import BlobStore
from controller.delivery.integrity import verify
from controller.jobs import JobManager, JobRecord, ShuttingDown, Submission, Upload, specs
from controller.jobs import states as job_states
from controller.jobs.store import check_job_id
from controller.pipeline.evaluate.metrics import METRICS
from controller.pipeline.evaluate.rows import SHAPES, EvalRow, read_rows
from controller.pipeline.jsonl import DataError
from controller.registry import (
    EvaluationRecord,
    InUse,
    ModelRecord,
    ModelRegistry,
    VariantRecord,
    check_name,
    parse_ref,
)
from controller.services import model_io
from controller.services.common import (
    maps_errors_with,
    maps_stream_errors_with,
    require_admin,
    status_for,
)
from controller.store import FleetStore, StoreError
from protos import pipeline_pb2, pipeline_pb2_grpc

# Each RPC types its request and response itself.
Context = grpc.aio.ServicerContext[Any, Any]

MAX_RECIPE_BYTES = 1024 * 1024
MAX_LIST = 1000
EVAL_DATA_KEY = "eval-data.jsonl"  # the uploaded file's name inside an eval job's recipe
BUILD_DATA_KEY = "build-data.jsonl"  # the uploaded file's name inside a build job's recipe
MAX_BUILD_ROWS = 100_000


def _status(e: Exception) -> grpc.StatusCode | None:
    """The shared mapping, FAILED_PRECONDITION for a model in use, and UNAVAILABLE when the
    database is unreachable or we stop."""
    if isinstance(e, InUse):
        return grpc.StatusCode.FAILED_PRECONDITION
    if (code := status_for(e)) is not None:
        return code
    return grpc.StatusCode.UNAVAILABLE if isinstance(e, ShuttingDown | StoreError) else None


_maps_errors = maps_errors_with(_status)
_maps_stream_errors = maps_stream_errors_with(_status)


def job_to_proto(job: JobRecord) -> pipeline_pb2.Job:
    p = job.progress
    return pipeline_pb2.Job(
        id=job.id, kind=job.kind, recipe_name=job.recipe_name, state=job_states.to_proto(job.status),
        progress=pipeline_pb2.JobProgress(
            step=p.get("step", ""), step_index=p.get("step_index", 0),
            step_count=p.get("step_count", 0), task=p.get("task", ""),
            percent=p.get("percent", 0.0), loss=p.get("loss"), eta_s=p.get("eta_s")),
        error=job.error, created_at_ms=job.created_at_ms, started_at_ms=job.started_at_ms,
        finished_at_ms=job.finished_at_ms, models=list(job.models), attempts=job.attempts,
        target=job.target, result_json=json.dumps(job.result) if job.result else "",
    )


def model_to_proto(m: ModelRecord, evaluations: Sequence[EvaluationRecord] = (),
                   variants: Sequence[VariantRecord] = ()) -> pipeline_pb2.Model:
    return pipeline_pb2.Model(
        name=m.name, version=m.version, kind=m.kind, params=m.params, size_bytes=m.size_bytes,
        metrics_json=json.dumps(m.metrics), lineage_json=json.dumps(m.lineage),
        created_at_ms=m.created_at_ms, job_id=m.job_id, sha256=m.sha256,
        evaluations=[pipeline_pb2.Evaluation(eval_name=e.eval_name, metrics_json=json.dumps(e.metrics),
                                             created_at_ms=e.created_at_ms, job_id=e.job_id)
                     for e in evaluations],
        variants=[variant_to_proto(v) for v in variants],
    )


def variant_to_proto(v: VariantRecord) -> pipeline_pb2.Variant:
    return pipeline_pb2.Variant(
        profile=v.profile, precision=v.precision, provider=v.provider, runtime=v.runtime, status=v.status,
        reason=v.reason, size_bytes=v.size_bytes, sha256=v.sha256, metrics_json=json.dumps(v.metrics),
        build_json=json.dumps(v.build), created_at_ms=v.created_at_ms, job_id=v.job_id)


def profile_to_proto(p: DeviceProfile) -> pipeline_pb2.DeviceProfile:
    m, b, g = p.match, p.build, p.gates
    return pipeline_pb2.DeviceProfile(
        name=p.name, description=p.description, source=p.source, arch=list(m.arch),
        isa_flags=list(m.isa_flags), min_memory_bytes=m.min_memory_bytes, accelerator=m.accelerator,
        min_accelerator_memory_bytes=m.min_accelerator_memory_bytes, precision=b.precision,
        provider=b.provider, block_size=b.block_size, accuracy_level=b.accuracy_level,
        int8_scheme=b.int8_scheme, max_accuracy_drop=g.max_accuracy_drop,
        min_tokens_per_s=g.min_tokens_per_s, max_memory_bytes=g.max_memory_bytes)


async def _first(requests: AsyncIterator[Any], what: str) -> Any:
    async for request in requests:
        if request.WhichOneof("part") != "spec":
            raise validation.Invalid(f"spec: the first message must be the {what} spec, before "
                                     "any file")
        return request.spec
    raise validation.Invalid(f"spec: no {what} spec was sent")


async def _receive(requests: AsyncIterator[Any], upload: Upload) -> dict[str, str]:
    async for request in requests:
        if request.WhichOneof("part") != "file":
            raise validation.Invalid("spec: sent more than once; send it first, once")
        await asyncio.to_thread(upload.add, request.file.path, request.file.data)
    return await asyncio.to_thread(upload.finish)


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    def __init__(self, manager: JobManager, registry: ModelRegistry,
                 profiles: ProfileSet | None = None, blobs: BlobStore | None = None,
                 store: FleetStore | None = None) -> None:
        self._manager, self._registry = manager, registry
        self._store = store  # who deploys a model (DeleteModel); None: no fleet to ask
        self._blobs = blobs  # None: this controller delivers no models
        self._profiles = profiles or builtin_profiles()

    def _resolve(self, refs: Sequence[str]) -> dict[str, Path]:
        """Registry references as written -> their directories (NotFound names the missing)."""
        return {ref: self._registry.path(self._registry.get(specs.registry_name(ref)))
                for ref in refs}

    # jobs
    @_maps_errors
    async def SubmitJob(self, request_iterator: AsyncIterator[pipeline_pb2.SubmitJobRequest],
                        context: Context) -> pipeline_pb2.SubmitJobResponse:
        await require_admin(context)
        spec = await _first(request_iterator, "job")
        size = len(spec.recipe_yaml.encode("utf-8"))
        if size > MAX_RECIPE_BYTES:
            raise validation.Invalid(f"recipe_yaml: {size} bytes; a recipe is at most 1 MiB")
        recipe = await asyncio.to_thread(specs.check_recipe, spec.recipe_yaml)
        models = await asyncio.to_thread(self._resolve, recipe.registry_refs)
        upload = Upload(self._manager.jobs_root)
        try:
            names = await _receive(request_iterator, upload)
            missing = [f for f in recipe.file_refs if f not in names]
            if missing:
                raise validation.Invalid(f"files: the recipe uses {', '.join(map(repr, missing))} "
                                         "but it was not uploaded")
            extra = [f for f in names if f not in recipe.file_refs]
            if extra:
                raise validation.Invalid(f"files[{extra[0]}]: the recipe does not use this file")
            job = await self._manager.submit(Submission("recipe", recipe, upload, names, models))
        except BaseException:
            upload.discard()
            raise
        return pipeline_pb2.SubmitJobResponse(job=job_to_proto(job))

    @_maps_errors
    async def ListJobs(self, request: pipeline_pb2.ListJobsRequest,
                       context: Context) -> pipeline_pb2.ListJobsResponse:
        await require_admin(context)
        try:
            states = [job_states.from_proto(s) for s in request.states]
        except ValueError as e:
            raise validation.Invalid(f"states: {e}") from None
        limit = validation.int_range("limit", request.limit or 100, 1, MAX_LIST)
        jobs = await asyncio.to_thread(self._manager.store.list, states, limit)
        return pipeline_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    @_maps_errors
    async def GetJob(self, request: pipeline_pb2.GetJobRequest,
                     context: Context) -> pipeline_pb2.GetJobResponse:
        await require_admin(context)
        job = await asyncio.to_thread(self._manager.store.get, check_job_id("id", request.id))
        return pipeline_pb2.GetJobResponse(job=job_to_proto(job))

    @_maps_errors
    async def CancelJob(self, request: pipeline_pb2.CancelJobRequest,
                        context: Context) -> pipeline_pb2.CancelJobResponse:
        await require_admin(context)
        job = await self._manager.cancel(check_job_id("id", request.id))
        return pipeline_pb2.CancelJobResponse(job=job_to_proto(job))

    @_maps_stream_errors
    async def WatchJob(self, request: pipeline_pb2.WatchJobRequest,
                       context: Context) -> AsyncIterator[pipeline_pb2.WatchJobResponse]:
        await require_admin(context)
        job_id = check_job_id("id", request.id)
        if request.from_seq < 0:
            raise validation.Invalid(f"from_seq: {request.from_seq} is negative")
        async for events, job in self._manager.watch(job_id, request.from_seq, request.follow):
            yield pipeline_pb2.WatchJobResponse(
                events=[pipeline_pb2.JobEvent(seq=e.seq, type=e.type, json=e.line) for e in events],
                job=job_to_proto(job) if job is not None else None)

    # models
    @_maps_errors
    async def ListModels(self, request: pipeline_pb2.ListModelsRequest,
                         context: Context) -> pipeline_pb2.ListModelsResponse:
        await require_admin(context)
        records = await asyncio.to_thread(self._registry.list, request.name or None)
        return pipeline_pb2.ListModelsResponse(models=[model_to_proto(m) for m in records])

    @_maps_errors
    async def GetModel(self, request: pipeline_pb2.GetModelRequest,
                       context: Context) -> pipeline_pb2.GetModelResponse:
        await require_admin(context)
        record = await asyncio.to_thread(self._registry.get, request.ref)
        evaluations = await asyncio.to_thread(self._registry.evaluations, record.ref)
        variants = await asyncio.to_thread(self._registry.variants, record.ref)
        return pipeline_pb2.GetModelResponse(model=model_to_proto(record, evaluations, variants))

    @_maps_errors
    async def EvaluateModel(self, request_iterator: AsyncIterator[pipeline_pb2.EvaluateModelRequest],
                            context: Context) -> pipeline_pb2.EvaluateModelResponse:
        await require_admin(context)
        spec = await _first(request_iterator, "evaluation")
        if not spec.ref:
            raise validation.Invalid("ref: which model to evaluate, e.g. support-student:2")
        validation.text("eval_name", spec.eval_name, 255)
        metrics = list(spec.metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise validation.Invalid(f"metrics: {', '.join(map(repr, unknown))} not known; choose from "
                                     f"{', '.join(METRICS)}")
        if "judge" in metrics:
            raise validation.Invalid("metrics: judge needs an endpoint; use a recipe's evaluate step "
                                     "with judge: {base_url, model, api_key_env, rubric}")
        target = (await asyncio.to_thread(self._registry.get, spec.ref)).ref
        upload = Upload(self._manager.jobs_root)
        try:
            names = await _receive(request_iterator, upload)
            if len(names) != 1:
                raise validation.Invalid(f"files: send exactly one data file, not {len(names)}")
            (data_name, digest), = names.items()
            await asyncio.to_thread(_check_eval_data, data_name, upload.dir / digest)
            recipe = await asyncio.to_thread(specs.eval_recipe, target, EVAL_DATA_KEY, metrics)
            models = await asyncio.to_thread(self._resolve, recipe.registry_refs)
            job = await self._manager.submit(Submission(
                "eval", recipe, upload, {EVAL_DATA_KEY: digest}, models, target=target,
                eval_name=spec.eval_name or Path(data_name).name or data_name))
        except BaseException:
            upload.discard()
            raise
        return pipeline_pb2.EvaluateModelResponse(job=job_to_proto(job))


    @_maps_errors
    async def ImportModel(self, request_iterator: AsyncIterator[pipeline_pb2.ImportModelRequest],
                          context: Context) -> pipeline_pb2.ImportModelResponse:
        from controller.pipeline.steps.import_model import import_recipe_text

        await require_admin(context)
        spec = await _first(request_iterator, "import")
        name = check_name("name", spec.name)
        source = validation.text("source", spec.source.strip(), 1024)
        if not source:
            raise validation.Invalid("source: hf:ORG/NAME, or the name of the uploaded .gguf file or "
                                     "directory")
        upload = Upload(self._manager.jobs_root, max_total=model_io.MAX_IMPORT_BYTES)
        try:
            names = await _receive(request_iterator, upload)
            files = model_io.check_import_files(source, names)
            text = import_recipe_text(source, name, files)
            recipe = await asyncio.to_thread(specs.check_recipe, text, "import recipe")
            job = await self._manager.submit(Submission("import", recipe, upload, names, {}, target=name))
        except BaseException:
            upload.discard()
            raise
        return pipeline_pb2.ImportModelResponse(job=job_to_proto(job))

    @_maps_stream_errors
    async def ExportModel(self, request: pipeline_pb2.ExportModelRequest,
                          context: Context) -> AsyncIterator[pipeline_pb2.ExportModelResponse]:
        await require_admin(context)
        record = await asyncio.to_thread(self._registry.get, request.ref)
        if request.profile:
            variant = await asyncio.to_thread(self._registry.variant, record.ref, request.profile)
            directory, digest = self._registry.variant_path(variant), variant.sha256
        else:
            directory, digest = self._registry.path(record), record.sha256
        files = await asyncio.to_thread(model_io.listing, directory)
        header = pipeline_pb2.ExportHeader(
            ref=record.ref, profile=request.profile, sha256=digest,
            files=[pipeline_pb2.ExportedFile(path=rel, size_bytes=path.stat().st_size)
                   for rel, path in files])
        async for response in model_io.export_stream(header, files):
            yield response

    @_maps_errors
    async def DeleteModel(self, request: pipeline_pb2.DeleteModelRequest,
                          context: Context) -> pipeline_pb2.DeleteModelResponse:
        await require_admin(context)
        if parse_ref(request.ref, "ref")[1] is None:
            raise validation.Invalid(f"ref: {request.ref!r} names no version; delete NAME:VERSION "
                                     "(see `slmops models list`)")
        record = await asyncio.to_thread(self._registry.get, request.ref)
        used_by = await asyncio.to_thread(model_io.deployed_by, self._store, record.ref)
        deleted, gone = await asyncio.to_thread(self._registry.delete, record.ref, used_by)
        return pipeline_pb2.DeleteModelResponse(model=model_to_proto(deleted),
                                                variants=[v.profile for v in gone])

    # device variants
    @_maps_errors
    async def ListProfiles(self, request: pipeline_pb2.ListProfilesRequest,
                           context: Context) -> pipeline_pb2.ListProfilesResponse:
        await require_admin(context)
        return pipeline_pb2.ListProfilesResponse(profiles=[profile_to_proto(p) for p in self._profiles])

    @_maps_errors
    async def VerifyModels(self, request: pipeline_pb2.VerifyModelsRequest,
                           context: Context) -> pipeline_pb2.VerifyModelsResponse:
        await require_admin(context)
        if self._blobs is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this controller delivers no models")
        report = await asyncio.to_thread(verify, self._registry, self._blobs, full=not request.sizes_only)
        return pipeline_pb2.VerifyModelsResponse(
            variants=report["variants"], files=report["files"], blobs=report["blobs"],
            damaged=[pipeline_pb2.DamagedFile(**p) for p in report["problems"]])

    @_maps_errors
    async def BuildModel(self, request_iterator: AsyncIterator[pipeline_pb2.BuildModelRequest],
                         context: Context) -> pipeline_pb2.BuildModelResponse:
        from controller.pipeline.steps.build import build_recipe_text

        await require_admin(context)
        spec = await _first(request_iterator, "build")
        if not spec.ref:
            raise validation.Invalid("ref: which model to build, e.g. support-student:2")
        target = (await asyncio.to_thread(self._registry.get, spec.ref)).ref
        try:
            chosen = self._profiles.select(list(spec.profiles))
        except ProfileError as e:
            raise validation.Invalid(f"{e}; this controller's profiles: {', '.join(self._profiles.names)}") \
                from None
        gates = _gate_limits(spec.gates)
        max_new_tokens = validation.int_range("max_new_tokens", spec.max_new_tokens or 64, 1, 4096)
        test_rows = validation.int_range("test_rows", spec.test_rows or 100, 1, MAX_BUILD_ROWS)
        threads = validation.int_range("threads", spec.threads, 0, 1024)
        upload = Upload(self._manager.jobs_root)
        try:
            names = await _receive(request_iterator, upload)
            if len(names) > 1:
                raise validation.Invalid(f"files: send at most one data file, not {len(names)}")
            inputs: dict[str, str] = {}
            if names:
                (data_name, digest), = names.items()
                await asyncio.to_thread(_check_build_data, data_name, upload.dir / digest)
                inputs = {BUILD_DATA_KEY: digest}
            text = build_recipe_text(target, chosen, data=BUILD_DATA_KEY if inputs else None, gates=gates,
                                     max_new_tokens=max_new_tokens, test_rows=test_rows, threads=threads)
            recipe = await asyncio.to_thread(specs.check_recipe, text, "build recipe")
            models = await asyncio.to_thread(self._resolve, recipe.registry_refs)
            job = await self._manager.submit(Submission("build", recipe, upload, inputs, models,
                                                        target=target))
        except BaseException:
            upload.discard()
            raise
        return pipeline_pb2.BuildModelResponse(job=job_to_proto(job))


def _gate_limits(limits: pipeline_pb2.GateLimits) -> dict[str, float]:
    """The gate overrides that were set, checked, in the build step's terms."""
    out: dict[str, float] = {}
    for field, key, scale in (("max_accuracy_drop", "max_accuracy_drop", 1.0),
                              ("min_tokens_per_s", "min_tokens_per_s", 1.0),
                              ("max_memory_bytes", "max_memory_mb", 1 / 2**20)):
        if limits.HasField(field):
            value = float(getattr(limits, field))
            if not value >= 0 or value == float("inf"):
                raise validation.Invalid(f"gates.{field}: {value} must be a finite number >= 0")
            if field == "max_accuracy_drop" and value > 100:
                raise validation.Invalid(f"gates.{field}: {value} points is more than 100")
            out[key] = value * scale
    return out


def _read_rows(name: str, path: Path) -> list[EvalRow]:
    """Evaluation rows (prompt/answer, conversations or text); Invalid naming the upload."""
    try:
        rows = read_rows(path)
    except DataError as e:
        raise validation.Invalid(f"files[{name}]" + str(e).removeprefix(str(path))) from None
    if not rows:
        raise validation.Invalid(f"files[{name}]: no examples; each line is one of: {SHAPES}")
    return rows


def _check_build_data(name: str, path: Path) -> None:
    rows = _read_rows(name, path)
    if len(rows) > MAX_BUILD_ROWS:
        raise validation.Invalid(f"files[{name}]: {len(rows)} examples; a build checks at most "
                                 f"{MAX_BUILD_ROWS}")


def _check_eval_data(name: str, path: Path) -> None:
    _read_rows(name, path)
