"""Build a model for a list of profiles, check every variant and apply its gates: the work of the
``build`` recipe step and of ``slmops build --local`` (``build_model_variants``).

In ``work_dir``: ``reference.json`` (the fp32 PyTorch model's answers, made once),
``scratch/`` (an fp32 build several profiles start from) and ``variants/<profile>/``, each with
its ``slmops-variant.json``: model, profile, precision, provider, runtime, how it was built,
its metrics and the gate result. A variant whose file already holds a gate result is not built
again, so an interrupted build resumes with the next profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.build.builder import BuiltVariant, build_variant, merged_model, read_meta, write_meta
from controller.build.check import check_variant, pytorch_reference, rows_sha256
from controller.build.gates import GateResult, apply_gates, override
from controller.build.profiles import DeviceProfile, ProfileSet, builtin_profiles
from controller.pipeline.evaluate.rows import EvalRow
from controller.pipeline.events import Events

if TYPE_CHECKING:
    from controller.registry import ModelRegistry, VariantRecord

DEFAULT_TEST_ROWS = 100


@dataclass(frozen=True)
class GateOverrides:
    """Limits that replace every chosen profile's own for one build (None: the profile's)."""

    max_accuracy_drop: float | None = None
    min_tokens_per_s: float | None = None
    max_memory_bytes: int | None = None
    min_greedy_agreement: float | None = None
    min_rouge_l_vs_fp32: float | None = None
    max_metric_drop: float | None = None
    max_perplexity_ratio: float | None = None

    def apply(self, profile: DeviceProfile) -> DeviceProfile:
        from dataclasses import asdict, replace

        return replace(profile, gates=override(profile.gates, **asdict(self)))


@dataclass(frozen=True)
class VariantOutcome:
    profile: str
    dir: Path
    precision: str
    provider: str
    runtime: str
    build: dict[str, Any]
    metrics: dict[str, Any]
    gate: GateResult
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.gate.status

    def entry(self, model: Mapping[str, str] | None = None, name: str = "") -> dict[str, Any]:
        """This variant as a registration entry (kind "variant"), linked to ``model``."""
        out: dict[str, Any] = {
            "kind": "variant", "path": str(self.dir.resolve()), "profile": self.profile,
            "precision": self.precision, "provider": self.provider, "runtime": self.runtime,
            "status": self.gate.status, "reason": self.gate.reason, "metrics": self.metrics,
            "build": {**self.build, "gates": self.gate.gates, "gate_notes": self.gate.notes},
        }
        if model is not None:
            out["model"] = dict(model)
        if name:
            out["name"] = name
        return out

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        return {"profile": self.profile, "precision": self.precision, "runtime": self.runtime,
                "status": self.gate.status, "reason": self.gate.reason, "size_bytes": m.get("size_bytes"),
                "exact_match": m.get("exact_match"), "exact_match_delta": m.get("exact_match_delta"),
                "greedy_agreement": m.get("greedy_agreement"), "rouge_l_vs_fp32": m.get("rouge_l_vs_fp32"),
                "task_metric": m.get("task_metric"), "metric_drop": m.get("metric_drop"),
                "perplexity_ratio": m.get("perplexity_ratio"), "tokens_per_s": m.get("tokens_per_s"),
                "peak_memory_bytes": m.get("peak_memory_bytes")}


def load_rows(data: Path | None, n: int = DEFAULT_TEST_ROWS,
              seed: int = 0) -> tuple[list[EvalRow], str]:
    """The held-out rows and what they are called: ``data``'s rows (prompt/answer rows, chat
    rows, or prompts alone, compared with the fp32 model's answers only), or without it the
    bundled support task's test split (n rows)."""
    from controller.pipeline.evaluate.rows import parse_rows, read_rows

    if data is not None:
        rows = read_rows(Path(data), need_reference=False)
        if not any(r.asks for r in rows) or any(not r.asks for r in rows):
            from controller.pipeline.jsonl import DataError

            raise DataError(f"{data}: text rows have no prompt to answer; a build's held-out rows are "
                            "prompt/answer rows or chat rows")
        return rows, Path(data).name
    from controller.pipeline.task import generate

    return (parse_rows(generate("test", n, seed=seed), "support-task test split"),
            f"support-task test split ({n} rows, seed {seed})")


