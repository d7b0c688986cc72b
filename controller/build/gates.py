"""A profile's gates applied to a checked variant: passed, or failed with every reason.

Quality, in terms that hold for any model, each variant against the PyTorch fp32 model on the
held-out prompts (check.py measures them):

- ``min_greedy_agreement``: the share of greedy answers equal to the fp32 model's;
- ``min_rouge_l_vs_fp32``: the mean ROUGE-L F1 of the variant's answers against the fp32 answers;
- ``max_metric_drop``: points of the task metric (ROUGE-L against the references) lost against
  the fp32 model, where the rows have references;
- ``max_perplexity_ratio``: the variant's perplexity on the references over the fp32 model's,
  when the build measured it (``perplexity: true``);
- ``max_accuracy_drop``: the bundled support task's gate, as before: exact-match points lost
  against the fp32 model, applied when the held-out rows are that task's (they carry intents).

A minimum of 0, or a ratio of 0, is no limit. Defaults per precision: profiles.py.

Speed and resources:

- ``min_tokens_per_s``; ``max_memory_bytes`` (the runtime's peak resident memory);
  ``max_p95_ms`` (the p95 answer latency, when the profile sets one).

Speed and memory measured on other hardware than the profile's (a CUDA variant checked on this
CPU, an ARM profile checked on an x86 controller) say little about the target, so those two gates
are skipped, with a note; the device's own check before it switches (the agent's benchmark)
covers them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
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


def override(gates: Gates, **limits: float | None) -> Gates:
    """``gates`` with the limits given here (Gates' field names; None = keep) in their place."""
    known = {f.name for f in fields(Gates)}
    changes: dict[str, Any] = {}
    for name, value in limits.items():
        if name not in known:
            raise TypeError(f"override: unknown gate {name!r}")
        if value is not None:
            changes[name] = int(value) if name == "max_memory_bytes" else float(value)
    return replace(gates, **changes)


def apply_gates(gates: Gates, metrics: Mapping[str, Any], precision: str) -> GateResult:
    limits = asdict(gates)
    reasons: list[str] = []
    notes: list[str] = []
    _quality(gates, metrics, precision, reasons, notes)
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _quality(gates: Gates, metrics: Mapping[str, Any], precision: str, reasons: list[str],
             notes: list[str]) -> None:
    if metrics.get("intents", "exact_match_delta" in metrics):  # the bundled task's rows: their own gate
        delta = _number(metrics.get("exact_match_delta"))
        if delta is None:
            reasons.append("no exact-match measurement to compare with the fp32 model")
        elif -delta > gates.max_accuracy_drop + 1e-9:
            reasons.append(f"exact match dropped {-delta:.2f} points against the fp32 model "
                           f"({metrics.get('reference_exact_match', 0):.1%} -> "
                           f"{metrics.get('exact_match', 0):.1%}); "
                           f"{precision} allows at most {gates.max_accuracy_drop:g}")
    for key, limit, what in (
            ("greedy_agreement", gates.min_greedy_agreement, "greedy agreement with fp32"),
            ("rouge_l_vs_fp32", gates.min_rouge_l_vs_fp32, "ROUGE-L against fp32's answers")):
        if limit <= 0:
            continue
        value = _number(metrics.get(key))
        if value is None:
            reasons.append(f"no {what} measurement")
        elif value < limit - 1e-9:
            reasons.append(f"{what} {value:.2f} is below the minimum of {limit:g} for {precision}")
    drop = _number(metrics.get("metric_drop"))
    if metrics.get("intents", "exact_match_delta" in metrics):
        pass  # the task metric is exact match, gated by max_accuracy_drop above
    elif drop is None:
        notes.append("no references to score the task metric on; max_metric_drop not applied")
    elif drop > gates.max_metric_drop + 1e-9:
        reasons.append(f"{metrics.get('task_metric', 'the task metric')} dropped {drop:.2f} points against "
                       f"the fp32 model; {precision} allows at most {gates.max_metric_drop:g}")
    ratio = _number(metrics.get("perplexity_ratio"))
    if ratio is None:
        if gates.max_perplexity_ratio > 0:
            notes.append("perplexity not measured (build with perplexity: true, onnxruntime-genai variants); "
                         "max_perplexity_ratio not applied")
    elif gates.max_perplexity_ratio > 0 and ratio > gates.max_perplexity_ratio + 1e-9:
        reasons.append(f"perplexity ratio {ratio:.3f} against fp32 is above the maximum of "
                       f"{gates.max_perplexity_ratio:g} for {precision}")
