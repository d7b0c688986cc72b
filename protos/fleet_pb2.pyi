from protos import common_pb2 as _common_pb2
from protos import delivery_pb2 as _delivery_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "telemetry", "command_result", "benchmark", "deployment")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    COMMAND_RESULT_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    telemetry: TelemetryBatch
    command_result: CommandResult
    benchmark: BenchmarkReport
    deployment: _delivery_pb2.DeploymentStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., command_result: _Optional[_Union[CommandResult, _Mapping]] = ..., benchmark: _Optional[_Union[BenchmarkReport, _Mapping]] = ..., deployment: _Optional[_Union[_delivery_pb2.DeploymentStatus, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "telemetry_ack", "desired_state", "command")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    telemetry_ack: TelemetryAck
    desired_state: DesiredState
    command: Command
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., telemetry_ack: _Optional[_Union[TelemetryAck, _Mapping]] = ..., desired_state: _Optional[_Union[DesiredState, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_version", "hardware", "heartbeat_interval_ms", "last_acked_seq")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    hardware: _common_pb2.Hardware
    heartbeat_interval_ms: int
    last_acked_seq: int
    def __init__(self, agent_version: _Optional[str] = ..., hardware: _Optional[_Union[_common_pb2.Hardware, _Mapping]] = ..., heartbeat_interval_ms: _Optional[int] = ..., last_acked_seq: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("timestamp_ms", "spool_pending", "spool_dropped_total")
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_PENDING_FIELD_NUMBER: _ClassVar[int]
    SPOOL_DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    spool_pending: int
    spool_dropped_total: int
    def __init__(self, timestamp_ms: _Optional[int] = ..., spool_pending: _Optional[int] = ..., spool_dropped_total: _Optional[int] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("batch_id", "samples", "dropped_total")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    samples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    dropped_total: int
    def __init__(self, batch_id: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., dropped_total: _Optional[int] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("batch_id", "acked_through_seq", "stored", "duplicates")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    acked_through_seq: int
    stored: int
    duplicates: int
    def __init__(self, batch_id: _Optional[int] = ..., acked_through_seq: _Optional[int] = ..., stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("device_id", "acked_through_seq", "server_time_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    acked_through_seq: int
    server_time_ms: int
    def __init__(self, device_id: _Optional[str] = ..., acked_through_seq: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "labels", "model", "manifest", "profile")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    generation: int
    labels: _containers.ScalarMap[str, str]
    model: str
    manifest: _delivery_pb2.SignedManifest
    profile: str
    def __init__(self, generation: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., model: _Optional[str] = ..., manifest: _Optional[_Union[_delivery_pb2.SignedManifest, _Mapping]] = ..., profile: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("id", "kind", "args_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    args_json: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("id", "ok", "result_json", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    ok: bool
    result_json: str
    error: str
    def __init__(self, id: _Optional[str] = ..., ok: _Optional[bool] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BenchmarkReport(_message.Message):
    __slots__ = ("command_id", "model", "version", "profile", "precision", "variant_sha256", "report_json")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_SHA256_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    model: str
    version: str
    profile: str
    precision: str
    variant_sha256: str
    report_json: str
    def __init__(self, command_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., profile: _Optional[str] = ..., precision: _Optional[str] = ..., variant_sha256: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...