def build_and_check(model_dir: Path, profiles: Sequence[DeviceProfile],
                    rows: Sequence[EvalRow | Mapping[str, Any]],
                    work_dir: Path, *, model_label: str = "", data_name: str = "",
                    max_new_tokens: int = 64, threads: int | None = None,
                    gates: GateOverrides | None = None, events: Events | None = None,
                    base_dir: Path | None = None, perplexity: bool = False) -> list[VariantOutcome]:
    """Every profile built from ``model_dir``, checked on ``rows`` and gated (see the module
    docstring). A build error stops here (BuildError naming the profile); a gate failure is
    an outcome like any other. A LoRA adapter comes with its base (``base_dir``) and is
    compared with the adapter merged into it. ``perplexity``: also score the references'
    perplexity, fp32 and variant (one prefill per row; onnxruntime-genai variants only)."""
    from controller.build.genai_builder import BuildError
    from controller.pipeline.evaluate.rows import parse_row

    events = events or Events()
    held_out = [r if isinstance(r, EvalRow) else parse_row(r, f"rows: row {i}", need_reference=False)
                for i, r in enumerate(rows, start=1)]
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    gates = gates or GateOverrides()
    data = {data_name or "rows": rows_sha256(held_out)}
    reference_dir = model_dir if base_dir is None else merged_model(
        Path(base_dir), Path(model_dir), work_dir / "scratch", events)
    reference = pytorch_reference(reference_dir, held_out, max_new_tokens=max_new_tokens, threads=threads,
                                  events=events, cache=work_dir / "reference.json", perplexity=perplexity)
    if "task_metric" in reference:
        events.log(f"fp32 PyTorch reference: {reference['task_metric']} {reference['task_metric_value']:.3f} "
                   f"on {reference['references']} of {reference['n']} rows")
    outcomes = []
    for number, chosen in enumerate(profiles, start=1):
        profile = gates.apply(chosen)
        events.check_cancelled()
        events.progress("profiles", number - 1, len(profiles), profile=profile.name, unit="profile")
        vdir = work_dir / "variants" / profile.name
        meta = read_meta(vdir) if vdir.is_dir() else {}
        if meta.get("gate") and meta.get("metrics"):
            events.log(f"{profile.name}: built and checked before ({meta['gate']['status']})")
        else:
            try:
                built = build_variant(model_dir, profile, vdir, scratch=work_dir / "scratch", events=events,
                                      base_dir=base_dir)
            except BuildError as e:
                raise BuildError(f"profile {profile.name}: {e}") from e
            meta = _check_and_gate(built, profile, held_out, reference, model_label, data, max_new_tokens,
                                   threads, events, perplexity)
        outcome = VariantOutcome(profile.name, vdir, meta["precision"], meta["provider"], meta["runtime"],
                                 meta.get("build", {}), meta["metrics"],
                                 GateResult(meta["gate"]["status"], meta["gate"]["reason"],
                                            meta["gate"].get("gates", {}), meta["gate"].get("notes", [])),
                                 meta)
        events.log(f"{profile.name}: {outcome.status}" + (f" ({outcome.gate.reason})" if outcome.gate.reason
                                                          else "") + f"; {_line(outcome.metrics)}")
        outcomes.append(outcome)
    events.progress("profiles", len(profiles), len(profiles), unit="profile")
    return outcomes


def _check_and_gate(built: BuiltVariant, profile: DeviceProfile, rows: Sequence[EvalRow],
                    reference: Mapping[str, Any], model_label: str, data: dict[str, str], max_new_tokens: int,
                    threads: int | None, events: Events, perplexity: bool) -> dict[str, Any]:
    from controller.build.check import this_machine
    from controller.build.matching import matches

    events.log(f"{profile.name}: checking on {len(rows)} prompts with {built.runtime}")
    metrics = check_variant(built.dir, built.runtime, rows, reference, cuda=profile.cuda,
                            on_target=matches(profile.match, this_machine()),
                            max_new_tokens=max_new_tokens, threads=threads, events=events,
                            perplexity=perplexity)
    metrics["data"] = data
    gate = apply_gates(profile.gates, metrics, profile.precision)
    return write_meta(built.dir, {"model": model_label, "profile": profile.name, "profile_definition":
                                  profile.to_dict(), "metrics": metrics, "gate": gate.to_dict()})


