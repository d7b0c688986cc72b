"""build: a model built for device profiles, each variant checked on a held-out set with the
runtime the device runs, and gated.

Each profile's variant is built (onnxruntime-genai's model builder, or optimum-onnx for other
architectures), answered on the held-out rows in a process of its own, compared with the fp32
PyTorch model (exact match and its delta, greedy agreement, size, tokens/s, peak memory), and
passed or failed by the profile's gates. A failed variant is kept, with the reason.

The variants reach the registry with the run's models, once the whole run succeeded: a model
given as ``registry:NAME[:VERSION]``, or one a ``register`` step before this one names, gets
its variants attached (failed ones flagged not deployable). Variants of a model not registered
are built and measured only (``variants.json``), and the log says so.

Output: ``variants`` — ``variants.json``: {"model", "data", "reference", "variants": [...]}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.pipeline import refs
from controller.pipeline.refs import DataRef, ModelRef
from controller.pipeline.steps.base import ResolvedModel, Step, StepContext, StepError
from controller.pipeline.steps.params import ParamError, param

if TYPE_CHECKING:
    from controller.build.profiles import DeviceProfile, ProfileSet


@dataclass(frozen=True, kw_only=True)
class BuildGates:
    max_accuracy_drop: float | None = param(None, "exact-match points a variant may lose against the fp32 "
                                                  "model (default: the profile's)")
    min_tokens_per_s: float | None = param(None, "slowest tokens/s allowed (default: the profile's)")
    max_memory_mb: float | None = param(None, "largest peak memory of the runtime (default: the profile's)")
    min_greedy_agreement: float | None = param(None, "share of answers equal to the fp32 model's (0..1)")
    min_rouge_l_vs_fp32: float | None = param(None, "mean ROUGE-L of the answers against fp32's (0..1)")
    max_metric_drop: float | None = param(None, "task metric points lost against fp32 (rows with references)")
    max_perplexity_ratio: float | None = param(None, "variant / fp32 perplexity (with perplexity: true)")

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "min_tokens_per_s", "max_memory_mb", "min_greedy_agreement",
                     "min_rouge_l_vs_fp32", "max_metric_drop", "max_perplexity_ratio"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ParamError(name, f"must be >= 0, got {value}")


@dataclass(frozen=True, kw_only=True)
class BuildParams:
    model: ModelRef = param(help="the model to build (${step.output} or registry:NAME:VERSION); a LoRA "
                                 "adapter is built as its base's graph plus the adapter file (CPU fp32 "
                                 "and int8) or merged into its base (other profiles)")
    profiles: list[str] = param(help="device profiles to build for (see `slmops profiles list`)")
    data: DataRef | None = param(None, "held-out JSONL rows: prompt/answer rows, chat rows ({messages}, the "
                                       "last assistant turn the reference) or prompts alone; default: the "
                                       "bundled support task's test split")
    perplexity: bool = param(False, "also compare perplexity on the references (fp32 vs variant; one "
                                    "prefill per row, onnxruntime-genai variants)")
    test_rows: int = param(100, "rows of the support task's test split used when no data is given")
    max_new_tokens: int = param(64, "longest answer generated")
    threads: int = param(0, "threads of the runtime under test and of the PyTorch reference (0 = their "
                            "defaults); a device's core count makes tokens/s closer to the device's")
    gates: BuildGates = param(factory=BuildGates, help="limits replacing every profile's own for this build")
    custom_profiles: list[dict[str, Any]] = param(
        factory=list, help="profile definitions, as in a profiles YAML file, beside the built-in ones "
                           "(a built-in's name retunes it)")

    def __post_init__(self) -> None:
        for name in ("test_rows", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ParamError("threads", f"must be >= 0, got {self.threads}")
        profile_set(self)  # unknown, repeated or malformed profiles fail here, by field


def profile_set(params: BuildParams) -> tuple[ProfileSet, list[DeviceProfile]]:
    """The ProfileSet (built-in + custom_profiles) and the chosen profiles; ParamError if bad."""
    from controller.build.profiles import ProfileError, ProfileSet, builtin_profiles, profiles_from_data

    problems: list[str] = []
    base = builtin_profiles()
    merged = ProfileSet(profiles_from_data(params.custom_profiles, "recipe", base, problems,
                                           "custom_profiles"), ("recipe",))
    if problems:
        field, _, problem = problems[0].partition(": ")
        raise ParamError(field, problem)
    try:
        return merged, merged.select(params.profiles)
    except ProfileError as e:
        field, _, problem = e.problems[0].partition(": ")
        raise ParamError(field, problem) from None


REFERENCE_KEYS = ("n", "exact_match", "task_metric", "task_metric_value", "perplexity")


class Build(Step):
    name = "build"
    summary = "build a model per device profile, check each variant with the device's runtime, gate it"
    Params = BuildParams
    outputs = {"variants": "metrics"}

    def run(self, ctx: StepContext, params: BuildParams) -> dict[str, Path]:
        from controller.build.genai_builder import BuildError
        from controller.build.variants import GateOverrides, build_and_check, load_rows
        from controller.pipeline.jsonl import write_atomic

        model = ctx.model(params.model)
        base_dir = None
        if model.kind == "adapter":  # built as its base's graph plus the adapter file where it can be
            if model.base is None or model.base.path is None:
                raise StepError(f"model: {params.model} is a LoRA adapter whose base is not a local "
                                "model directory; register the base, or build the merged model")
            base_dir = model.base.path
        if model.path is None:
            raise StepError(f"model: {params.model} is a hub id; the builders need a local model directory "
                            "(register the model, or use an earlier step's output)")
        _, chosen = profile_set(params)
        data = ctx.data(params.data) if params.data else None
        rows, data_name = load_rows(data, params.test_rows, ctx.seed)
        g = params.gates
        overrides = GateOverrides(g.max_accuracy_drop, g.min_tokens_per_s,
                                  None if g.max_memory_mb is None else int(g.max_memory_mb * 2**20),
                                  g.min_greedy_agreement, g.min_rouge_l_vs_fp32, g.max_metric_drop,
                                  g.max_perplexity_ratio)
        label = _label(params.model)
        ctx.events.log(f"{ctx.task()}: building {label} for {', '.join(p.name for p in chosen)}")
        try:
            outcomes = build_and_check(model.path, chosen, rows, ctx.dir, model_label=label,
                                       data_name=data_name, max_new_tokens=params.max_new_tokens,
                                       threads=params.threads or None, gates=overrides, events=ctx.events,
                                       base_dir=base_dir, perplexity=params.perplexity)
        except BuildError as e:
            raise StepError(str(e)) from e
        link = _link(ctx, params.model, model)
        if link is None:
            ctx.events.log(f"{ctx.task()}: {params.model} is not registered by this run (register it in a "
                           "step before this one); its variants are measured but not stored")
        ctx.info["register"] = [o.entry(link, name=f"{params.model}@{o.profile}") for o in outcomes] \
            if link else []
        ctx.info["variants"] = [o.summary() for o in outcomes]
        reference = json.loads((ctx.dir / "reference.json").read_text(encoding="utf-8"))["reference"]
        report = {"model": label, "data": outcomes[0].metrics["data"] if outcomes else {},
                  "reference": {k: reference[k] for k in REFERENCE_KEYS if k in reference},
                  "variants": [{**o.summary(), "metrics": o.metrics,
                                "dir": str(o.dir.relative_to(ctx.dir))} for o in outcomes]}
        out = ctx.dir / "variants.json"
        write_atomic(out, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
        return {"variants": out}


def _label(ref: str) -> str:
    parsed = refs.parse_model_ref(ref)
    if isinstance(parsed, refs.RegistryRef):
        return f"{parsed.name}:{parsed.version}" if parsed.version and parsed.version != "latest" \
            else parsed.name
    return ref


def _link(ctx: StepContext, ref: str, model: ResolvedModel) -> dict[str, str] | None:
    """How the registry finds the model the variants belong to; None if it won't be registered."""
    parsed = refs.parse_model_ref(ref)
    if isinstance(parsed, refs.RegistryRef):
        if parsed.version and parsed.version != "latest":
            return {"registered": f"{parsed.name}:{parsed.version}"}
        return {"path": str(model.path)}
    if isinstance(parsed, refs.StepRef) and model.path is not None:
        where = str(model.path.resolve())
        for record in ctx.done.values():
            for entry in record.info.get("register", []):
                if entry.get("kind") != "variant" and entry.get("path") == where:
                    return {"entry": str(entry["name"])}
    return None


def build_recipe_text(target: str, profiles: Sequence[DeviceProfile], *, data: str | None = None,
                      gates: Mapping[str, float] | None = None, max_new_tokens: int = 64,
                      test_rows: int = 100, threads: int = 0) -> str:
    """The recipe of a build job (``slmops build``): one build step for the registered version
    ``target`` ("name:version"). Profiles that are not built in travel inside the recipe, so
    the worker builds exactly what the controller's profiles file says."""
    import yaml

    with_: dict[str, Any] = {"model": f"registry:{target}", "profiles": [p.name for p in profiles]}
    if data is not None:
        with_["data"] = data
    if gates:
        with_["gates"] = dict(gates)
    custom = [{k: v for k, v in p.to_dict().items() if k != "source"} for p in profiles
              if p.source != "built-in"]
    if custom:
        with_["custom_profiles"] = custom
    with_.update(max_new_tokens=max_new_tokens, test_rows=test_rows, threads=threads)
    name = ("build-" + target.replace(":", "-v"))[:64]
    return yaml.safe_dump({"name": name, "steps": [{"id": "build", "uses": "build", "with": with_}]},
                          sort_keys=False)
