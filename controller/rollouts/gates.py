"""The rollout's health gates, judged on what the devices themselves report after the bake.

Each gate is judged per device, with the figure it was judged on, so a halted rollout can say
which gate failed on which devices and by how much:

- ``min_device_accuracy``: the on-device gate's accuracy on the golden prompts (the deployment
  report's ``detail``);
- ``max_p95_ms``: the 95th percentile of the device's serving latency over the bake window
  (telemetry ``inference_latency_p95_ms``, one value per sample interval); without serving
  traffic in the window, the on-device gate's p95;
- ``max_error_rate``: serving errors / requests over the bake window (telemetry);
- ``max_memory_bytes``: the memory the on-device gate measured for the new model.

A figure that can't be had (no requests in the window) is reported, and the gate is not failed
for it: a rollout halts on evidence, not on silence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller.store import FleetStore
from controller.store.base import DeviceRecord


def _detail(device: DeviceRecord) -> dict[str, Any]:
    try:
        detail = json.loads(device.deployment.detail_json or "{}")
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def figures(store: FleetStore, device: DeviceRecord, start_ms: int, end_ms: int) -> dict[str, Any]:
    """The device's figures for the gates: accuracy, p95_ms (and where it came from),
    error_rate, requests, memory_bytes; None where there is nothing to go on."""
    detail = _detail(device)
    out: dict[str, Any] = {"accuracy": _number(detail.get("accuracy")),
                           "memory_bytes": _number(detail.get("memory_bytes"))}
    window = (start_ms, max(end_ms, start_ms + 1))
    p95s = [p.value for p in store.query_points([device.id], "inference_latency_p95_ms", *window)]
    requests = sum(p.value for p in store.query_points([device.id], "inference_requests", *window))
    errors = sum(p.value for p in store.query_points([device.id], "inference_errors", *window))
    if p95s:
        out["p95_ms"], out["p95_basis"] = round(percentile(p95s, 0.95), 3), "serving telemetry"
    else:
        out["p95_ms"], out["p95_basis"] = _number(detail.get("p95_ms")), "on-device gate"
    out["requests"] = int(requests)
    out["error_rate"] = round(errors / requests, 6) if requests > 0 else None
    return out


# gate -> (figure, True if the figure must be at least the limit)
_CHECKS = {"min_device_accuracy": ("accuracy", True), "max_p95_ms": ("p95_ms", False),
           "max_error_rate": ("error_rate", False), "max_memory_bytes": ("memory_bytes", False)}


def judge(gates: Mapping[str, float], device_id: str, device_name: str,
          figs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One result per gate: gate, device_id, device_name, value (None: unknown), limit, passed."""
    results = []
    for gate, limit in gates.items():
        figure, at_least = _CHECKS[gate]
        value = figs.get(figure)
        passed = value is None or (value >= limit if at_least else value <= limit)
        results.append({"gate": gate, "device_id": device_id, "device_name": device_name,
                        "value": value, "limit": limit, "passed": bool(passed),
                        "detail": "no figure (not measured); not failed for it" if value is None
                        else ""})
    return results


def summary(failed: Sequence[Mapping[str, Any]]) -> str:
    """'max_p95_ms on edge-1 (412.0 > 200.0), edge-2 (...)' per failed gate."""
    by_gate: dict[str, list[str]] = {}
    for r in failed:
        op = "<" if _CHECKS[r["gate"]][1] else ">"
        by_gate.setdefault(r["gate"], []).append(f"{r['device_name']} ({r['value']:g} {op} {r['limit']:g})")
    return "; ".join(f"{gate} failed on {', '.join(where)}" for gate, where in by_gate.items())