def _line(m: Mapping[str, Any]) -> str:
    parts = [f"agreement {m.get('greedy_agreement', 0):.0%}",
             f"ROUGE-L vs fp32 {m.get('rouge_l_vs_fp32', 0):.2f}"]
    if "task_metric" in m:
        parts.append(f"{m['task_metric']} {m.get('task_metric_value', 0):.3f} "
                     f"({-m.get('metric_drop', 0):+.1f} pts)")
    if m.get("perplexity_ratio"):
        parts.append(f"perplexity x{m['perplexity_ratio']:.3f}")
    parts += [f"{(m.get('size_bytes') or 0) / 2**20:.1f} MiB", f"{m.get('tokens_per_s') or 0:.0f} tok/s"]
    return ", ".join(parts)


def adapter_base(registry: ModelRegistry, record: Any) -> Path | None:
    """The registered base of an adapter version: its lineage's ``base.registered`` (a base
    registered with it), else the version directory its ``adapter_config.json`` names (an adapter
    trained on ``registry:NAME``, whose lineage keeps the reference as the recipe wrote it, the
    directory being the exact version it was trained on); None for a whole model. Raises
    Invalid (a ValueError) when an adapter's base is not in the registry."""
    from controller.validation import Invalid

    if record.kind != "adapter":
        return None
    base = (record.lineage.get("base") or {}).get("registered") if isinstance(record.lineage, dict) else None
    if base:
        return registry.path(registry.get(base))
    named = read_adapter_base(registry.path(record))
    root = registry.models_root.resolve()
    if named and named.is_absolute() and named.resolve().is_relative_to(root) and named.is_dir():
        return named
    raise Invalid(f"{record.ref} is a LoRA adapter whose base is not a registered model; register "
                     "the base (or the merged model) and build that")


def read_adapter_base(adapter_dir: Path) -> Path | None:
    """The base directory an adapter's ``adapter_config.json`` names (None: none, or a hub id)."""
    import json

    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return Path(base) if isinstance(base, str) and base.startswith("/") else None


def build_model_variants(registry: ModelRegistry, ref: str, profiles: Sequence[str | DeviceProfile],
                         test_data: Path | None, events: Events | None = None, *,
                         profile_set: ProfileSet | None = None, work_dir: Path | None = None,
                         max_new_tokens: int = 64, threads: int | None = None,
                         gates: GateOverrides | None = None, job_id: str = "") -> list[VariantRecord]:
    """Build the registered version ``ref`` for ``profiles`` (names from ``profile_set``, or
    profiles), check each on ``test_data`` (default: the support task's test split) and store
    every variant in the registry, passed or failed. Returns the stored variants."""
    import shutil
    import tempfile

    events = events or Events()
    record = registry.get(ref)
    profile_set = profile_set or builtin_profiles()
    chosen = [p if isinstance(p, DeviceProfile) else profile_set.get(p) for p in profiles]
    if not chosen:
        raise ValueError("profiles: name at least one profile (see `slmops profiles list`)")
    rows, data_name = load_rows(test_data)
    own_dir = work_dir is None
    # the registry's own staging area: on its file system, and cleared of what a crash leaves
    work = Path(work_dir) if work_dir is not None else Path(
        tempfile.mkdtemp(prefix="build-", dir=registry.models_root / ".incoming"))
    try:
        outcomes = build_and_check(registry.path(record), chosen, rows, work, model_label=record.ref,
                                   data_name=data_name, max_new_tokens=max_new_tokens, threads=threads,
                                   gates=gates, events=events, base_dir=adapter_base(registry, record))
        stored = registry.add_variants(record.ref, [o.entry() for o in outcomes], job_id=job_id)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    events.log(f"stored {len(stored)} variant(s) of {record.ref}: "
               + ", ".join(f"{v.profile} {v.status}" for v in stored))
    return stored
