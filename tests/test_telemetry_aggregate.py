"""Bucketing, aggregation and duration parsing for telemetry queries."""

from __future__ import annotations

import pytest

from controller.store.base import RawPoint
from controller.telemetry.aggregate import (
    AGGREGATIONS,
    BucketPoint,
    SeriesResult,
    bucketize,
    parse_duration,
    percentile,
)


def _points(device: str, series: str, *ts_values: tuple[int, float]) -> list[RawPoint]:
    return [RawPoint(device, "cpu_core_percent", series, t, v) for t, v in ts_values]


def test_buckets_align_at_start_and_empty_ones_are_omitted() -> None:
    pts = _points("d-1", "0", (1000, 1.0), (1500, 3.0), (3100, 5.0))
    got = bucketize(pts, start_ms=1000, end_ms=4000, step_ms=1000, agg="avg")
    assert got == [SeriesResult("d-1", "cpu_core_percent", "0", (
        BucketPoint(1000, 2.0, 2), BucketPoint(3000, 5.0, 1),
    ))]


def test_points_outside_the_window_are_ignored() -> None:
    pts = _points("d-1", "", (999, 100.0), (1000, 1.0), (2000, 100.0))
    got = bucketize(pts, 1000, 2000, 500, "max")
    assert got[0].points == (BucketPoint(1000, 1.0, 1),)


def test_zero_step_is_one_bucket_for_the_window() -> None:
    pts = _points("d-1", "", (1000, 1.0), (5000, 2.0), (9000, 6.0))
    got = bucketize(pts, 0, 10_000, 0, "avg")
    assert got[0].points == (BucketPoint(0, 3.0, 3),)


def test_groups_are_split_by_device_and_series_and_sorted() -> None:
    pts = _points("d-2", "0", (0, 1.0)) + _points("d-1", "1", (0, 2.0)) + _points(
        "d-1", "0", (0, 3.0)
    )
    got = bucketize(pts, 0, 1000, 1000, "min")
    assert [(r.device_id, r.series, r.points[0].value) for r in got] == [
        ("d-1", "0", 3.0), ("d-1", "1", 2.0), ("d-2", "0", 1.0),
    ]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("avg", 2.5), ("min", 1.0), ("max", 4.0), ("p50", 2.5), ("p95", 3.85), ("last", 2.0)],
)
def test_each_aggregation(agg: str, expected: float) -> None:
    pts = _points("d-1", "", (10, 4.0), (0, 1.0), (30, 2.0), (20, 3.0))
    got = bucketize(pts, 0, 100, 0, agg)
    assert got[0].points[0].value == pytest.approx(expected)
    assert got[0].points[0].count == 4


def test_every_listed_aggregation_is_accepted() -> None:
    for agg in AGGREGATIONS:
        assert bucketize(_points("d-1", "", (0, 1.0)), 0, 10, 0, agg)[0].points[0].value == 1.0


def test_p95_interpolates() -> None:
    values = [float(v) for v in range(1, 11)]  # rank 0.95 * 9 = 8.55 -> 9 + 0.55 * (10 - 9)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile([7.0], 95) == 7.0
    assert percentile([10.0, 0.0], 50) == 5.0


def test_unknown_aggregation_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'median' is not an aggregation; use one of avg, min"):
        bucketize([], 0, 10, 0, "median")


def test_no_points_give_no_series() -> None:
    assert bucketize([], 0, 10, 1, "avg") == []


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500), ("30s", 30_000), ("10m", 600_000), ("2h", 7_200_000),
        ("7d", 604_800_000), ("1h30m", 5_400_000), ("1m500ms", 60_500), (" 5s ", 5000),
    ],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    "text", ["10x", "", "10", "s", "-5s", "1.5h", "0s", "0m0s", "10 m", "10M", "h1"]
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_message_says_what_to_write() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration("10x")
    assert str(caught.value) == (
        "'10x' is not a duration; use a number with ms, s, m, h or d, e.g. 30s or 10m"
    )
