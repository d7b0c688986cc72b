"""Planning a rollout: waves from counts and cumulative percentages, devices with no variant for
their profile reported as skipped, a second rollout over the same devices refused naming the
conflict, and bad requests refused naming the field. A real in-process controller; devices are
real enrolled streams (tests/inproc.py)."""

from __future__ import annotations

import grpc
import pytest
from inproc import RunningController
from test_delivery_controller import Device, _register, _variant_dir, _variant_entry

from controller.rollouts.plan import allowed_failures, wave_sizes
from controller.rollouts.states import device_state_from_proto
from controller.validation import Invalid
from protos import admin_pb2, rollout_pb2


@pytest.mark.parametrize(("spec", "n", "sizes"), [
    ("1,25%,100%", 10, (1, 2, 7)),
    ("1,25%,100%", 3, (1, 2)),      # 25% of 3 rounds up to 1 device: that wave adds none
    ("1,50%,100%", 3, (1, 1, 1)),
    ("2,3", 5, (2, 3)),
    ("100%", 4, (4,)),
    ("1,100%", 1, (1,)),
])
def test_waves_are_counts_or_cumulative_percentages(spec: str, n: int, sizes: tuple[int, ...]) -> None:
    assert wave_sizes(spec, n) == sizes


@pytest.mark.parametrize(("spec", "n", "message"), [
    ("1,25%", 10, "covers 3 of the 10 devices"),
    ("1,x", 10, "'x' is neither"),
    ("0,100%", 10, "at least one device"),
    ("1,150%", 10, "not a percentage"),
    ("", 10, "give the waves"),
])
def test_bad_waves_are_refused_naming_the_field(spec: str, n: int, message: str) -> None:
    with pytest.raises(Invalid, match="^waves: ") as e:
        wave_sizes(spec, n)
    assert message in str(e.value)


def test_max_failure_is_a_count_or_a_share_of_started_devices() -> None:
    assert [allowed_failures("0", 10), allowed_failures("2", 10), allowed_failures("10%", 25)] == [0, 2, 2]
    with pytest.raises(Invalid, match="^max_failure: "):
        allowed_failures("some", 3)


@pytest.fixture
def lab(ctl: RunningController, tmp_path) -> tuple[str, list[Device]]:
    """support:1 with a variant for the stream devices' profile only; four lab devices, the last
    of which is overridden to an ARM profile that has no variant."""
    variant = _variant_dir(tmp_path / "int8", b"weights" * 1000)
    ref = _register(ctl, tmp_path, "support", [_variant_entry(variant)])
    devices = []
    for name in ("lab-1", "lab-2", "lab-3", "lab-4"):
        devices.append(Device(ctl, name))
        ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(id=name, set={"site": "lab"}),
                                     timeout=10)
    ctl.admin.SetDeviceProfile(admin_pb2.SetDeviceProfileRequest(id="lab-4", profile="cpu-arm64-int8"),
                               timeout=10)
    return ref, devices


def _create(ctl: RunningController, **fields) -> rollout_pb2.Rollout:
    request = rollout_pb2.CreateRolloutRequest(**{"model": "support:1", "selector": {"site": "lab"},
                                                  "waves": "1,50%,100%", "bake_ms": 60_000, **fields})
    return ctl.admin.CreateRollout(request, timeout=30).rollout


def test_each_device_is_planned_for_its_profile_or_skipped_with_the_reason(
        ctl: RunningController, lab) -> None:
    rollout = _create(ctl)
    assert [w.size for w in rollout.waves] == [1, 1, 1] and rollout.model == "support:1"
    planned = {d.device_name: d for d in rollout.devices}
    assert [planned[n].wave for n in ("lab-1", "lab-2", "lab-3")] == [0, 1, 2]
    skipped = planned["lab-4"]
    assert (skipped.wave, device_state_from_proto(skipped.state), skipped.profile) == (
        -1, "skipped", "cpu-arm64-int8")
    assert "cpu-arm64-int8" in skipped.reason
    assert [e.action for e in rollout.events] == ["created"] and rollout.events[0].actor == "admin"


def test_a_second_rollout_over_the_same_devices_is_refused_naming_the_conflict(
        ctl: RunningController, lab) -> None:
    first = _create(ctl)
    with pytest.raises(grpc.RpcError) as e:
        _create(ctl)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert first.id in e.value.details() and "lab-1" in e.value.details()
    ctl.admin.AbortRollout(rollout_pb2.RolloutActionRequest(id=first.id), timeout=10)
    assert _create(ctl).id != first.id  # an aborted rollout holds no device


