"""Rollouts end to end: a real controller (its rollout engine ticking every 0.1 s) and three real
agent daemons in this process over real mTLS, each running support:1 of the tiny int4 variant,
rolled to support:2 in waves: success, a canary that fails the on-device gate, pause and resume,
rollback of a finished rollout, and a controller restarted between waves."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import variants
from inproc import RunningAgent, RunningController
from test_delivery_e2e import _assign, _device, _phase, _register, _wait_for

from agent.delivery.phases import to_proto as phase_to_proto
from controller.rollouts.states import device_state_from_proto, rollout_state_from_proto
from protos import admin_pb2, rollout_pb2

NAMES = ("edge-1", "edge-2", "edge-3")
FAST = {"rollout_tick_s": 0.1, "rollout_waves_per_minute": 6000.0}


@pytest.fixture(scope="session")
def golden(tiny: variants.TinyVariants) -> list[dict[str, str]]:
    return variants.golden_rows(tiny.int4, tiny.test_rows, 6)


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ctl = RunningController(root / "ctl", **FAST)
        self.agents: list[RunningAgent] = []

    def restart_controller(self) -> None:
        listen, enroll = self.ctl.endpoints.listen, self.ctl.endpoints.enroll
        self.ctl.stop()
        self.ctl = RunningController(self.root / "ctl", listen=listen, enroll_listen=enroll, **FAST)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.ctl.stop()


@pytest.fixture
def fleet(tmp_path: Path, tiny, golden) -> Iterator[Fleet]:
    """Three agents labelled site=lab, each active on support:1 (first release)."""
    f = Fleet(tmp_path)
    try:
        for name in NAMES:
            f.agents.append(RunningAgent(f.ctl, tmp_path / name, name, serve_port=0))
        for name in NAMES:
            _wait_for(lambda n=name: _device(f.ctl, n).status == "online", f"{name} online")
            f.ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(
                id=name, set={"site": "lab"}), timeout=10)
        profile = _device(f.ctl, NAMES[0]).profile
        f.v1 = _register(f.ctl, tmp_path / "v1", "support", tiny.int4, profile, golden)
        f.first = {n: _assign(f.ctl, n, f.v1) for n in NAMES}
        for name, release in f.first.items():
            _phase(f.ctl, name, release, "active")
        f.profile = profile
        yield f
    finally:
        f.stop()


def _create(ctl: RunningController, **fields) -> rollout_pb2.Rollout:
    request = rollout_pb2.CreateRolloutRequest(**{
        "model": "support:2", "selector": {"site": "lab"}, "waves": "1,50%,100%", "bake_ms": 1000,
        "max_failure": "0", "gates": rollout_pb2.RolloutGates(min_device_accuracy=0.9), **fields})
    return ctl.admin.CreateRollout(request, timeout=60).rollout


def _get(ctl: RunningController, rollout_id: str) -> rollout_pb2.Rollout:
    return ctl.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=rollout_id), timeout=10).rollout


def _until_state(ctl: RunningController, rollout_id: str, *states: str) -> rollout_pb2.Rollout:
    found: list[rollout_pb2.Rollout] = []

    def reached() -> bool:
        found[:] = [_get(ctl, rollout_id)]
        return _state(found[0]) in states

    try:
        _wait_for(reached, f"rollout {rollout_id} to be {'/'.join(states)}", 120)
    except AssertionError:
        raise AssertionError(f"last: {found[0] if found else None}") from None
    return found[0]


def _state(rollout: rollout_pb2.Rollout) -> str:
    return rollout_state_from_proto(rollout.rollout_state)


def _status(rollout: rollout_pb2.Rollout) -> dict[str, str]:
    return {d.device_name: device_state_from_proto(d.state) for d in rollout.devices}


def _v2_releases(ctl: RunningController, name: str) -> int:
    """How many releases of support:2 were issued to the device."""
    device = ctl.store.find_device(name)
    return sum(1 for r in range(1, ctl.store.next_release())
               if (rec := ctl.store.get_release(r, device.id)) and rec.ref == "support:2")


def test_a_rollout_of_an_older_version_takes_the_fleet_back_to_it(fleet: Fleet, tiny, golden) -> None:
    """A rollout names its version: an operator rolling the fleet back to support:1 from
    support:2 means it, so the devices take it instead of refusing a downgrade."""
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    up = _until_state(fleet.ctl, _create(fleet.ctl).id, "succeeded", "halted", "rolled_back")
    assert _state(up) == "succeeded", up.reason
    down = _until_state(fleet.ctl, _create(fleet.ctl, model="support:1").id, "succeeded", "halted",
                        "rolled_back")
    assert _state(down) == "succeeded", down.reason
    for name in NAMES:
        assert _device(fleet.ctl, name).deployment.active_model == "support:1"


def test_canary_then_waves_reach_every_device(fleet: Fleet, tiny, golden) -> None:
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    created = _create(fleet.ctl)
    assert created.id.startswith("r-") and [w.size for w in created.waves] == [1, 1, 1]
    assert created.created_by == "admin" and _state(created) == "running"
    done = _until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")
    assert _state(done) == "succeeded", done.reason
    assert set(_status(done).values()) == {"active"}
    for d in done.devices:
        assert _device(fleet.ctl, d.device_name).deployment.active_model == "support:2"
        assert d.previous_model == "support:1"
    assert {r.gate for r in done.gate_results} == {"min_device_accuracy"}
    assert all(r.passed for r in done.gate_results)
    actions = [e.action for e in done.events]
    assert actions[0] == "created" and actions.count("wave_started") == 3 and actions[-1] == "succeeded"
    listed = fleet.ctl.admin.ListRollouts(rollout_pb2.ListRolloutsRequest(), timeout=10).rollouts
    assert [r.id for r in listed] == [created.id]


def test_a_canary_failing_the_on_device_gate_halts_and_leaves_the_others_alone(
        fleet: Fleet, tiny, golden) -> None:
    wrong = [{"prompt": row["prompt"], "answer": "no such answer"} for row in golden]
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, wrong)
    created = _create(fleet.ctl)
    done = _until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")
    assert _state(done) == "rolled_back" and done.reason.startswith("wave 1:")
    canary = done.devices[0]
    assert canary.wave == 0 and device_state_from_proto(canary.state) == "failed"
    assert canary.reason.startswith("failed: gate:")
    assert [(r.gate, r.device_name) for r in done.gate_results] == [("max_failure", canary.device_name)]
    for d in done.devices[1:]:
        assert device_state_from_proto(d.state) == "pending" and d.release == 0
        assert _v2_releases(fleet.ctl, d.device_name) == 0
    assert "called off: it stays on support:1" in canary.reason
    for name in NAMES:  # the canary never switched: the old model kept serving everywhere
        deployment = _device(fleet.ctl, name).deployment
        assert deployment.active_model == "support:1"
        if name != canary.device_name:
            assert deployment.active_release == fleet.first[name]
    # the canary's desired state no longer names support:2: a call-off naming support:1
    desired = _device(fleet.ctl, canary.device_name).deployment.desired_release
    assert desired > canary.release
    assert _phase(fleet.ctl, canary.device_name, desired, "active").active_model == "support:1"


def test_pause_lets_in_flight_updates_finish_and_starts_nothing_until_resume(
        fleet: Fleet, tiny, golden) -> None:
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    created = _create(fleet.ctl)
    _wait_for(lambda: _status(_get(fleet.ctl, created.id))[NAMES[0]] != "pending", "the canary to start")
    paused = fleet.ctl.admin.PauseRollout(rollout_pb2.RolloutActionRequest(id=created.id),
                                          timeout=10).rollout
    assert _state(paused) == "paused"
    _wait_for(lambda: _status(_get(fleet.ctl, created.id))[NAMES[0]] == "active", "the canary to finish")
    time.sleep(1.5)  # several ticks and more than the bake: nothing may start while paused
    rollout = _get(fleet.ctl, created.id)
    assert _state(rollout) == "paused" and rollout.current_wave == 0
    assert [_status(rollout)[n] for n in NAMES[1:]] == ["pending", "pending"]
    with pytest.raises(grpc.RpcError) as e:
        fleet.ctl.admin.PauseRollout(rollout_pb2.RolloutActionRequest(id=created.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "paused" in e.value.details()
    fleet.ctl.admin.ResumeRollout(rollout_pb2.RolloutActionRequest(id=created.id), timeout=10)
    done = _until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")
    assert _state(done) == "succeeded", done.reason
    assert [e.action for e in done.events if e.action in ("paused", "resumed")] == ["paused", "resumed"]
    assert all(e.actor == "admin" for e in done.events if e.action in ("paused", "resumed"))


def test_rollback_of_a_finished_rollout_returns_every_device_to_its_previous_model(
        fleet: Fleet, tiny, golden) -> None:
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    created = _create(fleet.ctl)
    assert _state(_until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")) == "succeeded"
    with pytest.raises(grpc.RpcError) as e:
        fleet.ctl.admin.PauseRollout(rollout_pb2.RolloutActionRequest(id=created.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details().startswith(f"rollout {created.id} is succeeded; it cannot be paused")
    back = fleet.ctl.admin.RollbackRollout(rollout_pb2.RolloutActionRequest(id=created.id),
                                           timeout=30).rollout
    assert _state(back) == "rolled_back" and set(_status(back).values()) == {"rolled_back"}
    for name in NAMES:  # verified by the devices' own reports, on the rollback's new release
        desired = _device(fleet.ctl, name).deployment.desired_release
        assert desired > max(d.release for d in back.devices)
        assert _phase(fleet.ctl, name, desired, "rolled_back").active_model == "support:1"
    with pytest.raises(grpc.RpcError) as e:
        fleet.ctl.admin.RollbackRollout(rollout_pb2.RolloutActionRequest(id=created.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details().startswith(f"rollout {created.id} is rolled_back; it cannot be rolled back")


@pytest.mark.parametrize(("call", "word"), [("PauseRollout", "paused"), ("ResumeRollout", "resumed"),
                                            ("AbortRollout", "aborted")])
def test_an_operator_command_on_a_finished_rollout_is_refused_naming_its_state(
        fleet: Fleet, tiny, golden, call: str, word: str) -> None:
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    created = _create(fleet.ctl, bake_ms=600_000)
    aborted = fleet.ctl.admin.AbortRollout(rollout_pb2.RolloutActionRequest(id=created.id),
                                           timeout=10).rollout
    assert _state(aborted) == "aborted" and aborted.finished_at_ms > 0
    with pytest.raises(grpc.RpcError) as e:
        getattr(fleet.ctl.admin, call)(rollout_pb2.RolloutActionRequest(id=created.id), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details().startswith(f"rollout {created.id} is aborted; it cannot be {word}")
    after = _get(fleet.ctl, created.id)
    assert _state(after) == "aborted"
    assert [ev.action for ev in after.events].count("aborted") == 1  # nothing recorded for the refusal


def test_a_restarted_controller_resumes_at_the_right_wave_and_assigns_no_device_twice(
        fleet: Fleet, tiny, golden) -> None:
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, golden)
    created = _create(fleet.ctl, bake_ms=3000)
    _wait_for(lambda: _get(fleet.ctl, created.id).current_wave >= 1, "wave 1 to pass")
    before = _get(fleet.ctl, created.id)
    fleet.restart_controller()
    after = _get(fleet.ctl, created.id)
    assert after.current_wave == before.current_wave >= 1  # not back to the canary, not skipped ahead
    done = _until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")
    assert _state(done) == "succeeded", done.reason
    assert [e.action for e in done.events].count("wave_started") == 3
    for name in NAMES:
        assert _v2_releases(fleet.ctl, name) == 1
        assert _device(fleet.ctl, name).deployment.active_model == "support:2"


def test_a_rollback_while_a_device_still_downloads_calls_its_update_off(
        fleet: Fleet, tiny, golden) -> None:
    """A device capped at 0.5 MB/s is still fetching support:2's 3 MB when the operator rolls
    the rollout back: its update is dropped, and it never switches to support:2 later. (Six
    seconds of download leave a slow CI host time to see it downloading and roll back.)"""
    slow = RunningAgent(fleet.ctl, fleet.root / "edge-slow", "edge-slow", serve_port=0,
                        download_bytes_per_s=5e5)
    fleet.agents.append(slow)
    _wait_for(lambda: _device(fleet.ctl, "edge-slow").status == "online", "edge-slow online")
    fleet.ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(
        id="edge-slow", set={"site": "lab"}), timeout=10)
    first = _assign(fleet.ctl, "edge-slow", fleet.v1)
    _phase(fleet.ctl, "edge-slow", first, "active")
    padded = variants.copy_variant(tiny.int4, fleet.root / "padded")
    (padded / "extra-weights.bin").write_bytes(os.urandom(3 * 2**20))
    _register(fleet.ctl, fleet.root / "v2", "support", padded, fleet.profile, golden)
    created = _create(fleet.ctl, waves="100%", bake_ms=60_000)
    _wait_for(lambda: _device(fleet.ctl, "edge-slow").deployment.deployment_phase
              == phase_to_proto("downloading"),
              "edge-slow to be downloading support:2")
    back = fleet.ctl.admin.RollbackRollout(rollout_pb2.RolloutActionRequest(id=created.id),
                                           timeout=30).rollout
    row = next(d for d in back.devices if d.device_name == "edge-slow")
    assert _state(back) == "rolled_back"
    assert device_state_from_proto(row.state) == "rolled_back" and "called off" in row.reason
    time.sleep(7)  # longer than the rest of its download would have taken
    deployment = _device(fleet.ctl, "edge-slow").deployment
    assert deployment.desired_release > row.release  # the call-off: a new release naming support:1
    assert (deployment.active_model, deployment.active_release) == ("support:1", deployment.desired_release)
    for name in NAMES:  # switched and rolled back, or called off like edge-slow: on support:1
        desired = _device(fleet.ctl, name).deployment.desired_release
        assert _phase(fleet.ctl, name, desired, "rolled_back", "active").active_model == "support:1"


def test_a_canary_below_the_rollouts_min_device_accuracy_never_switches(
        fleet: Fleet, tiny, golden) -> None:
    """The build recorded none of support:2's golden prompts as right, so the build's own
    on-device minimum is 0 %; the rollout asks for 90 %. The canary's gate holds it to the
    stricter of the two: it measures 0 %, fails, and never serves support:2. (Before, it passed
    its gate, served support:2 through the whole bake, and only the rollout's gate caught it.)"""
    from click.testing import CliRunner

    from controller.cli.main import cli

    wrong = [{"prompt": row["prompt"], "answer": "no such answer"} for row in golden]
    _register(fleet.ctl, fleet.root / "v2", "support", tiny.int4, fleet.profile, wrong, correct=0)
    created = _create(fleet.ctl, no_auto_rollback=True)  # min_device_accuracy 0.9
    done = _until_state(fleet.ctl, created.id, "succeeded", "halted", "rolled_back")
    assert _state(done) == "halted" and done.reason.startswith("wave 1:"), done.reason
    canary = done.devices[0]
    assert device_state_from_proto(canary.state) == "failed", canary.reason
    assert canary.reason.startswith("failed: gate:"), canary.reason
    assert "0/6 golden prompts" in canary.reason and "minimum 90" in canary.reason
    deployment = _device(fleet.ctl, canary.device_name).deployment
    assert (deployment.active_model, deployment.active_release) == (
        "support:1", fleet.first[canary.device_name])
    history = fleet.agents[0].agent.updater.history
    assert fleet.agents[0].agent.settings.name == canary.device_name
    assert not [s for s in history if s.active_model == "support:2"]  # never served

    watched = CliRunner().invoke(cli, ["--config", fleet.ctl.endpoints.config_path, "rollout", "status",
                                       created.id, "--watch", "--json"])
    assert watched.exit_code != 0 and "ended halted" in watched.output
