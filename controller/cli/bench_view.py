"""Benchmarks (admin_pb2.Benchmark) for the CLI: a dict for --json, and table rows for people.
Used by `devices show`/`devices bench` and by `models show`."""

from __future__ import annotations

import json
from typing import Any

from controller.cli.output import when
from protos import admin_pb2

COLUMNS = ["when", "device", "model", "profile", "precision", "load s", "first token p50 ms",
           "latency p50/p95 ms", "decode tok/s", "peak RSS MiB"]


def benchmark(b: admin_pb2.Benchmark) -> dict[str, Any]:
    try:
        report = json.loads(b.report_json) if b.report_json else {}
    except json.JSONDecodeError:
        report = {}
    return {
        "id": b.id, "device_id": b.device_id, "device_name": b.device_name, "model": b.model,
        "version": b.version, "profile": b.profile, "precision": b.precision,
        "variant_sha256": b.variant_sha256, "command_id": b.command_id,
        "created_at": when(b.created_at_ms), "created_at_ms": b.created_at_ms, "report": report,
    }


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def row(view: dict[str, Any]) -> list[str]:
    """One table row of ``benchmark()``'s dict."""
    r = view["report"]
    first = r.get("time_to_first_token_ms") or {}
    latency = r.get("latency_ms") or {}
    peak = r.get("peak_rss_bytes")
    model = f"{view['model']}:{view['version']}" if view["model"] else \
        r.get("variant", {}).get("name", "?")
    return [view["created_at"], view["device_name"] or view["device_id"], model,
            view["profile"] or "-", view["precision"] or "-", _num(r.get("load_time_s"), 3),
            _num(first.get("p50")), f"{_num(latency.get('p50'))}/{_num(latency.get('p95'))}",
            _num(r.get("decode_tokens_per_s")),
            _num(peak / 2**20) if isinstance(peak, int | float) else "-"]
