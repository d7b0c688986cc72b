from protos import delivery_pb2 as _delivery_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_RUNNING: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_HALTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_SUCCEEDED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ABORTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ROLLED_BACK: _ClassVar[RolloutState]

class RolloutDeviceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_DEVICE_STATE_UNSPECIFIED: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_PENDING: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_ASSIGNED: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_ACTIVE: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_FAILED: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_SKIPPED: _ClassVar[RolloutDeviceState]
    ROLLOUT_DEVICE_STATE_ROLLED_BACK: _ClassVar[RolloutDeviceState]

class WaveState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAVE_STATE_UNSPECIFIED: _ClassVar[WaveState]
    WAVE_STATE_PENDING: _ClassVar[WaveState]
    WAVE_STATE_RUNNING: _ClassVar[WaveState]
    WAVE_STATE_BAKING: _ClassVar[WaveState]
    WAVE_STATE_PASSED: _ClassVar[WaveState]
    WAVE_STATE_HALTED: _ClassVar[WaveState]
    WAVE_STATE_STOPPED: _ClassVar[WaveState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_RUNNING: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_HALTED: RolloutState
ROLLOUT_STATE_SUCCEEDED: RolloutState
ROLLOUT_STATE_ABORTED: RolloutState
ROLLOUT_STATE_ROLLED_BACK: RolloutState
ROLLOUT_DEVICE_STATE_UNSPECIFIED: RolloutDeviceState
ROLLOUT_DEVICE_STATE_PENDING: RolloutDeviceState
ROLLOUT_DEVICE_STATE_ASSIGNED: RolloutDeviceState
ROLLOUT_DEVICE_STATE_ACTIVE: RolloutDeviceState
ROLLOUT_DEVICE_STATE_FAILED: RolloutDeviceState
ROLLOUT_DEVICE_STATE_SKIPPED: RolloutDeviceState
ROLLOUT_DEVICE_STATE_ROLLED_BACK: RolloutDeviceState
WAVE_STATE_UNSPECIFIED: WaveState
WAVE_STATE_PENDING: WaveState
WAVE_STATE_RUNNING: WaveState
WAVE_STATE_BAKING: WaveState
WAVE_STATE_PASSED: WaveState
WAVE_STATE_HALTED: WaveState
WAVE_STATE_STOPPED: WaveState

class RolloutGates(_message.Message):
    __slots__ = ("min_device_accuracy", "max_p95_ms", "max_error_rate", "max_memory_bytes")
    MIN_DEVICE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MAX_P95_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    min_device_accuracy: float
    max_p95_ms: float
    max_error_rate: float
    max_memory_bytes: float
    def __init__(self, min_device_accuracy: _Optional[float] = ..., max_p95_ms: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_memory_bytes: _Optional[float] = ...) -> None: ...

class RolloutWave(_message.Message):
    __slots__ = ("index", "size", "active", "failed", "pending", "wave_state")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    WAVE_STATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    size: int
    active: int
    failed: int
    pending: int
    wave_state: WaveState
    def __init__(self, index: _Optional[int] = ..., size: _Optional[int] = ..., active: _Optional[int] = ..., failed: _Optional[int] = ..., pending: _Optional[int] = ..., wave_state: _Optional[_Union[WaveState, str]] = ...) -> None: ...

class RolloutDevice(_message.Message):
    __slots__ = ("device_id", "device_name", "wave", "profile", "release", "previous_release", "previous_model", "reason", "figures_json", "online", "updated_at_ms", "state", "deployment_phase")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    WAVE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIGURES_JSON_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    device_name: str
    wave: int
    profile: str
    release: int
    previous_release: int
    previous_model: str
    reason: str
    figures_json: str
    online: bool
    updated_at_ms: int
    state: RolloutDeviceState
    deployment_phase: _delivery_pb2.DeploymentPhase
    def __init__(self, device_id: _Optional[str] = ..., device_name: _Optional[str] = ..., wave: _Optional[int] = ..., profile: _Optional[str] = ..., release: _Optional[int] = ..., previous_release: _Optional[int] = ..., previous_model: _Optional[str] = ..., reason: _Optional[str] = ..., figures_json: _Optional[str] = ..., online: _Optional[bool] = ..., updated_at_ms: _Optional[int] = ..., state: _Optional[_Union[RolloutDeviceState, str]] = ..., deployment_phase: _Optional[_Union[_delivery_pb2.DeploymentPhase, str]] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("gate", "device_id", "device_name", "value", "limit", "passed", "detail")
    GATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    gate: str
    device_id: str
    device_name: str
    value: float
    limit: float
    passed: bool
    detail: str
    def __init__(self, gate: _Optional[str] = ..., device_id: _Optional[str] = ..., device_name: _Optional[str] = ..., value: _Optional[float] = ..., limit: _Optional[float] = ..., passed: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class RolloutEvent(_message.Message):
    __slots__ = ("at_ms", "actor", "action", "detail")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    actor: str
    action: str
    detail: str
    def __init__(self, at_ms: _Optional[int] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "model", "selector", "waves_spec", "waves", "bake_ms", "max_failure", "gates", "auto_rollback", "offline_timeout_ms", "offline_policy", "current_wave", "reason", "created_by", "created_at_ms", "updated_at_ms", "finished_at_ms", "bake_started_ms", "devices", "gate_results", "events", "rollout_state")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_SPEC_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    BAKE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_POLICY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    BAKE_STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    GATE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    selector: _containers.ScalarMap[str, str]
    waves_spec: str
    waves: _containers.RepeatedCompositeFieldContainer[RolloutWave]
    bake_ms: int
    max_failure: str
    gates: RolloutGates
    auto_rollback: bool
    offline_timeout_ms: int
    offline_policy: str
    current_wave: int
    reason: str
    created_by: str
    created_at_ms: int
    updated_at_ms: int
    finished_at_ms: int
    bake_started_ms: int
    devices: _containers.RepeatedCompositeFieldContainer[RolloutDevice]
    gate_results: _containers.RepeatedCompositeFieldContainer[GateResult]
    events: _containers.RepeatedCompositeFieldContainer[RolloutEvent]
    rollout_state: RolloutState
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., waves_spec: _Optional[str] = ..., waves: _Optional[_Iterable[_Union[RolloutWave, _Mapping]]] = ..., bake_ms: _Optional[int] = ..., max_failure: _Optional[str] = ..., gates: _Optional[_Union[RolloutGates, _Mapping]] = ..., auto_rollback: _Optional[bool] = ..., offline_timeout_ms: _Optional[int] = ..., offline_policy: _Optional[str] = ..., current_wave: _Optional[int] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., bake_started_ms: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[RolloutDevice, _Mapping]]] = ..., gate_results: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[RolloutEvent, _Mapping]]] = ..., rollout_state: _Optional[_Union[RolloutState, str]] = ...) -> None: ...

