"""Bucketing and aggregating raw points for telemetry queries, and parsing durations.

Pure functions, plain Python (numpy is not a controller dependency).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from controller.store.base import RawPoint

AGGREGATIONS = ("avg", "min", "max", "p50", "p95", "last")


@dataclass(frozen=True)
class BucketPoint:
    timestamp_ms: int  # the bucket's start: start_ms + k * step_ms
    value: float
    count: int  # raw points in the bucket


@dataclass(frozen=True)
class SeriesResult:
    device_id: str
    metric: str
    series: str
    points: tuple[BucketPoint, ...]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``, interpolating linearly between the closest
    ranks (numpy's default "linear" method)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# Each takes a bucket's values in time order.
_AGG: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda v: math.fsum(v) / len(v),
    "min": min,
    "max": max,
    "p50": lambda v: percentile(v, 50),
    "p95": lambda v: percentile(v, 95),
    "last": lambda v: v[-1],
}


def bucketize(
    points: Iterable[RawPoint], start_ms: int, end_ms: int, step_ms: int, agg: str
) -> list[SeriesResult]:
    """Group points by (device, metric, series) and aggregate each group's points in buckets
    starting at start_ms + k * step_ms (step_ms == 0: one bucket for the whole window).
    Points outside [start_ms, end_ms) are ignored; empty buckets are omitted. Results are
    ordered by device, metric, series and buckets by time."""
    fn = _AGG.get(agg)
    if fn is None:
        raise ValueError(f"{agg!r} is not an aggregation; use one of {', '.join(AGGREGATIONS)}")
    if step_ms < 0:
        raise ValueError(f"step {step_ms} ms is negative; use 0 (one bucket) or more")
    if end_ms < start_ms:
        raise ValueError(f"the window ends ({end_ms}) before it starts ({start_ms})")
    groups: dict[tuple[str, str, str], dict[int, list[tuple[int, float]]]] = {}
    for p in points:
        if not start_ms <= p.timestamp_ms < end_ms:
            continue
        k = (p.timestamp_ms - start_ms) // step_ms if step_ms else 0
        buckets = groups.setdefault((p.device_id, p.metric, p.series), {})
        buckets.setdefault(k, []).append((p.timestamp_ms, p.value))
    results = []
    for (device_id, metric, series), buckets in sorted(groups.items()):
        out = []
        for k in sorted(buckets):
            timed = buckets[k]
            timed.sort(key=lambda tv: tv[0])  # stable: equal times keep their input order
            out.append(BucketPoint(start_ms + k * step_ms, fn([v for _, v in timed]), len(timed)))
        results.append(SeriesResult(device_id, metric, series, tuple(out)))
    return results


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:ms|s|m|h|d))+")


def parse_duration(text: str) -> int:
    """Milliseconds in "500ms", "30s", "10m", "2h", "7d" or a combination like "1h30m"."""
    cleaned = text.strip()
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(
            f"{text!r} is not a duration; use a number with ms, s, m, h or d, e.g. 30s or 10m"
        )
    total = sum(int(n) * _UNITS_MS[unit] for n, unit in _PART.findall(cleaned))
    if total <= 0:
        raise ValueError(f"{text!r} is not a duration longer than zero; use e.g. 30s or 10m")
    return total
