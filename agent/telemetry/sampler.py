"""Sample the system metrics of agent.telemetry.catalog, cheaply and without blocking.

Each source is read on its own: one that fails (or doesn't exist on this OS) just leaves its
metrics out of the sample; one that fails for another reason (a bug) is logged with its
traceback. Rates (CPU use, network bytes) cover the time since the previous ``sample()`` call.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from agent.hardware import existing_ancestor
from protos import common_pb2

log = logging.getLogger(__name__)

MetricValues = list[common_pb2.MetricValue]
# How a source that is denied, missing or unsupported on this OS fails (psutil and the OS).
SOURCE_ERRORS = (OSError, psutil.Error, NotImplementedError)


def _value(metric: str, value: float, series: str = "") -> common_pb2.MetricValue:
    return common_pb2.MetricValue(metric=metric, series=series, value=float(value))


def _busy_percent(before: Any, after: Any) -> float:
    """CPU busy % between two psutil cpu_times() tuples (psutil's own formula)."""
    delta: dict[str, float] = {f: max(0.0, getattr(after, f) - getattr(before, f)) for f in after._fields}
    # On Linux guest time is already counted in user/nice; iowait is idle time.
    total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
    busy = total - delta.get("idle", 0.0) - delta.get("iowait", 0.0)
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, busy / total * 100)), 1)


class SystemSampler:
    """Reads the catalog's system metrics; disk figures are for ``data_dir``'s filesystem."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._process = psutil.Process()
        # CPU baselines are kept here rather than in psutil.cpu_percent(interval=None)'s
        # per-thread module state, so that another caller (or a second sampler) on the agent's
        # thread cannot shorten our interval.
        self._cpu_before: Any = self._try(psutil.cpu_times)
        self._cores_before: Sequence[Any] | None = self._try(lambda: psutil.cpu_times(percpu=True))
        self._net_before: dict[str, tuple[int, int]] | None = None
        self._sources: tuple[Callable[[], MetricValues], ...] = (
            self._cpu, self._cores, self._load, self._memory, self._swap, self._disk,
            self._net, self._temperatures, self._battery, self._rss,
        )

    @staticmethod
    def _try(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except SOURCE_ERRORS as exc:  # a missing source must not stop the agent
            log.debug("sampler: %s", exc)
            return None

    def sample(self) -> MetricValues:
        """The current values; rates cover the time since the previous call."""
        out: MetricValues = []
        for source in self._sources:
            try:
                out.extend(source())
            except SOURCE_ERRORS as exc:  # omit this source's metrics, keep the rest
                log.debug("sampler: %s failed: %s", source.__name__, exc)
            except Exception:  # a bug in one source: logged with its traceback, the rest go on
                log.exception("sampler: %s failed", source.__name__)
        return out

    def _cpu(self) -> MetricValues:
        now = psutil.cpu_times()
        before, self._cpu_before = self._cpu_before, now
        return [_value("cpu_percent", _busy_percent(before or now, now))]

    def _cores(self) -> MetricValues:
        now = psutil.cpu_times(percpu=True)
        before, self._cores_before = self._cores_before, now
        if before is None or len(before) != len(now):  # first read, or a core went on/offline
            before = now
        return [_value("cpu_core_percent", _busy_percent(b, a), str(i))
                for i, (b, a) in enumerate(zip(before, now, strict=True))]

    def _load(self) -> MetricValues:
        # os.getloadavg, not psutil's: on Windows psutil emulates it with a background thread.
        getloadavg = getattr(os, "getloadavg", None)  # absent on Windows
        return [] if getloadavg is None else [_value("load1", getloadavg()[0])]

    def _memory(self) -> MetricValues:
        vm = psutil.virtual_memory()
        return [
            _value("memory_used_bytes", vm.total - vm.available),
            _value("memory_available_bytes", vm.available),
            _value("memory_percent", vm.percent),
        ]

    def _swap(self) -> MetricValues:
        return [_value("swap_used_bytes", psutil.swap_memory().used)]

    def _disk(self) -> MetricValues:
        usage = shutil.disk_usage(existing_ancestor(self._data_dir))
        return [_value("disk_used_bytes", usage.used), _value("disk_free_bytes", usage.free)]

    def _net(self) -> MetricValues:
        """Bytes since the last call, summed per interface: a NIC that appears or whose
        counter went backwards (reset, wrap) adds 0 this time, never a negative number."""
        now = {nic: (c.bytes_sent, c.bytes_recv)
               for nic, c in psutil.net_io_counters(pernic=True).items()}
        before, self._net_before = self._net_before, now
        sent = recv = 0
        for nic, (s1, r1) in now.items():
            s0, r0 = (before or {}).get(nic, (s1, r1))
            sent += max(0, s1 - s0)
            recv += max(0, r1 - r0)
        return [_value("net_sent_bytes", sent), _value("net_recv_bytes", recv)]

    def _temperatures(self) -> MetricValues:
        read = getattr(psutil, "sensors_temperatures", None)
        out: MetricValues = []
        seen: set[str] = set()
        for chip, entries in (read() if read else {}).items():
            for i, entry in enumerate(entries):
                if entry.current is None:
                    continue
                series = f"{chip}/{entry.label or i}"
                if series in seen:  # two sensors of one chip with the same label
                    series = f"{series}#{i}"
                seen.add(series)
                out.append(_value("temperature_celsius", entry.current, series))
        return out

    def _battery(self) -> MetricValues:
        read = getattr(psutil, "sensors_battery", None)
        battery = read() if read else None
        return [] if battery is None else [_value("battery_percent", battery.percent)]

    def _rss(self) -> MetricValues:
        return [_value("process_rss_bytes", self._process.memory_info().rss)]
