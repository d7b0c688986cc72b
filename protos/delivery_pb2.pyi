from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_PHASE_UNSPECIFIED: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_DOWNLOADING: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_VERIFYING: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_STAGING: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_GATING: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_ACTIVE: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_FAILED: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_REFUSED: _ClassVar[DeploymentPhase]
    DEPLOYMENT_PHASE_ROLLED_BACK: _ClassVar[DeploymentPhase]
DEPLOYMENT_PHASE_UNSPECIFIED: DeploymentPhase
DEPLOYMENT_PHASE_DOWNLOADING: DeploymentPhase
DEPLOYMENT_PHASE_VERIFYING: DeploymentPhase
DEPLOYMENT_PHASE_STAGING: DeploymentPhase
DEPLOYMENT_PHASE_GATING: DeploymentPhase
DEPLOYMENT_PHASE_ACTIVE: DeploymentPhase
DEPLOYMENT_PHASE_FAILED: DeploymentPhase
DEPLOYMENT_PHASE_REFUSED: DeploymentPhase
DEPLOYMENT_PHASE_ROLLED_BACK: DeploymentPhase

class FetchBlobRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("offset", "data", "size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest_json", "signature")
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest_json: bytes
    signature: bytes
    def __init__(self, manifest_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DeploymentStatus(_message.Message):
    __slots__ = ("release", "model", "reason", "bytes_done", "bytes_total", "bytes_per_s", "active_model", "active_release", "previous_model", "previous_release", "detail_json", "timestamp_ms", "deployment_phase")
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    release: int
    model: str
    reason: str
    bytes_done: int
    bytes_total: int
    bytes_per_s: float
    active_model: str
    active_release: int
    previous_model: str
    previous_release: int
    detail_json: str
    timestamp_ms: int
    deployment_phase: DeploymentPhase
    def __init__(self, release: _Optional[int] = ..., model: _Optional[str] = ..., reason: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_per_s: _Optional[float] = ..., active_model: _Optional[str] = ..., active_release: _Optional[int] = ..., previous_model: _Optional[str] = ..., previous_release: _Optional[int] = ..., detail_json: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., deployment_phase: _Optional[_Union[DeploymentPhase, str]] = ...) -> None: ...
