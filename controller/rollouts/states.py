"""The states of a rollout, of its devices and of its waves, and THE rollout transition table.

Every change of a rollout's state, whether the wave stepper decides it (halt, succeed, roll back
after a halt) or an operator asks for it (pause, resume, abort, roll back), goes through
``transition(state, event)``, which raises IllegalTransition for a pair the table does not
have. The values are the words in the database and in JSON output; on the wire they travel as
the proto enums ``slmops.v1.RolloutState``, ``RolloutDeviceState`` and ``WaveState``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar, cast

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from protos import rollout_pb2

_E = TypeVar("_E", bound=enum.StrEnum)


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutDeviceState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACTIVE = "active"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled_back"


class WaveState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BAKING = "baking"
    PASSED = "passed"
    HALTED = "halted"
    STOPPED = "stopped"


class RolloutEvent(enum.StrEnum):
    """What moves a rollout: an operator's command or the stepper's verdict."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLL_BACK = "roll_back"
    HALT = "halt"  # a wave failed (the stepper)
    SUCCEED = "succeed"  # the last wave passed (the stepper)

    @property
    def past(self) -> str:
        """For messages: "it cannot be paused"."""
        return {"pause": "paused", "resume": "resumed", "abort": "aborted",
                "roll_back": "rolled back", "halt": "halted", "succeed": "succeeded"}[self.value]

    @property
    def audit_action(self) -> str:
        """The RolloutEvent.action of the audit trail: paused, resumed, aborted, rolled_back,
        halted, succeeded."""
        return self.past.replace(" ", "_")


S, E = RolloutState, RolloutEvent
# (state, event) -> new state. A pair not here is illegal.
TRANSITIONS: Mapping[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.RUNNING, E.ABORT): S.ABORTED,
    (S.PAUSED, E.ABORT): S.ABORTED,
    (S.RUNNING, E.HALT): S.HALTED,
    (S.RUNNING, E.SUCCEED): S.SUCCEEDED,
    # every device the rollout switched goes back, also after it finished
    (S.RUNNING, E.ROLL_BACK): S.ROLLED_BACK,
    (S.PAUSED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.HALTED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.SUCCEEDED, E.ROLL_BACK): S.ROLLED_BACK,
    (S.ABORTED, E.ROLL_BACK): S.ROLLED_BACK,
}
del S, E
# A rollout in these holds its devices and is stepped by the engine.
ACTIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED)
# Devices not settled yet.
UNSETTLED = (RolloutDeviceState.PENDING, RolloutDeviceState.ASSIGNED)


class IllegalTransition(Exception):
    """The rollout's state does not allow the event; the message names both."""

    def __init__(self, state: str, event: RolloutEvent, rollout_id: str = "") -> None:
        self.state, self.event = state, event
        allowed = [s.value for (s, e) in TRANSITIONS if e is event]
        who = f"rollout {rollout_id}" if rollout_id else "the rollout"
        super().__init__(f"{who} is {state}; it cannot be {event.past} (only a rollout that is "
                         f"{' or '.join(allowed)} can be)")


def transition(state: str, event: RolloutEvent, rollout_id: str = "") -> RolloutState:
    """The state ``event`` leads to from ``state``; IllegalTransition if the table has no such
    pair. ``rollout_id`` only names the rollout in the error."""
    try:
        return TRANSITIONS[(RolloutState(state), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(state, event, rollout_id) from None


def sources(event: RolloutEvent) -> tuple[RolloutState, ...]:
    """The states ``event`` may start from (for a store update that checks the state)."""
    return tuple(s for (s, e) in TRANSITIONS if e is event)


def _to(wrapper: EnumTypeWrapper, prefix: str, value: enum.StrEnum) -> int:
    return wrapper.Value(prefix + value.name)


def _from(wrapper: EnumTypeWrapper, prefix: str, cls: type[_E], number: int) -> _E:
    try:
        return cls[wrapper.Name(number)[len(prefix):]]
    except (ValueError, KeyError):
        raise ValueError(f"{cls.__name__} {number} is not one of {', '.join(cls)}") from None


def rollout_state_to_proto(state: str) -> rollout_pb2.RolloutState:
    return cast(rollout_pb2.RolloutState,
                _to(rollout_pb2.RolloutState, "ROLLOUT_STATE_", RolloutState(state)))


def rollout_state_from_proto(number: int) -> RolloutState:
    return _from(rollout_pb2.RolloutState, "ROLLOUT_STATE_", RolloutState, number)


def device_state_to_proto(state: str) -> rollout_pb2.RolloutDeviceState:
    return cast(rollout_pb2.RolloutDeviceState,
                _to(rollout_pb2.RolloutDeviceState, "ROLLOUT_DEVICE_STATE_", RolloutDeviceState(state)))


def device_state_from_proto(number: int) -> RolloutDeviceState:
    return _from(rollout_pb2.RolloutDeviceState, "ROLLOUT_DEVICE_STATE_", RolloutDeviceState, number)


def wave_state_to_proto(state: str) -> rollout_pb2.WaveState:
    return cast(rollout_pb2.WaveState, _to(rollout_pb2.WaveState, "WAVE_STATE_", WaveState(state)))


def wave_state_from_proto(number: int) -> WaveState:
    return _from(rollout_pb2.WaveState, "WAVE_STATE_", WaveState, number)