class CreateRolloutRequest(_message.Message):
    __slots__ = ("model", "selector", "waves", "bake_ms", "max_failure", "gates", "no_auto_rollback", "offline_timeout_ms", "offline_policy")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_FIELD_NUMBER: _ClassVar[int]
    BAKE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    NO_AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_POLICY_FIELD_NUMBER: _ClassVar[int]
    model: str
    selector: _containers.ScalarMap[str, str]
    waves: str
    bake_ms: int
    max_failure: str
    gates: RolloutGates
    no_auto_rollback: bool
    offline_timeout_ms: int
    offline_policy: str
    def __init__(self, model: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., waves: _Optional[str] = ..., bake_ms: _Optional[int] = ..., max_failure: _Optional[str] = ..., gates: _Optional[_Union[RolloutGates, _Mapping]] = ..., no_auto_rollback: _Optional[bool] = ..., offline_timeout_ms: _Optional[int] = ..., offline_policy: _Optional[str] = ...) -> None: ...

class CreateRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("rollout_states",)
    ROLLOUT_STATES_FIELD_NUMBER: _ClassVar[int]
    rollout_states: _containers.RepeatedScalarFieldContainer[RolloutState]
    def __init__(self, rollout_states: _Optional[_Iterable[_Union[RolloutState, str]]] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RolloutActionResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...
