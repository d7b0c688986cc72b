"""The metrics an agent reports: the one list both sides agree on.

The controller refuses a query for a name that is not here (INVALID_ARGUMENT, with the list),
and drops values with unknown names from an agent (and counts them), so a typo can't grow a
new series. A metric with ``series`` set has one series per core, sensor, battery, ...
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    help: str
    series: str = ""  # what the series dimension means ("core", "sensor"), "" if none


_SPECS = (
    MetricSpec("cpu_percent", "percent", "CPU use over the last interval, all cores"),
    MetricSpec("cpu_core_percent", "percent", "CPU use over the last interval, per core", "core"),
    MetricSpec("load1", "tasks", "1-minute load average"),
    MetricSpec("memory_used_bytes", "bytes", "memory in use (total minus available)"),
    MetricSpec("memory_available_bytes", "bytes", "memory available to new processes"),
    MetricSpec("memory_percent", "percent", "memory in use"),
    MetricSpec("swap_used_bytes", "bytes", "swap in use"),
    MetricSpec("disk_used_bytes", "bytes", "used bytes on the data dir's filesystem"),
    MetricSpec("disk_free_bytes", "bytes", "free bytes on the data dir's filesystem"),
    MetricSpec("net_sent_bytes", "bytes", "bytes sent over all interfaces since the last sample"),
    MetricSpec("net_recv_bytes", "bytes", "bytes received over all interfaces since the last sample"),
    MetricSpec("temperature_celsius", "celsius", "temperature per sensor, where the OS has it", "sensor"),
    MetricSpec("battery_percent", "percent", "battery charge, where there is a battery"),
    MetricSpec("process_rss_bytes", "bytes", "resident memory of the agent process"),
    MetricSpec("spool_pending", "samples", "samples in the agent's spool not yet acknowledged"),
    MetricSpec("spool_dropped_total", "samples", "samples dropped because the spool was full"),
    # Serving (agent/telemetry/inference.py), over the interval since the previous sample;
    # present while the agent serves a model. The rates and latencies only when it had requests.
    MetricSpec("inference_requests", "requests", "inference requests finished in the interval"),
    MetricSpec("inference_errors", "requests", "inference requests answered with an error"),
    MetricSpec("inference_completion_tokens", "tokens", "tokens generated in the interval"),
    MetricSpec("inference_tokens_per_second", "tokens/s",
               "decode speed: tokens generated per second of generation after the first token"),
    MetricSpec("inference_latency_ms", "ms", "mean request latency in the interval"),
    MetricSpec("inference_latency_p50_ms", "ms",
               "median request latency in the interval (from the latency histogram)"),
    MetricSpec("inference_latency_p95_ms", "ms",
               "95th percentile request latency in the interval (from the latency histogram)"),
    MetricSpec("inference_ttft_ms", "ms", "mean time to first token in the interval"),
)

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def is_known(name: str) -> bool:
    return name in METRICS
