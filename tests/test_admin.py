"""The operator's API and CLI against a real controller: validation, queries, health."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inproc import RunningController, sample

from controller.cli.main import cli
from controller.client_config import ClientConfig, ConfigError
from protos import admin_pb2, fleet_pb2


def _invalid(call, request) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details()


def test_ten_megabyte_label_is_refused_naming_the_field(ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    details = _invalid(ctl.admin.UpdateDeviceLabels, admin_pb2.UpdateDeviceLabelsRequest(
        id=identity.device_id, set={"room": "x" * 10_000_000}))
    assert "set[room]" in details
    device = ctl.admin.GetDevice(admin_pb2.GetDeviceRequest(id="edge-1"), timeout=5).device
    assert dict(device.labels) == {}


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"metric": "cpu_percnt", "since_ms": 60_000}, "metric"),
    ({"metric": "cpu_percent", "since_ms": 60_000, "step_ms": -1}, "step_ms"),
    ({"metric": "cpu_percent", "since_ms": -5}, "since_ms"),
    ({"metric": "cpu_percent", "since_ms": 60_000, "agg": "median"}, "agg"),
    ({"metric": "cpu_percent", "since_ms": 86_400_000 * 30, "step_ms": 1}, "step_ms"),
    ({"metric": "cpu_percent", "since_ms": 60_000, "selector": {"bad key!": "x"}}, "selector"),
], ids=["unknown-metric", "negative-step", "negative-since", "bad-agg", "too-many-buckets",
        "bad-selector"])
def test_bad_queries_are_invalid_argument_naming_the_field(
    ctl: RunningController, request_fields: dict, field: str
) -> None:
    details = _invalid(ctl.admin.QueryTelemetry, admin_pb2.QueryTelemetryRequest(**request_fields))
    assert details.startswith(field)


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"ttl_ms": -1}, "ttl_ms"),
    ({"ttl_ms": 3_600_000, "max_uses": -3}, "max_uses"),
    ({"ttl_ms": 3_600_000, "labels": {"": "x"}}, "labels"),
])
def test_bad_token_requests_name_the_field(ctl: RunningController, request_fields, field) -> None:
    details = _invalid(ctl.admin.CreateToken, admin_pb2.CreateTokenRequest(**request_fields))
    assert details.startswith(field)


def test_query_aggregates_each_step(ctl: RunningController) -> None:
    a, b = ctl.enroll("edge-a", room="a"), ctl.enroll("edge-b", room="a")
    start = (int(time.time() * 1000) // 10_000 - 3) * 10_000  # aligned, 30 s ago
    for identity, offset in ((a, 0.0), (b, 100.0)):
        stream = ctl.stream(identity)
        stream.hello()
        samples = [sample(i + 1, start + i * 2_000, cpu_percent=offset + i) for i in range(10)]
        stream.send(fleet_pb2.ConnectRequest(telemetry=fleet_pb2.TelemetryBatch(
            batch_id=1, samples=samples)))
        assert stream.recv_kind("telemetry_ack").stored == 10
    until = start + 20_000
    response = ctl.admin.QueryTelemetry(admin_pb2.QueryTelemetryRequest(
        metric="cpu_percent", selector={"room": "a"}, since_ms=20_000, until_ms=until,
        step_ms=10_000, agg="avg"), timeout=5)
    by_name = {s.device_name: [(p.timestamp_ms - start, p.value, p.count) for p in s.points]
               for s in response.series}
    # values 0..4 fall in the first 10 s bucket, 5..9 in the second
    assert by_name == {"edge-a": [(0, 2.0, 5), (10_000, 7.0, 5)],
                       "edge-b": [(0, 102.0, 5), (10_000, 107.0, 5)]}
    maxima = ctl.admin.QueryTelemetry(admin_pb2.QueryTelemetryRequest(
        metric="cpu_percent", device_id="edge-b", since_ms=20_000, until_ms=until, agg="max"),
        timeout=5)
    assert [p.value for s in maxima.series for p in s.points] == [109.0]


def test_health_is_served_on_both_ports(ctl: RunningController) -> None:
    plain = health_pb2_grpc.HealthStub(grpc.insecure_channel(ctl.endpoints.enroll))
    secure = health_pb2_grpc.HealthStub(ctl.channel(ctl.config.admin_cert_pem,
                                                    ctl.config.admin_key_pem))
    for stub, service in ((plain, "slmops.v1.EnrollmentService"), (secure, "slmops.v1.FleetService")):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def _cli(ctl: RunningController, *args: str):
    return CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, *args], obj={})


def test_cli_lists_devices_as_json_and_as_a_table(ctl: RunningController) -> None:
    ctl.enroll("edge-1", room="a")
    result = _cli(ctl, "devices", "list", "--json")
    assert result.exit_code == 0, result.output
    [device] = json.loads(result.output)["devices"]
    assert {"id", "name", "status", "labels", "hardware", "profile", "last_seen"} <= set(device)
    assert device["labels"] == {"room": "a"}
    table = _cli(ctl, "devices", "list")
    assert "edge-1" in table.output


def test_cli_label_set_and_remove(ctl: RunningController) -> None:
    ctl.enroll("edge-1", room="a", site="lab")
    result = _cli(ctl, "devices", "label", "edge-1", "room=b", "site-", "--json")
    assert json.loads(result.output)["labels"] == {"room": "b"}


@pytest.mark.parametrize(("args", "flag"), [
    (["telemetry", "query", "--metric", "cpu_percent", "--since", "ten minutes"], "--since"),
    (["telemetry", "query", "--metric", "cpu_percent", "--step", "-5s"], "--step"),
    (["token", "create", "--ttl", "soon"], "--ttl"),
    (["token", "create", "--label", "novalue"], "--label"),
    (["devices", "label", "edge-1", "room"], "room"),
])
def test_cli_bad_flags_fail_with_a_message_naming_them(ctl: RunningController, args, flag) -> None:
    result = _cli(ctl, *args, "--json")
    assert result.exit_code == 2
    error = json.loads(result.output)["error"]
    assert flag in error["message"]


def test_cli_without_a_config_says_how_to_get_one(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "nope.json"), "devices", "list"],
                                obj={})
    assert result.exit_code == 2
    assert "slmops controller start" in result.output


def test_cli_unknown_device_is_not_found(ctl: RunningController) -> None:
    result = _cli(ctl, "devices", "show", "ghost", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "not_found"


def test_message_over_the_transport_limit_is_refused_and_the_server_goes_on(ctl) -> None:
    with pytest.raises(grpc.RpcError) as info:
        ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(
            id="edge-1", set={"room": "x" * 20_000_000}), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ctl.admin.ListDevices(admin_pb2.ListDevicesRequest(), timeout=5).devices == []


@pytest.mark.parametrize("text, says", [
    ("[]", "not a JSON object"),
    ("{", "can't read the client config"),
    ('{"controller": "127.0.0.1:1"}', "missing or not text"),
])
def test_a_broken_client_config_is_named_not_a_traceback(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "client.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=says) as caught:
        ClientConfig.load(path)
    assert str(path) in str(caught.value)
