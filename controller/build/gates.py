"""A profile's gates applied to a checked variant: passed, or failed with every reason.

- accuracy: the exact-match points lost against the PyTorch fp32 model may not exceed
  ``max_accuracy_drop`` (defaults: int4 2, int8 1, fp16 and fp32 0.5);
- speed: ``tokens_per_s`` at least ``min_tokens_per_s``;
- memory: the runtime's peak resident memory at most ``max_memory_bytes``;
- latency: the p95 answer latency at most ``max_p95_ms`` (when the profile sets one).

Speed and memory measured on other hardware than the profile's (a CUDA variant checked on this
CPU, an ARM profile checked on an x86 controller) say little about the target, so those two gates
are skipped, with a note; the device's own check before it switches (the agent's benchmark)
covers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.build.profiles import Gates

PASSED, FAILED = "passed", "failed"


@dataclass(frozen=True)
class GateResult:
    status: str  # "passed" | "failed"
    reason: str  # why it failed ("; " between reasons), "" if it passed
    gates: dict[str, Any] = field(default_factory=dict)  # the limits applied
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "gates": self.gates, "notes": self.notes}


def override(gates: Gates, *, max_accuracy_drop: float | None = None, min_tokens_per_s: float | None = None,
             max_memory_bytes: int | None = None) -> Gates:
    """``gates`` with the limits given here in their place."""
    changes: dict[str, Any] = {}
    if max_accuracy_drop is not None:
        changes["max_accuracy_drop"] = float(max_accuracy_drop)
    if min_tokens_per_s is not None:
        changes["min_tokens_per_s"] = float(min_tokens_per_s)
    if max_memory_bytes is not None:
        changes["max_memory_bytes"] = int(max_memory_bytes)
    return replace(gates, **changes)


def apply_gates(gates: Gates, metrics: Mapping[str, Any], precision: str) -> GateResult:
    limits = {"max_accuracy_drop": gates.max_accuracy_drop, "min_tokens_per_s": gates.min_tokens_per_s,
              "max_memory_bytes": gates.max_memory_bytes, "max_p95_ms": gates.max_p95_ms}
    reasons: list[str] = []
    notes: list[str] = []
    delta = metrics.get("exact_match_delta")
    if not isinstance(delta, int | float):
        reasons.append("no exact-match measurement to compare with the fp32 model")
    elif -delta > gates.max_accuracy_drop + 1e-9:
        reasons.append(f"exact match dropped {-delta:.2f} points against the fp32 model "
                       f"({metrics.get('reference_exact_match', 0):.1%} -> "
                       f"{metrics.get('exact_match', 0):.1%}); "
                       f"{precision} allows at most {gates.max_accuracy_drop:g}")
    if metrics.get("measured_on_target", True):
        speed = metrics.get("tokens_per_s")
        if not isinstance(speed, int | float):
            reasons.append("no tokens/s measurement")
        elif speed < gates.min_tokens_per_s:
            reasons.append(f"{speed:.1f} tokens/s is below the minimum of {gates.min_tokens_per_s:g}")
        memory = metrics.get("peak_memory_bytes")
        if isinstance(memory, int | float) and memory > gates.max_memory_bytes:
            reasons.append(f"peak memory {memory / 2**20:.0f} MiB is above the maximum of "
                           f"{gates.max_memory_bytes / 2**20:.0f} MiB")
        elif not isinstance(memory, int | float):
            notes.append("peak memory could not be measured here (no /proc); memory gate not applied")
        p95 = (metrics.get("latency_ms") or {}).get("p95")
        if gates.max_p95_ms > 0 and isinstance(p95, int | float) and p95 > gates.max_p95_ms:
            reasons.append(f"p95 latency {p95:.0f} ms is above the maximum of {gates.max_p95_ms:g} ms")
    else:
        notes.append("tokens/s and memory gates not applied: measured on other hardware than the profile's")
    return GateResult(FAILED if reasons else PASSED, "; ".join(reasons), limits, notes)
