"""`slmops build`: a registered model built for device profiles, as a job on the controller
(or, with --local, in this process against a local registry). Every variant is checked on
held-out data with the runtime a device runs and gated; failed ones are stored with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from controller.cli import views
from controller.cli.client import DEADLINE_S
from controller.cli.eval_cmd import check_data
from controller.cli.follow import follow, interrupted, require_success
from controller.cli.models_cmd import variants_table
from controller.cli.output import CliError, console, emit, json_option, when
from controller.cli.pipeline_client import UPLOAD_S_PER_MIB, PipelineClient, _chunks, _upload_size
from controller.settings import default_data_dir
from protos import pipeline_pb2


def _profile_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CliError("--profiles: name at least one profile, e.g. --profiles cpu-x86-avx2-int8,cpu-fp32 "
                       "(see `slmops profiles list`)", "invalid_argument", 2)
    return names


def _human(d: dict[str, Any]) -> None:
    where = f"job {d['job']}" if d.get("job") else f"local registry {d.get('data_dir', '')}"
    passed = sum(v["status"] == "passed" for v in d["variants"])
    console.print(f"[bold]{d['model']}[/bold]: {passed} of {len(d['variants'])} variant(s) passed their "
                  f"gates ({where})", highlight=False)
    variants_table(d["model"], d["variants"])


def _submit(client: PipelineClient, spec: pipeline_pb2.BuildSpec, data: Path | None) -> pipeline_pb2.Job:
    files = {data.name: data} if data is not None else {}
    size = _upload_size(files)

    def requests() -> Iterator[pipeline_pb2.BuildModelRequest]:
        yield pipeline_pb2.BuildModelRequest(spec=spec)
        for chunk in _chunks(files):
            yield pipeline_pb2.BuildModelRequest(file=chunk)

    timeout = DEADLINE_S + UPLOAD_S_PER_MIB * size / 2**20
    return client.call(client.pipeline.BuildModel, requests(), timeout).job


def _record_view(v: Any) -> dict[str, Any]:
    """A registry VariantRecord in the shape of views.variant (what --json prints)."""
    return {"profile": v.profile, "precision": v.precision, "provider": v.provider, "runtime": v.runtime,
            "status": v.status, "deployable": v.status == "passed", "reason": v.reason,
            "size_bytes": v.size_bytes, "sha256": v.sha256, "metrics": v.metrics, "build": v.build,
            "created": when(v.created_at_ms), "created_at_ms": v.created_at_ms, "job_id": v.job_id}


def _build_local(ref: str, names: list[str], data: Path | None, data_dir: Path, profiles_file: Path | None,
                 gates: dict[str, float | None], threads: int, as_json: bool) -> dict[str, Any]:
    from controller.build.genai_builder import BuildError
    from controller.build.profiles import ProfileError, load_profiles
    from controller.build.variants import GateOverrides, build_model_variants
    from controller.pipeline.events import Cancelled, Events
    from controller.pipeline.rich_events import RichEvents
    from controller.registry import ModelRegistry, NotFound
    from controller.validation import Invalid

    try:
        profile_set = load_profiles(profiles_file)
        profile_set.select(names, "--profiles")
    except ProfileError as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    overrides = GateOverrides(gates["max_accuracy_drop"], gates["min_tokens_per_s"],
                              None if gates["max_memory_mb"] is None else int(gates["max_memory_mb"] * 2**20))
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    try:
        kwargs: dict[str, Any] = {"profile_set": profile_set, "gates": overrides, "threads": threads or None}
        if as_json:
            stored = build_model_variants(registry, ref, names, data, Events(), **kwargs)
        else:
            with RichEvents() as events:
                stored = build_model_variants(registry, ref, names, data, events, **kwargs)
        record = registry.get(ref)
    except (NotFound, Invalid) as e:
        raise CliError(str(e), "not_found" if isinstance(e, NotFound) else "invalid_argument") from None
    except BuildError as e:
        raise CliError(str(e), "failed") from None
    except (KeyboardInterrupt, Cancelled):
        raise CliError("interrupted; nothing was stored", "interrupted", 130) from None
    finally:
        registry.close()
    return {"model": record.ref, "job": "", "data_dir": str(data_dir),
            "variants": [_record_view(v) for v in stored]}


@click.command("build")
@click.argument("ref")
@click.option("--profiles", "profiles_text", required=True,
              help="comma-separated device profiles, e.g. cpu-x86-avx512-int4,cpu-fp32 "
                   "(`slmops profiles list`)")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="held-out data, JSON lines: intent, prompt, answer (default: the bundled support "
                   "task's test split)")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="exact-match points a variant may lose against fp32 (default: each profile's)")
@click.option("--min-tokens-per-s", type=float, default=None,
              help="slowest tokens/s allowed (default: each profile's)")
@click.option("--max-memory-mb", type=float, default=None,
              help="largest peak memory allowed (default: each profile's)")
@click.option("--threads", type=click.IntRange(0, 1024), default=0,
              help="threads of the runtimes under test (0 = their defaults); a device's core count "
                   "brings tokens/s closer to what the device measures")
@click.option("--local", "local", is_flag=True, help="build here, in this process, without a controller")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="with --local: the registry (default ~/.local/share/slmops/controller)")
@click.option("--profiles-file", type=click.Path(path_type=Path), default=None,
              help="with --local: custom profiles (YAML); a controller uses its own")
@json_option
@click.pass_obj
def build(obj: dict, ref: str, profiles_text: str, data: Path | None, max_accuracy_drop: float | None,
          min_tokens_per_s: float | None, max_memory_mb: float | None, threads: int, local: bool,
          data_dir: Path | None, profiles_file: Path | None, as_json: bool) -> None:
    """Build a registered model (NAME:VERSION) for device profiles: each variant is checked on
    held-out data with the device's runtime (exact match and its change against the fp32 model,
    greedy agreement, size, tokens/s, memory) and passed or failed by the profile's gates.
    Runs as a job on the controller and waits for it."""
    names = _profile_names(profiles_text)
    if data is not None:
        check_data(data)
    for flag, value in (("--max-accuracy-drop", max_accuracy_drop), ("--min-tokens-per-s", min_tokens_per_s),
                        ("--max-memory-mb", max_memory_mb)):
        if value is not None and not value >= 0:
            raise CliError(f"{flag}: {value} must be >= 0", "invalid_argument", 2)
    gates = {"max_accuracy_drop": max_accuracy_drop, "min_tokens_per_s": min_tokens_per_s,
             "max_memory_mb": max_memory_mb}
    if local:
        emit(_build_local(ref, names, data, data_dir or default_data_dir(), profiles_file, gates, threads,
                          as_json), as_json, _human)
        return
    if data_dir is not None or profiles_file is not None:
        raise CliError("--data-dir and --profiles-file go with --local; a controller builds with its own "
                       "registry and profiles", "invalid_argument", 2)
    limits = pipeline_pb2.GateLimits()
    if max_accuracy_drop is not None:
        limits.max_accuracy_drop = max_accuracy_drop
    if min_tokens_per_s is not None:
        limits.min_tokens_per_s = min_tokens_per_s
    if max_memory_mb is not None:
        limits.max_memory_bytes = int(max_memory_mb * 2**20)
    client = PipelineClient(obj["config"])
    spec = pipeline_pb2.BuildSpec(ref=ref, profiles=names, gates=limits, threads=threads)
    job = _submit(client, spec, data)
    if not as_json:
        console.print(f"building {job.target} for {', '.join(names)} as job {job.id}", highlight=False)
    try:
        job = follow(client, job.id, show=not as_json)
    except KeyboardInterrupt:
        raise interrupted(job.id) from None
    require_success(job)
    request = pipeline_pb2.GetModelRequest(ref=job.target)
    model = views.model(client.call(client.pipeline.GetModel, request).model)
    built = [v for v in model["variants"] if v["job_id"] == job.id]
    emit({"model": model["ref"], "job": job.id, "variants": built}, as_json, _human)
