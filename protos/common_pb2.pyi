from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hardware(_message.Message):
    __slots__ = ("arch", "cpu_model", "isa_flags", "physical_cores", "logical_cores", "memory_total_bytes", "disk_total_bytes", "disk_free_bytes", "accelerators", "os", "hostname")
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    ISA_FLAGS_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATORS_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    arch: str
    cpu_model: str
    isa_flags: _containers.RepeatedScalarFieldContainer[str]
    physical_cores: int
    logical_cores: int
    memory_total_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int
    accelerators: _containers.RepeatedCompositeFieldContainer[Accelerator]
    os: str
    hostname: str
    def __init__(self, arch: _Optional[str] = ..., cpu_model: _Optional[str] = ..., isa_flags: _Optional[_Iterable[str]] = ..., physical_cores: _Optional[int] = ..., logical_cores: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., accelerators: _Optional[_Iterable[_Union[Accelerator, _Mapping]]] = ..., os: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class Accelerator(_message.Message):
    __slots__ = ("kind", "name", "memory_bytes")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    memory_bytes: int
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class MetricValue(_message.Message):
    __slots__ = ("metric", "series", "value")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    series: str
    value: float
    def __init__(self, metric: _Optional[str] = ..., series: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("seq", "timestamp_ms", "values")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    timestamp_ms: int
    values: _containers.RepeatedCompositeFieldContainer[MetricValue]
    def __init__(self, seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., values: _Optional[_Iterable[_Union[MetricValue, _Mapping]]] = ...) -> None: ...
