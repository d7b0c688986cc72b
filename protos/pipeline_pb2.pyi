from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class JobProgress(_message.Message):
    __slots__ = ("step", "step_index", "step_count", "task", "percent", "loss", "eta_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    step: str
    step_index: int
    step_count: int
    task: str
    percent: float
    loss: float
    eta_s: float
    def __init__(self, step: _Optional[str] = ..., step_index: _Optional[int] = ..., step_count: _Optional[int] = ..., task: _Optional[str] = ..., percent: _Optional[float] = ..., loss: _Optional[float] = ..., eta_s: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "recipe_name", "progress", "error", "created_at_ms", "started_at_ms", "finished_at_ms", "models", "attempts", "target", "result_json", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECIPE_NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    recipe_name: str
    progress: JobProgress
    error: str
    created_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    models: _containers.RepeatedScalarFieldContainer[str]
    attempts: int
    target: str
    result_json: str
    state: JobState
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., recipe_name: _Optional[str] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., error: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., attempts: _Optional[int] = ..., target: _Optional[str] = ..., result_json: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("recipe_yaml",)
    RECIPE_YAML_FIELD_NUMBER: _ClassVar[int]
    recipe_yaml: str
    def __init__(self, recipe_yaml: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "file")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    file: FileChunk
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "states")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    limit: int
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, limit: _Optional[int] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "type", "json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    type: str
    json: str
    def __init__(self, seq: _Optional[int] = ..., type: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "from_seq", "follow")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_seq: int
    follow: bool
    def __init__(self, id: _Optional[str] = ..., from_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("events", "job")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    job: Job
    def __init__(self, events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("eval_name", "metrics_json", "created_at_ms", "job_id")
    EVAL_NAME_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    eval_name: str
    metrics_json: str
    created_at_ms: int
    job_id: str
    def __init__(self, eval_name: _Optional[str] = ..., metrics_json: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("profile", "precision", "provider", "runtime", "status", "reason", "size_bytes", "sha256", "metrics_json", "build_json", "created_at_ms", "job_id")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUILD_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    profile: str
    precision: str
    provider: str
    runtime: str
    status: str
    reason: str
    size_bytes: int
    sha256: str
    metrics_json: str
    build_json: str
    created_at_ms: int
    job_id: str
    def __init__(self, profile: _Optional[str] = ..., precision: _Optional[str] = ..., provider: _Optional[str] = ..., runtime: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., metrics_json: _Optional[str] = ..., build_json: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "version", "kind", "params", "size_bytes", "metrics_json", "lineage_json", "created_at_ms", "job_id", "sha256", "evaluations", "variants")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    kind: str
    params: int
    size_bytes: int
    metrics_json: str
    lineage_json: str
    created_at_ms: int
    job_id: str
    sha256: str
    evaluations: _containers.RepeatedCompositeFieldContainer[Evaluation]
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[str] = ..., params: _Optional[int] = ..., size_bytes: _Optional[int] = ..., metrics_json: _Optional[str] = ..., lineage_json: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., job_id: _Optional[str] = ..., sha256: _Optional[str] = ..., evaluations: _Optional[_Iterable[_Union[Evaluation, _Mapping]]] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class EvalSpec(_message.Message):
    __slots__ = ("ref", "eval_name", "metrics")
    REF_FIELD_NUMBER: _ClassVar[int]
    EVAL_NAME_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    eval_name: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., eval_name: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateModelRequest(_message.Message):
    __slots__ = ("spec", "file")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    spec: EvalSpec
    file: FileChunk
    def __init__(self, spec: _Optional[_Union[EvalSpec, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class EvaluateModelResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GateLimits(_message.Message):
    __slots__ = ("max_accuracy_drop", "min_tokens_per_s", "max_memory_bytes")
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_accuracy_drop: float
    min_tokens_per_s: float
    max_memory_bytes: int
    def __init__(self, max_accuracy_drop: _Optional[float] = ..., min_tokens_per_s: _Optional[float] = ..., max_memory_bytes: _Optional[int] = ...) -> None: ...

class BuildSpec(_message.Message):
    __slots__ = ("ref", "profiles", "gates", "max_new_tokens", "test_rows", "threads")
    REF_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEST_ROWS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    profiles: _containers.RepeatedScalarFieldContainer[str]
    gates: GateLimits
    max_new_tokens: int
    test_rows: int
    threads: int
    def __init__(self, ref: _Optional[str] = ..., profiles: _Optional[_Iterable[str]] = ..., gates: _Optional[_Union[GateLimits, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., test_rows: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class BuildModelRequest(_message.Message):
    __slots__ = ("spec", "file")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    spec: BuildSpec
    file: FileChunk
    def __init__(self, spec: _Optional[_Union[BuildSpec, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class BuildModelResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class DeviceProfile(_message.Message):
    __slots__ = ("name", "description", "source", "arch", "isa_flags", "min_memory_bytes", "accelerator", "min_accelerator_memory_bytes", "precision", "provider", "block_size", "accuracy_level", "int8_scheme", "max_accuracy_drop", "min_tokens_per_s", "max_memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ISA_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    MIN_ACCELERATOR_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    INT8_SCHEME_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    source: str
    arch: _containers.RepeatedScalarFieldContainer[str]
    isa_flags: _containers.RepeatedScalarFieldContainer[str]
    min_memory_bytes: int
    accelerator: str
    min_accelerator_memory_bytes: int
    precision: str
    provider: str
    block_size: int
    accuracy_level: int
    int8_scheme: str
    max_accuracy_drop: float
    min_tokens_per_s: float
    max_memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[str] = ..., arch: _Optional[_Iterable[str]] = ..., isa_flags: _Optional[_Iterable[str]] = ..., min_memory_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ..., min_accelerator_memory_bytes: _Optional[int] = ..., precision: _Optional[str] = ..., provider: _Optional[str] = ..., block_size: _Optional[int] = ..., accuracy_level: _Optional[int] = ..., int8_scheme: _Optional[str] = ..., max_accuracy_drop: _Optional[float] = ..., min_tokens_per_s: _Optional[float] = ..., max_memory_bytes: _Optional[int] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[DeviceProfile]
    def __init__(self, profiles: _Optional[_Iterable[_Union[DeviceProfile, _Mapping]]] = ...) -> None: ...

class VerifyModelsRequest(_message.Message):
    __slots__ = ("sizes_only",)
    SIZES_ONLY_FIELD_NUMBER: _ClassVar[int]
    sizes_only: bool
    def __init__(self, sizes_only: _Optional[bool] = ...) -> None: ...

class DamagedFile(_message.Message):
    __slots__ = ("kind", "path", "variant", "file", "problem", "repair")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    path: str
    variant: str
    file: str
    problem: str
    repair: str
    def __init__(self, kind: _Optional[str] = ..., path: _Optional[str] = ..., variant: _Optional[str] = ..., file: _Optional[str] = ..., problem: _Optional[str] = ..., repair: _Optional[str] = ...) -> None: ...

class VerifyModelsResponse(_message.Message):
    __slots__ = ("variants", "files", "blobs", "damaged")
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    variants: int
    files: int
    blobs: int
    damaged: _containers.RepeatedCompositeFieldContainer[DamagedFile]
    def __init__(self, variants: _Optional[int] = ..., files: _Optional[int] = ..., blobs: _Optional[int] = ..., damaged: _Optional[_Iterable[_Union[DamagedFile, _Mapping]]] = ...) -> None: ...

class ImportSpec(_message.Message):
    __slots__ = ("source", "name")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("spec", "file")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    spec: ImportSpec
    file: FileChunk
    def __init__(self, spec: _Optional[_Union[ImportSpec, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class ImportModelResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("ref", "profile")
    REF_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ref: str
    profile: str
    def __init__(self, ref: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class ExportedFile(_message.Message):
    __slots__ = ("path", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ExportHeader(_message.Message):
    __slots__ = ("ref", "profile", "sha256", "files")
    REF_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ref: str
    profile: str
    sha256: str
    files: _containers.RepeatedCompositeFieldContainer[ExportedFile]
    def __init__(self, ref: _Optional[str] = ..., profile: _Optional[str] = ..., sha256: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ExportedFile, _Mapping]]] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("header", "file")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    header: ExportHeader
    file: FileChunk
    def __init__(self, header: _Optional[_Union[ExportHeader, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("model", "variants")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    model: Model
    variants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., variants: _Optional[_Iterable[str]] = ...) -> None: ...
