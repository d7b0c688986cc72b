"""The rollout transition table (controller/rollouts/states.py): every legal (state, event) pair,
illegal ones refused with a message naming the state and the command, and the enums' round trip
through their proto twins, which must name the same states."""

from __future__ import annotations

import pytest

from agent.delivery import phases
from controller.jobs import states as job_states
from controller.rollouts.states import (
    TRANSITIONS,
    IllegalTransition,
    RolloutDeviceState,
    RolloutEvent,
    RolloutState,
    WaveState,
    device_state_from_proto,
    device_state_to_proto,
    rollout_state_from_proto,
    rollout_state_to_proto,
    transition,
    wave_state_from_proto,
    wave_state_to_proto,
)
from protos import delivery_pb2, pipeline_pb2, rollout_pb2

S, E = RolloutState, RolloutEvent
LEGAL = [
    (S.RUNNING, E.PAUSE, S.PAUSED),
    (S.PAUSED, E.RESUME, S.RUNNING),
    (S.RUNNING, E.ABORT, S.ABORTED),
    (S.PAUSED, E.ABORT, S.ABORTED),
    (S.RUNNING, E.HALT, S.HALTED),
    (S.RUNNING, E.SUCCEED, S.SUCCEEDED),
    (S.RUNNING, E.ROLL_BACK, S.ROLLED_BACK),
    (S.PAUSED, E.ROLL_BACK, S.ROLLED_BACK),
    (S.HALTED, E.ROLL_BACK, S.ROLLED_BACK),
    (S.SUCCEEDED, E.ROLL_BACK, S.ROLLED_BACK),
    (S.ABORTED, E.ROLL_BACK, S.ROLLED_BACK),
]


@pytest.mark.parametrize(("state", "event", "new"), LEGAL, ids=[f"{s}-{e}" for s, e, _ in LEGAL])
def test_every_legal_transition_leads_where_the_table_says(state, event, new) -> None:
    assert transition(state, event) is new
    assert transition(str(state), event) is new  # as read from the database


def test_the_table_has_exactly_the_legal_transitions() -> None:
    assert dict(TRANSITIONS) == {(s, e): n for s, e, n in LEGAL}


ILLEGAL = [
    (S.SUCCEEDED, E.PAUSE, "rollout r-0123456789ab is succeeded; it cannot be paused "
                           "(only a rollout that is running can be)"),
    (S.PAUSED, E.PAUSE, "is paused; it cannot be paused"),
    (S.RUNNING, E.RESUME, "is running; it cannot be resumed (only a rollout that is paused can be)"),
    (S.ABORTED, E.ABORT, "is aborted; it cannot be aborted (only a rollout that is running or "
                         "paused can be)"),
    (S.ROLLED_BACK, E.ROLL_BACK, "is rolled_back; it cannot be rolled back"),
    (S.PAUSED, E.HALT, "is paused; it cannot be halted"),
    (S.HALTED, E.SUCCEED, "is halted; it cannot be succeeded"),
]


@pytest.mark.parametrize(("state", "event", "message"), ILLEGAL,
                         ids=[f"{s}-{e}" for s, e, _ in ILLEGAL])
def test_an_illegal_transition_raises_naming_the_state_and_the_command(
        state: RolloutState, event: RolloutEvent, message: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(state, event, "r-0123456789ab")
    assert message in str(info.value)
    assert (info.value.state, info.value.event) == (state, event)


def test_every_pair_not_in_the_table_is_illegal() -> None:
    for state in RolloutState:
        for event in RolloutEvent:
            if (state, event) not in TRANSITIONS:
                with pytest.raises(IllegalTransition):
                    transition(state, event)


def test_a_state_the_table_does_not_know_is_illegal_not_a_crash() -> None:
    with pytest.raises(IllegalTransition, match="is exploded; it cannot be paused"):
        transition("exploded", RolloutEvent.PAUSE)


@pytest.mark.parametrize(("enum_type", "proto_enum", "to_proto", "from_proto"), [
    (RolloutState, rollout_pb2.RolloutState, rollout_state_to_proto, rollout_state_from_proto),
    (RolloutDeviceState, rollout_pb2.RolloutDeviceState, device_state_to_proto, device_state_from_proto),
    (WaveState, rollout_pb2.WaveState, wave_state_to_proto, wave_state_from_proto),
    (job_states.JobState, pipeline_pb2.JobState, job_states.to_proto, job_states.from_proto),
], ids=["rollout", "rollout-device", "wave", "job"])
def test_each_python_enum_names_exactly_the_proto_enums_states(
        enum_type, proto_enum, to_proto, from_proto) -> None:
    wire = [n for n in proto_enum.keys() if not n.endswith("_UNSPECIFIED")]
    assert len(wire) == len(enum_type)
    for member in enum_type:
        assert from_proto(to_proto(member)) is member
        assert proto_enum.Name(to_proto(member)).endswith("_" + member.name)
    with pytest.raises(ValueError):
        from_proto(0)
    with pytest.raises(ValueError):
        from_proto(99)


def test_deployment_phases_round_trip_and_an_unknown_number_is_named() -> None:
    for phase in phases.REPORTED:
        assert phases.from_proto(phases.to_proto(phase)) is phase
    assert len(phases.REPORTED) == len(delivery_pb2.DeploymentPhase.keys()) - 1
    assert phases.to_proto("") == phases.to_proto(phases.DeploymentPhase.UNKNOWN) == 0
    with pytest.raises(phases.UnknownPhase, match="unknown phase 42"):
        phases.from_proto(42)
