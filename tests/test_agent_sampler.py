"""agent.telemetry.sampler: catalog names, rates since the last call, failing sources."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from agent.telemetry.catalog import METRICS
from agent.telemetry.sampler import SystemSampler

NetIO = namedtuple("NetIO", "bytes_sent bytes_recv")
Temp = namedtuple("Temp", "label current high critical")
Battery = namedtuple("Battery", "percent secsleft power_plugged")


def _by_name(values: list) -> dict[tuple[str, str], float]:
    return {(v.metric, v.series): v.value for v in values}


def test_every_sampled_metric_is_in_the_catalog_with_series_only_where_it_has_one(
    tmp_path: Path,
) -> None:
    values = SystemSampler(tmp_path).sample()
    assert values
    for v in values:
        assert v.metric in METRICS, v.metric
        assert bool(v.series) == bool(METRICS[v.metric].series), (v.metric, v.series)


def test_core_metrics_are_there_on_this_machine(tmp_path: Path) -> None:
    got = _by_name(SystemSampler(tmp_path).sample())
    for name in ("cpu_percent", "load1", "memory_used_bytes", "memory_available_bytes",
                 "memory_percent", "swap_used_bytes", "disk_used_bytes", "disk_free_bytes",
                 "net_sent_bytes", "net_recv_bytes", "process_rss_bytes"):
        assert (name, "") in got, name
    cores = sorted(int(s) for (m, s) in got if m == "cpu_core_percent")
    assert cores == list(range(len(psutil.cpu_times(percpu=True))))
    assert got["process_rss_bytes", ""] > 0


def test_cpu_percent_is_a_percentage_over_the_interval(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path)
    sum(i * i for i in range(200_000))  # burn a little CPU
    for _ in range(2):
        values = sampler.sample()
        for v in values:
            if v.metric in ("cpu_percent", "cpu_core_percent", "memory_percent"):
                assert 0.0 <= v.value <= 100.0


def test_network_bytes_are_deltas_first_zero_and_never_negative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter([
        {"eth0": NetIO(1000, 5000)},                            # first call: 0
        {"eth0": NetIO(1500, 5600)},                            # +500 / +600
        {"eth0": NetIO(10, 20), "wwan0": NetIO(9999, 9999)},    # eth0 reset, new NIC: 0
        {"eth0": NetIO(40, 70), "wwan0": NetIO(10_000, 10_099)},  # +30+1 / +50+100
        {"wwan0": NetIO(10_001, 10_100)},                       # eth0 gone: +1 / +1
    ])
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic=False: next(readings))
    sampler = SystemSampler(tmp_path)
    got = []
    for _ in range(5):
        values = _by_name(sampler.sample())
        got.append((values["net_sent_bytes", ""], values["net_recv_bytes", ""]))
    assert got == [(0, 0), (500, 600), (0, 0), (31, 150), (1, 1)]


def test_temperatures_and_battery_are_reported_where_they_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {
        "coretemp": [Temp("Package id 0", 51.0, 80.0, 100.0), Temp("Core 0", 49.5, 80.0, 100.0)],
        "acpitz": [Temp("", 27.8, None, None), Temp("", None, None, None)],
        "nvme": [Temp("Sensor", 40.0, None, None), Temp("Sensor", 41.0, None, None)],
    }, raising=False)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: Battery(87.5, 3600, False),
                        raising=False)
    got = _by_name(SystemSampler(tmp_path).sample())
    temps = {s: v for (m, s), v in got.items() if m == "temperature_celsius"}
    assert temps == {"coretemp/Package id 0": 51.0, "coretemp/Core 0": 49.5, "acpitz/0": 27.8,
                     "nvme/Sensor": 40.0, "nvme/Sensor#1": 41.0}
    assert got["battery_percent", ""] == 87.5


def test_no_battery_and_no_sensor_support_leave_those_metrics_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)  # e.g. Windows, macOS
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None, raising=False)
    metrics = {v.metric for v in SystemSampler(tmp_path).sample()}
    assert "temperature_celsius" not in metrics and "battery_percent" not in metrics
    assert "cpu_percent" in metrics


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("swap_memory", {"swap_used_bytes"}),
        ("virtual_memory", {"memory_used_bytes", "memory_available_bytes", "memory_percent"}),
        ("net_io_counters", {"net_sent_bytes", "net_recv_bytes"}),
        ("sensors_temperatures", {"temperature_celsius"}),
        ("sensors_battery", {"battery_percent"}),
    ],
)
def test_a_failing_source_omits_only_its_own_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, missing: set[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise PermissionError(f"{source}: denied")

    baseline = {v.metric for v in SystemSampler(tmp_path).sample()}
    monkeypatch.setattr(psutil, source, broken, raising=False)
    metrics = {v.metric for v in SystemSampler(tmp_path).sample()}
    assert metrics == baseline - missing


def test_cpu_sampling_survives_a_core_going_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = psutil.cpu_times
    sampler = SystemSampler(tmp_path)
    monkeypatch.setattr(psutil, "cpu_times",
                        lambda percpu=False: real(percpu)[:1] if percpu else real())
    cores = [v.series for v in sampler.sample() if v.metric == "cpu_core_percent"]
    assert cores == ["0"]


def test_disk_metrics_follow_a_data_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    got = _by_name(SystemSampler(tmp_path / "later" / "data").sample())
    assert got["disk_free_bytes", ""] > 0
    assert not (tmp_path / "later").exists()