@pytest.mark.parametrize(("fields", "field"), [
    ({"selector": {}}, "selector: "),
    ({"waves": "1,abc"}, "waves: "),
    ({"offline_policy": "maybe"}, "offline_policy: "),
    ({"gates": rollout_pb2.RolloutGates(min_device_accuracy=2)}, "gates.min_device_accuracy: "),
    ({"max_failure": "lots"}, "max_failure: "),
    ({"model": "nosuch:1"}, ""),
])
def test_bad_requests_are_refused_naming_the_field(ctl: RunningController, lab, fields: dict,
                                                   field: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _create(ctl, **fields)
    assert e.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert e.value.details().startswith(field), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        ctl.admin.GetRollout(rollout_pb2.GetRolloutRequest(id="../x"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("id: ")


def test_the_cli_creates_lists_shows_and_pauses_a_rollout_with_json(ctl: RunningController, lab) -> None:
    import json

    from click.testing import CliRunner

    from controller.cli.main import cli

    def run(*args: str) -> tuple[int, dict]:
        result = CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, "rollout", *args, "--json"])
        return result.exit_code, json.loads(result.output)

    code, created = run("create", "support:1", "--selector", "site=lab", "--waves", "1,50%,100%",
                        "--bake", "1m", "--min-device-accuracy", "0.9", "--max-p95-ms", "200")
    assert code == 0, created
    assert created["gates"] == {"min_device_accuracy": 0.9, "max_p95_ms": 200.0}
    assert [d["device_name"] for d in created["devices"]][:3] == ["lab-1", "lab-2", "lab-3"]
    code, listed = run("list")
    assert code == 0 and [r["id"] for r in listed["rollouts"]] == [created["id"]]
    code, paused = run("pause", created["id"])
    assert code == 0 and paused["state"] == "paused"
    code, shown = run("status", created["id"])
    assert code == 0 and shown["state"] == "paused" and shown["events"][-1]["action"] == "paused"
    code, error = run("resume", "r-000000000000")
    assert code != 0 and error["error"]["code"] == "not_found"
    code, error = run("create", "support:1", "--selector", "site=lab")
    assert code != 0 and error["error"]["code"] == "failed_precondition"
    assert created["id"] in error["error"]["message"]


def test_the_waves_per_minute_cap_holds_across_a_controller_restart(ctl: RunningController, lab) -> None:
    """A restarted controller's engine starts with no memory of its own; the last wave's start
    comes from the audit trail, so the cap is not reset by a restart."""
    from test_delivery_e2e import _wait_for

    from controller.rollouts.waves import Limits, WaveStepper

    rollout = _create(ctl)

    def started() -> list[int]:
        got = ctl.admin.GetRollout(rollout_pb2.GetRolloutRequest(id=rollout.id), timeout=10).rollout
        return [e.at_ms for e in got.events if e.action == "wave_started"]

    _wait_for(lambda: bool(started()), "the canary wave to start")
    fresh = WaveStepper(ctl.store, ctl.controller.releases, lambda _: True, Limits(waves_per_minute=1))
    assert fresh._last_started(rollout.id) == started()[-1]


@pytest.mark.parametrize("action", ["rollback", "abort"])
def test_status_watch_exits_non_zero_when_the_rollout_ends_without_succeeding(
        ctl: RunningController, lab, action: str) -> None:
    """CI waits on `slmops rollout status ID --watch`: a rollout that ends rolled_back, halted
    or aborted must fail the job."""
    import json

    from click.testing import CliRunner

    from controller.cli.main import cli

    def run(*args: str):
        return CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, "rollout", *args])

    rollout = _create(ctl)
    ended = run(action, rollout.id, "--json")
    assert ended.exit_code == 0, ended.output
    state = json.loads(ended.output)["state"]
    assert state in ("rolled_back", "aborted")

    watched = run("status", rollout.id, "--watch", "--json")
    assert watched.exit_code != 0, watched.output
    lines = [json.loads(line) for line in watched.output.splitlines()]
    assert lines[0]["state"] == state  # the rollout as it ended, then the error
    assert lines[-1]["error"]["message"].startswith(f"rollout {rollout.id} ended {state}")

    human = run("status", rollout.id, "--watch")
    assert human.exit_code != 0
    assert f"ended {state}" in human.output + human.stderr
