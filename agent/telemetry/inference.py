"""Serving statistics as telemetry: what the agent's model server did since the last sample.

The server keeps cumulative counters (agent/serve/metrics.py ServeMetrics.stats()); each
sample here is the difference from the previous reading, so ``slmops telemetry query`` shows
requests, tokens/s and latency per device and interval. Requests and latency count the
generation endpoints only (not /metrics scrapes or health checks). Counters that went backwards (the
server was restarted with fresh counters) start a new baseline. With no server running, the
sample has no inference metrics at all.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from protos import common_pb2

log = logging.getLogger(__name__)

# Counters of ServeMetrics.stats() that this module reads.
COUNTERS = ("requests", "errors", "completion_tokens", "decode_seconds", "latency_seconds_sum",
            "latency_seconds_count", "ttft_seconds_sum", "ttft_seconds_count")


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The q-quantile (0..1) of a histogram: ``counts`` per bucket (not cumulative), one more
    than ``bounds`` (the last is +Inf). Linear within a bucket, like Prometheus'; a quantile in
    the +Inf bucket is the highest finite bound. None for an empty histogram."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    for i, count in enumerate(counts):
        if running + count >= rank and count > 0:
            if i >= len(bounds):
                return bounds[-1] if bounds else None
            low = bounds[i - 1] if i > 0 else 0.0
            return low + (bounds[i] - low) * (rank - running) / count
        running += count
    return bounds[-1] if bounds else None


# The endpoints that generate; the server also counts /metrics, /healthz and /v1/models.
GENERATION_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "grpc.Generate"})


def _metrics_of(source: Any) -> Any:
    """The ServeMetrics of a source: itself, or a Server's / RunningServer's (openai_http.py)."""
    for candidate in (source, getattr(source, "metrics", None),
                      getattr(getattr(source, "server", None), "metrics", None)):
        if hasattr(candidate, "latency") and hasattr(candidate, "requests"):
            return candidate
    return None


def _generating(labels: Any) -> bool:
    return dict(labels).get("endpoint") in GENERATION_ENDPOINTS


def read_counters(source: Any) -> tuple[dict[str, float], tuple[float, ...], list[float] | None]:
    """(COUNTERS, latency bucket bounds, latency counts per bucket) of the generation endpoints.
    Reads ServeMetrics' labelled series where it can; with only ``stats()`` its totals (which
    include every endpoint) and no histogram."""
    stats = source.stats()
    out = {k: float(stats.get(k, 0.0)) for k in COUNTERS}
    metrics = _metrics_of(source)
    if metrics is None:
        return out, (), None
    with getattr(metrics, "_lock", None) or contextlib.nullcontext():
        requests = sum(v for k, v in metrics.requests.values.items() if _generating(k))
        errors = sum(v for k, v in metrics.errors.values.items() if _generating(k))
        series = [(list(c), t[0]) for k, (c, t) in metrics.latency.series.items() if _generating(k)]
        bounds = tuple(metrics.latency.buckets)
    counts = [float(sum(column)) for column in zip(*(c for c, _ in series), strict=True)] \
        if series else [0.0] * (len(bounds) + 1)
    out.update(requests=float(requests), errors=float(errors),
               latency_seconds_sum=float(sum(t for _, t in series)),
               latency_seconds_count=float(sum(counts)))
    return out, bounds, counts


def _value(metric: str, value: float) -> common_pb2.MetricValue:
    return common_pb2.MetricValue(metric=metric, value=float(value))


class InferenceSampler:
    """Samples ``source()``: while a model is served, the server's ServeMetrics or anything
    with its ``stats()`` (openai_http's Server or RunningServer); None while nothing is."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self._source = source
        self._previous: tuple[int, dict[str, float], list[float] | None] | None = None

    def sample(self) -> list[common_pb2.MetricValue]:
        metrics = self._source()
        if metrics is None:
            self._previous = None
            return []
        try:
            stats, bounds, counts = read_counters(metrics)
        except Exception:  # a broken stats source (a bug): logged, the system telemetry goes on
            log.exception("inference stats unavailable")
            return []
        previous = self._previous
        self._previous = (id(metrics), stats, counts)
        if previous is None or previous[0] != id(metrics) or any(
                stats[k] < previous[1][k] for k in COUNTERS):
            # A new server (or fresh counters): everything it counted is in this interval.
            before, before_counts = dict.fromkeys(COUNTERS, 0.0), None
        else:
            before, before_counts = previous[1], previous[2]
        d = {k: stats[k] - before[k] for k in COUNTERS}
        out = [_value("inference_requests", d["requests"]),
               _value("inference_errors", d["errors"]),
               _value("inference_completion_tokens", d["completion_tokens"])]
        if d["decode_seconds"] > 0:
            out.append(_value("inference_tokens_per_second",
                              d["completion_tokens"] / d["decode_seconds"]))
        if d["latency_seconds_count"] > 0:
            out.append(_value("inference_latency_ms",
                              d["latency_seconds_sum"] / d["latency_seconds_count"] * 1000))
        if d["ttft_seconds_count"] > 0:
            out.append(_value("inference_ttft_ms",
                              d["ttft_seconds_sum"] / d["ttft_seconds_count"] * 1000))
        if counts is not None:
            base = before_counts if before_counts and len(before_counts) == len(counts) \
                else [0.0] * len(counts)
            interval = [max(0.0, a - b) for a, b in zip(counts, base, strict=True)]
            for metric, q in (("inference_latency_p50_ms", 0.5), ("inference_latency_p95_ms", 0.95)):
                value = histogram_quantile(q, bounds, interval)
                if value is not None and math.isfinite(value):
                    out.append(_value(metric, value * 1000))
        return out
