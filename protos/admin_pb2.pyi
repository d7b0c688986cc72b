from protos import common_pb2 as _common_pb2
from protos import delivery_pb2 as _delivery_pb2
from protos import rollout_pb2 as _rollout_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Token(_message.Message):
    __slots__ = ("id", "labels", "created_at_ms", "expires_at_ms", "max_uses", "uses", "revoked")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    id: str
    labels: _containers.ScalarMap[str, str]
    created_at_ms: int
    expires_at_ms: int
    max_uses: int
    uses: int
    revoked: bool
    def __init__(self, id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., revoked: _Optional[bool] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("labels", "ttl_ms", "max_uses")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    ttl_ms: int
    max_uses: int
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., ttl_ms: _Optional[int] = ..., max_uses: _Optional[int] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret_token")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    secret_token: str
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ..., secret_token: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: Token
    def __init__(self, token: _Optional[_Union[Token, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("id", "name", "status", "labels", "hardware", "profile", "agent_version", "enrolled_at_ms", "last_seen_ms", "acked_through_seq", "spool_dropped_total", "desired_generation", "matched_profile", "profile_override", "deployment")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    ACKED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_PROFILE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: str
    labels: _containers.ScalarMap[str, str]
    hardware: _common_pb2.Hardware
    profile: str
    agent_version: str
    enrolled_at_ms: int
    last_seen_ms: int
    acked_through_seq: int
    spool_dropped_total: int
    desired_generation: int
    matched_profile: str
    profile_override: str
    deployment: Deployment
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., profile: _Optional[str] = ..., agent_version: _Optional[str] = ..., enrolled_at_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., acked_through_seq: _Optional[int] = ..., spool_dropped_total: _Optional[int] = ..., desired_generation: _Optional[int] = ..., matched_profile: _Optional[str] = ..., profile_override: _Optional[str] = ..., deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("desired_model", "desired_release", "desired_variant", "active_model", "active_release", "previous_model", "previous_release", "reason", "bytes_done", "bytes_total", "bytes_per_s", "detail_json", "updated_at_ms", "deployment_phase")
    DESIRED_MODEL_FIELD_NUMBER: _ClassVar[int]
    DESIRED_RELEASE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VARIANT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    desired_model: str
    desired_release: int
    desired_variant: str
    active_model: str
    active_release: int
    previous_model: str
    previous_release: int
    reason: str
    bytes_done: int
    bytes_total: int
    bytes_per_s: float
    detail_json: str
    updated_at_ms: int
    deployment_phase: _delivery_pb2.DeploymentPhase
    def __init__(self, desired_model: _Optional[str] = ..., desired_release: _Optional[int] = ..., desired_variant: _Optional[str] = ..., active_model: _Optional[str] = ..., active_release: _Optional[int] = ..., previous_model: _Optional[str] = ..., previous_release: _Optional[int] = ..., reason: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_per_s: _Optional[float] = ..., detail_json: _Optional[str] = ..., updated_at_ms: _Optional[int] = ..., deployment_phase: _Optional[_Union[_delivery_pb2.DeploymentPhase, str]] = ...) -> None: ...

class AssignModelRequest(_message.Message):
    __slots__ = ("id", "model")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AssignModelResponse(_message.Message):
    __slots__ = ("device", "release")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    release: int
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., release: _Optional[int] = ...) -> None: ...

class RollbackDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RollbackDeviceResponse(_message.Message):
    __slots__ = ("device", "release")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    release: int
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ..., release: _Optional[int] = ...) -> None: ...

class ExportBundleRequest(_message.Message):
    __slots__ = ("model", "profile", "allow_downgrade")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_DOWNGRADE_FIELD_NUMBER: _ClassVar[int]
    model: str
    profile: str
    allow_downgrade: bool
    def __init__(self, model: _Optional[str] = ..., profile: _Optional[str] = ..., allow_downgrade: _Optional[bool] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("selector", "include_removed")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    selector: _containers.ScalarMap[str, str]
    include_removed: bool
    def __init__(self, selector: _Optional[_Mapping[str, str]] = ..., include_removed: _Optional[bool] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetDeviceResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class UpdateDeviceLabelsRequest(_message.Message):
    __slots__ = ("id", "set", "remove")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    id: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateDeviceLabelsResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RemoveDeviceResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class QueryTelemetryRequest(_message.Message):
    __slots__ = ("metric", "device_id", "selector", "since_ms", "until_ms", "step_ms", "agg")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    AGG_FIELD_NUMBER: _ClassVar[int]
    metric: str
    device_id: str
    selector: _containers.ScalarMap[str, str]
    since_ms: int
    until_ms: int
    step_ms: int
    agg: str
    def __init__(self, metric: _Optional[str] = ..., device_id: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., step_ms: _Optional[int] = ..., agg: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("timestamp_ms", "value", "count")
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    value: float
    count: int
    def __init__(self, timestamp_ms: _Optional[int] = ..., value: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("device_id", "device_name", "metric", "series", "points")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_name: str
    metric: str
    series: str
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, device_id: _Optional[str] = ..., device_name: _Optional[str] = ..., metric: _Optional[str] = ..., series: _Optional[str] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class QueryTelemetryResponse(_message.Message):
    __slots__ = ("series", "start_ms", "end_ms", "step_ms", "agg")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    AGG_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    start_ms: int
    end_ms: int
    step_ms: int
    agg: str
    def __init__(self, series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., step_ms: _Optional[int] = ..., agg: _Optional[str] = ...) -> None: ...

class MetricInfo(_message.Message):
    __slots__ = ("name", "unit", "help")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    help: str
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., help: _Optional[str] = ...) -> None: ...

class ListMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricInfo]
    def __init__(self, metrics: _Optional[_Iterable[_Union[MetricInfo, _Mapping]]] = ...) -> None: ...

class Benchmark(_message.Message):
    __slots__ = ("id", "device_id", "device_name", "model", "version", "profile", "precision", "variant_sha256", "command_id", "created_at_ms", "report_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    device_id: str
    device_name: str
    model: str
    version: str
    profile: str
    precision: str
    variant_sha256: str
    command_id: str
    created_at_ms: int
    report_json: str
    def __init__(self, id: _Optional[int] = ..., device_id: _Optional[str] = ..., device_name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., profile: _Optional[str] = ..., precision: _Optional[str] = ..., variant_sha256: _Optional[str] = ..., command_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., report_json: _Optional[str] = ...) -> None: ...

class DeviceBenchRequest(_message.Message):
    __slots__ = ("id", "timeout_ms", "prompts", "max_tokens", "detach")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DETACH_FIELD_NUMBER: _ClassVar[int]
    id: str
    timeout_ms: int
    prompts: int
    max_tokens: int
    detach: bool
    def __init__(self, id: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., prompts: _Optional[int] = ..., max_tokens: _Optional[int] = ..., detach: _Optional[bool] = ...) -> None: ...

class DeviceBenchResponse(_message.Message):
    __slots__ = ("command_id", "benchmark")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    benchmark: Benchmark
    def __init__(self, command_id: _Optional[str] = ..., benchmark: _Optional[_Union[Benchmark, _Mapping]] = ...) -> None: ...

class ListBenchmarksRequest(_message.Message):
    __slots__ = ("device_id", "model", "limit")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: str
    limit: int
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListBenchmarksResponse(_message.Message):
    __slots__ = ("benchmarks",)
    BENCHMARKS_FIELD_NUMBER: _ClassVar[int]
    benchmarks: _containers.RepeatedCompositeFieldContainer[Benchmark]
    def __init__(self, benchmarks: _Optional[_Iterable[_Union[Benchmark, _Mapping]]] = ...) -> None: ...

class SetDeviceProfileRequest(_message.Message):
    __slots__ = ("id", "profile")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    profile: str
    def __init__(self, id: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class SetDeviceProfileResponse(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: Device
    def __init__(self, device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...
