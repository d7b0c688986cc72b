"""The comparison table of ``slmops models compare A B ...``: one row per evaluation record,
against a baseline (the first record, or the one named; usually the teacher).

A record is {"model": name, "metrics": an evaluation's metrics (harness.evaluate, or a
registered model's), optionally "params", "size_bytes", "kind"}. A row holds parameters, peak
memory, latency p50/p95, throughput, the task metric ("accuracy") and retention: the row's
task metric over the baseline's (for a lower-is-better metric, perplexity, the baseline's over
the row's), so 1.0 keeps everything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.pipeline.evaluate.metrics import METRICS


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def task_metric(records: Sequence[Mapping[str, Any]], metric: str | None = None) -> str:
    """``metric``, or the first metric of the first record's chosen ones that every record has
    (exact_match for records from before metrics were chosen)."""
    if metric is not None:
        if metric not in METRICS:
            raise ValueError(f"metric: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        return metric
    first = records[0].get("metrics") or {} if records else {}
    for name in list(first.get("metrics") or []) + ["exact_match", "rouge_l"]:
        if all(_number((r.get("metrics") or {}).get(name)) is not None for r in records):
            return str(name)
    return "exact_match"


def compare_rows(records: Sequence[Mapping[str, Any]], *, metric: str | None = None,
                 baseline: int = 0) -> list[dict[str, Any]]:
    """One row per record: {"model", "kind", "params", "size_bytes", "peak_memory_bytes",
    "latency_p50_ms", "latency_p95_ms", "tokens_per_s", "metric", "accuracy", "retention",
    "params_ratio", "speedup", "same_data_as_baseline"} (None where a figure is missing)."""
    if not records:
        raise ValueError("no evaluation records to compare")
    if not 0 <= baseline < len(records):
        raise ValueError(f"baseline: {baseline} is not one of the {len(records)} records")
    name = task_metric(records, metric)
    higher = METRICS[name].higher_is_better
    rows = []
    for record in records:
        m = record.get("metrics") or {}
        latency = m.get("latency_ms") or {}
        rows.append({
            "model": record.get("model", "?"), "kind": record.get("kind", ""),
            "params": _number(record.get("params")) or _number(m.get("params")),
            "size_bytes": _number(record.get("size_bytes")) or _number(m.get("size_bytes")),
            "peak_memory_bytes": _number(m.get("peak_memory_bytes")),
            "latency_p50_ms": _number(latency.get("p50")), "latency_p95_ms": _number(latency.get("p95")),
            "tokens_per_s": _number(m.get("tokens_per_s")),
            "metric": name, "accuracy": _number(m.get(name)), "data": m.get("data") or {},
        })
    base = rows[baseline]
    for row in rows:
        a, b = row["accuracy"], base["accuracy"]
        row["retention"] = ((a / b if higher else b / a) if a is not None and b else None)
        row["params_ratio"] = row["params"] / base["params"] if row["params"] and base["params"] else None
        row["speedup"] = (base["latency_p50_ms"] / row["latency_p50_ms"]
                          if row["latency_p50_ms"] and base["latency_p50_ms"] else None)
        row["same_data_as_baseline"] = row["data"] == base["data"]
    return rows
