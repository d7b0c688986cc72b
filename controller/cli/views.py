"""Proto messages as plain dicts for --json (numbers stay numbers, times get ISO text too)."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from controller.cli.output import when
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
        "id": j.id, "kind": j.kind, "recipe_name": j.recipe_name, "status": j.status,
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
