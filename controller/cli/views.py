"""Proto messages as plain dicts for --json (numbers stay numbers, times get ISO text too)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from agent.delivery.phases import DeploymentPhase, UnknownPhase
from agent.delivery.phases import from_proto as phase_from_proto
from controller.cli.output import when
from controller.jobs import states as job_states
from protos import admin_pb2, common_pb2, pipeline_pb2


def hardware(h: common_pb2.Hardware) -> dict[str, Any]:
    return {
        "arch": h.arch, "cpu_model": h.cpu_model, "isa_flags": list(h.isa_flags),
        "physical_cores": h.physical_cores, "logical_cores": h.logical_cores,
        "memory_total_bytes": h.memory_total_bytes, "disk_total_bytes": h.disk_total_bytes,
        "disk_free_bytes": h.disk_free_bytes, "os": h.os, "hostname": h.hostname,
        "accelerators": [json_format.MessageToDict(a, preserving_proto_field_name=True)
                         for a in h.accelerators],
    }


def device(d: admin_pb2.Device) -> dict[str, Any]:
    return {
        "id": d.id, "name": d.name, "status": d.status, "labels": dict(d.labels),
        "profile": d.profile, "agent_version": d.agent_version,
        "last_seen": when(d.last_seen_ms) if d.last_seen_ms else None,
        "last_seen_ms": d.last_seen_ms, "enrolled_at": when(d.enrolled_at_ms),
        "acked_through_seq": d.acked_through_seq, "spool_dropped_total": d.spool_dropped_total,
        "desired_generation": d.desired_generation, "hardware": hardware(d.hardware),
    }


def token(t: admin_pb2.Token) -> dict[str, Any]:
    return {
        "id": t.id, "labels": dict(t.labels), "created_at": when(t.created_at_ms),
        "expires_at": when(t.expires_at_ms), "expires_at_ms": t.expires_at_ms,
        "max_uses": t.max_uses, "uses": t.uses, "revoked": t.revoked,
    }


def telemetry(r: admin_pb2.QueryTelemetryResponse) -> dict[str, Any]:
    return {
        "start": when(r.start_ms), "end": when(r.end_ms), "step_ms": r.step_ms, "agg": r.agg,
        "series": [
            {
                "device_id": s.device_id, "device_name": s.device_name, "metric": s.metric,
                "series": s.series,
                "points": [{"time": when(p.timestamp_ms), "timestamp_ms": p.timestamp_ms,
                            "value": p.value, "count": p.count} for p in s.points],
            }
            for s in r.series
        ],
    }


def _json_field(text: str) -> Any:
    return json.loads(text) if text else {}


def job(j: pipeline_pb2.Job) -> dict[str, Any]:
    p = j.progress
    progress: dict[str, Any] = {}
    if p.step or p.task:
        progress = {"step": p.step, "step_index": p.step_index, "step_count": p.step_count,
                    "task": p.task, "percent": p.percent}
        if p.HasField("loss"):
            progress["loss"] = p.loss
        if p.HasField("eta_s"):
            progress["eta_s"] = p.eta_s
    return {
        "id": j.id, "kind": j.kind, "recipe_name": j.recipe_name, "status": job_states.word(j.state),
        "progress": progress, "error": j.error, "models": list(j.models), "attempts": j.attempts,
        "target": j.target, "result": _json_field(j.result_json),
        "created_at": when(j.created_at_ms), "started_at": when(j.started_at_ms) if j.started_at_ms
        else None, "finished_at": when(j.finished_at_ms) if j.finished_at_ms else None,
        "created_at_ms": j.created_at_ms, "started_at_ms": j.started_at_ms,
        "finished_at_ms": j.finished_at_ms,
    }


def model(m: pipeline_pb2.Model) -> dict[str, Any]:
    return {
        "name": m.name, "version": m.version, "ref": f"{m.name}:{m.version}", "kind": m.kind,
        "params": m.params, "size_bytes": m.size_bytes, "metrics": _json_field(m.metrics_json),
        "lineage": _json_field(m.lineage_json), "created": when(m.created_at_ms),
        "created_at_ms": m.created_at_ms, "job_id": m.job_id, "sha256": m.sha256,
        "evaluations": [{"eval_name": e.eval_name, "metrics": _json_field(e.metrics_json),
                         "created": when(e.created_at_ms), "job_id": e.job_id}
                        for e in m.evaluations],
        "variants": [variant(v) for v in m.variants],
    }


def variant(v: pipeline_pb2.Variant) -> dict[str, Any]:
    return {
        "profile": v.profile, "precision": v.precision, "provider": v.provider, "runtime": v.runtime,
        "status": v.status, "deployable": v.status == "passed", "reason": v.reason,
        "size_bytes": v.size_bytes, "sha256": v.sha256, "metrics": _json_field(v.metrics_json),
        "build": _json_field(v.build_json), "created": when(v.created_at_ms),
        "created_at_ms": v.created_at_ms, "job_id": v.job_id,
    }


def profile(p: pipeline_pb2.DeviceProfile) -> dict[str, Any]:
    """The same shape as ``DeviceProfile.to_dict()`` (the profiles YAML's terms: MB, not bytes)."""
    mb = 2**20
    return {
        "name": p.name, "description": p.description, "source": p.source,
        "match": {"arch": list(p.arch), "isa_flags": list(p.isa_flags),
                  "min_memory_mb": p.min_memory_bytes // mb, "accelerator": p.accelerator,
                  "min_accelerator_memory_mb": p.min_accelerator_memory_bytes // mb},
        "build": {"precision": p.precision, "provider": p.provider, "block_size": p.block_size,
                  "accuracy_level": p.accuracy_level, "int8_scheme": p.int8_scheme},
        "gates": {"max_accuracy_drop": p.max_accuracy_drop, "min_tokens_per_s": p.min_tokens_per_s,
                  "max_memory_mb": p.max_memory_bytes // mb},
    }


# --- deployment: what a device runs and where its latest release stands --------------------

# Phases a device reports (DeploymentPhase) in the words a person reads.
PHASE_WORDS = {DeploymentPhase.ROLLED_BACK: "rolled back"}


def phase_word(number: int, reported: bool) -> str:
    """The DeploymentPhase value of a wire number: "" before any report (``reported`` false),
    "unknown" for a phase the controller (or this CLI) does not know; the reason says which."""
    try:
        return phase_from_proto(number).value
    except UnknownPhase:
        return DeploymentPhase.UNKNOWN.value if reported else ""


def deployment(p: admin_pb2.Deployment) -> dict[str, Any]:
    """Every Deployment field under its own name; ``detail`` is detail_json parsed, and
    ``phase_text`` the phase as `devices show` prints it."""
    view: dict[str, Any] = {
        "desired_model": p.desired_model, "desired_release": p.desired_release,
        "desired_variant": p.desired_variant, "active_model": p.active_model,
        "active_release": p.active_release, "previous_model": p.previous_model,
        "previous_release": p.previous_release,
        "phase": phase_word(p.deployment_phase, bool(p.updated_at_ms)), "reason": p.reason,
        "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "bytes_per_s": p.bytes_per_s,
        "detail": _detail(p.detail_json),
        "updated_at": when(p.updated_at_ms) if p.updated_at_ms else None,
        "updated_at_ms": p.updated_at_ms,
    }
    view["phase_text"] = phase_text(view)
    return view


def _detail(text: str) -> Any:
    # The agent's extra figures (gate results, bytes to fetch); shown, never relied on, so a
    # report that is not JSON is passed on as text rather than failing the command.
    try:
        return _json_field(text)
    except json.JSONDecodeError:
        return text


def _sizes(done: float, total: float) -> str:
    """`18.5 / 50.0 MB`: both in the unit of the total, decimal as disk sizes are sold."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if total >= size:
            return f"{done / size:.1f} / {total / size:.1f} {unit}"
    return f"{done / 1e3:.1f} / {total / 1e3:.1f} kB"


def rate_text(bytes_per_s: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if bytes_per_s >= size:
            return f"{bytes_per_s / size:.1f} {unit}/s"
    return f"{bytes_per_s / 1e3:.1f} kB/s"


def awaiting(view: dict[str, Any]) -> bool:
    """A release was assigned that the device has not started on: its last report is about the
    release it runs (settled there, or no report at all) while the desired one is another."""
    return bool(view["desired_release"]) and view["desired_release"] != view["active_release"] \
        and view["phase"] in ("", DeploymentPhase.ACTIVE)


def phase_text(view: dict[str, Any], *, short: bool = False) -> str:
    """The phase of the device's latest release: `downloading 37 % (18.5 / 50.0 MB, 12.3 MB/s)`,
    `verifying`, `staging`, `gating`, `active`, `failed: <reason>`, `refused: <reason>`,
    `rolled back`; "" before any report. ``short`` leaves out the figures and the reason (a table
    column)."""
    phase = view["phase"]
    if awaiting(view):
        return "pending" if short else \
            f"pending: release {view['desired_release']} assigned; the device has not reported on it yet"
    if phase == DeploymentPhase.DOWNLOADING and view["bytes_total"]:
        done, total = view["bytes_done"], view["bytes_total"]
        text = f"downloading {min(100, int(100 * done / total))} %"
        if short:
            return text
        figures = _sizes(done, total)
        if view["bytes_per_s"] > 0:
            figures += f", {rate_text(view['bytes_per_s'])}"
        return f"{text} ({figures})"
    words = PHASE_WORDS.get(phase, phase)
    if view["reason"] and not short:
        return f"{words}: {view['reason']}"
    return words
