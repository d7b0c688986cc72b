"""`slmops devices bench` / `set-profile` end to end: an in-process controller and an in-process
agent daemon over real mTLS; the agent benchmarks a real tiny variant in a child process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import variants
from click.testing import CliRunner
from inproc import RunningAgent, RunningController

from agent.serve.metrics import ServeMetrics
from controller.build.profiles import builtin_profiles
from controller.cli.main import cli
from controller.store import open_store, sqlite_url
from protos import admin_pb2, fleet_pb2


@pytest.fixture(scope="session")
def labelled(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> Path:
    variant = variants.copy_variant(tiny.fp32, tmp_path_factory.mktemp("labelled") / "v")
    (variant / "slmops-variant.json").write_text(json.dumps(
        {"model": "support:3", "profile": "cpu-fp32", "precision": "fp32"}))
    return variant


@pytest.fixture
def agents(ctl: RunningController, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    started: list[RunningAgent] = []

    def start(name: str, model: Path | None = None) -> RunningAgent:
        agent = RunningAgent(ctl, tmp_path / name, name, model=model)
        started.append(agent)
        _wait_for(lambda: _status(ctl, name) == "online", f"{name} to come online")
        return agent

    yield start
    for agent in started:
        agent.stop()


def _status(ctl: RunningController, name: str) -> str:
    try:
        return ctl.admin.GetDevice(admin_pb2.GetDeviceRequest(id=name), timeout=5).device.status
    except grpc.RpcError:
        return "unknown"


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _cli(ctl: RunningController, *args: str):
    return CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, *args], obj={})


def _error(result) -> dict:
    assert result.exit_code != 0, result.output
    return json.loads(result.output)["error"]


def test_devices_bench_stores_the_report_with_the_device_and_the_model(
        ctl: RunningController, agents, labelled: Path) -> None:
    agents("edge-1", labelled)
    result = _cli(ctl, "devices", "bench", "edge-1", "--prompts", "3", "--max-tokens", "8", "--json")
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert (bench["device_name"], bench["model"], bench["version"], bench["profile"]) == (
        "edge-1", "support", "3", "cpu-fp32")
    report = bench["report"]
    assert report["settings"]["n"] == 3 and report["settings"]["max_tokens"] == 8
    assert report["decode_tokens_per_s"] > 0 and report["peak_rss_bytes"] > 0
    assert bench["variant_sha256"] == report["variant"]["variant_sha256"]

    shown = _cli(ctl, "devices", "show", "edge-1", "--json")
    assert json.loads(shown.output)["benchmarks"][0]["id"] == bench["id"]
    table = _cli(ctl, "devices", "show", "edge-1")
    assert "support:3" in table.output
    by_model = ctl.admin.ListBenchmarks(admin_pb2.ListBenchmarksRequest(model="support:3"), timeout=5)
    assert [b.id for b in by_model.benchmarks] == [bench["id"]]
    assert ctl.admin.ListBenchmarks(admin_pb2.ListBenchmarksRequest(model="support:4"),
                                    timeout=5).benchmarks == []


def test_bench_on_a_device_without_an_active_model_says_so(ctl: RunningController, agents) -> None:
    agents("edge-1")
    error = _error(_cli(ctl, "devices", "bench", "edge-1", "--json"))
    assert error["code"] == "failed_precondition"
    assert "no active model" in error["message"] and "--model" in error["message"]


def test_bench_on_an_offline_device_fails_at_once(ctl: RunningController) -> None:
    ctl.enroll("edge-1")  # enrolled, never connected
    error = _error(_cli(ctl, "devices", "bench", "edge-1", "--json"))
    assert error["code"] == "failed_precondition"
    assert "offline" in error["message"]


def test_bench_waits_no_longer_than_its_timeout(ctl: RunningController) -> None:
    stream = ctl.stream(ctl.enroll("edge-1"))  # a device that never answers commands
    stream.hello()
    error = _error(_cli(ctl, "devices", "bench", "edge-1", "--timeout", "1s", "--json"))
    assert error["code"] == "deadline_exceeded"
    assert "--timeout" in error["message"]
    command = stream.recv_kind("command")
    assert command.kind == "bench"


def test_device_that_disconnects_mid_bench_fails_the_wait(ctl: RunningController) -> None:
    stream = ctl.stream(ctl.enroll("edge-1"))
    stream.hello()
    call = ctl.admin.DeviceBench.future(admin_pb2.DeviceBenchRequest(id="edge-1"), timeout=60)
    stream.recv_kind("command")
    stream.close()
    with pytest.raises(grpc.RpcError) as info:
        call.result()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "disconnected" in info.value.details()


def test_detached_bench_returns_at_once_and_the_report_is_stored_later(
        ctl: RunningController) -> None:
    identity = ctl.enroll("edge-1")
    stream = ctl.stream(identity)
    stream.hello()
    response = ctl.admin.DeviceBench(admin_pb2.DeviceBenchRequest(id="edge-1", detach=True,
                                                                  prompts=2), timeout=10)
    command = stream.recv_kind("command")
    assert command.id == response.command_id and json.loads(command.args_json) == {"prompts": 2}
    stream.send(fleet_pb2.ConnectRequest(benchmark=fleet_pb2.BenchmarkReport(
        command_id=command.id, model="m", version="1", report_json='{"decode_tokens_per_s": 5}')))
    stream.send(fleet_pb2.ConnectRequest(command_result=fleet_pb2.CommandResult(id=command.id,
                                                                                ok=True)))
    _wait_for(lambda: ctl.store.list_benchmarks(command_id=command.id), "the report")
    [stored] = ctl.store.list_benchmarks(device_id=identity.device_id)
    assert stored.report == {"decode_tokens_per_s": 5}


@pytest.mark.parametrize(("report", "field"), [
    (fleet_pb2.BenchmarkReport(report_json="[1, 2]"), "benchmark.report_json"),
    (fleet_pb2.BenchmarkReport(report_json="{"), "benchmark.report_json"),
    (fleet_pb2.BenchmarkReport(model="m" * 300, report_json="{}"), "benchmark.model"),
])
def test_bad_benchmark_report_is_refused_naming_the_field(
        ctl: RunningController, report: fleet_pb2.BenchmarkReport, field: str) -> None:
    stream = ctl.stream(ctl.enroll("edge-1"))
    stream.hello()
    stream.send(fleet_pb2.ConnectRequest(benchmark=report))
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_kind("never")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)


def test_set_profile_overrides_the_matched_profile_until_cleared(ctl: RunningController) -> None:
    ctl.enroll("edge-1")
    matched = json.loads(_cli(ctl, "devices", "show", "edge-1", "--json").output)["profile"]
    other = next(p for p in builtin_profiles().names if p != matched)
    result = _cli(ctl, "devices", "set-profile", "edge-1", other, "--json")
    assert result.exit_code == 0, result.output
    device = json.loads(result.output)
    assert (device["profile"], device["matched_profile"], device["profile_override"]) == (
        other, matched, other)
    [listed] = json.loads(_cli(ctl, "devices", "list", "--json").output)["devices"]
    assert listed["profile"] == other and listed["matched_profile"] == matched
    assert "override" in _cli(ctl, "devices", "show", "edge-1").output
    cleared = json.loads(_cli(ctl, "devices", "set-profile", "edge-1", "--clear", "--json").output)
    assert (cleared["profile"], cleared["profile_override"]) == (matched, "")


def test_set_profile_refuses_an_unknown_profile_listing_the_known_ones(
        ctl: RunningController) -> None:
    ctl.enroll("edge-1")
    error = _error(_cli(ctl, "devices", "set-profile", "edge-1", "gpu-quantum", "--json"))
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("profile: 'gpu-quantum'")
    assert all(name in error["message"] for name in builtin_profiles().names)
    assert _error(_cli(ctl, "devices", "set-profile", "edge-1", "--json"))["code"] == \
        "invalid_argument"


def test_inference_stats_of_a_serving_agent_reach_telemetry_query(
        ctl: RunningController, agents) -> None:
    agent = agents("edge-1")
    metrics = ServeMetrics()
    for _ in range(3):
        metrics.request("grpc.Generate", 200, 0.05)
        metrics.generation(12, 6, 0.01, 0.04, cancelled=False)
    agent.agent.serve_metrics = metrics

    def served() -> list:
        result = _cli(ctl, "telemetry", "query", "--metric", "inference_requests", "--device",
                      "edge-1", "--agg", "max", "--json")
        return [p for s in json.loads(result.output)["series"] for p in s["points"]]

    _wait_for(lambda: any(p["value"] == 3 for p in served()), "inference_requests in telemetry")


def test_old_database_gains_the_profile_override_column(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fleet.db")
    open_store(url).close()
    import sqlite3

    with sqlite3.connect(tmp_path / "fleet.db") as db:  # as a release before the column made it
        db.execute("ALTER TABLE devices DROP COLUMN profile_override")
    store = open_store(url)
    try:
        assert store.list_devices() == []
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "fleet.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(devices)")]
    assert "profile_override" in columns
