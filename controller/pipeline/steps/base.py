"""What a recipe step is, and what it gets while it runs.

A step is one class in one file, like an Olive pass: ``name`` (what a recipe writes after
``uses:``), ``Params`` (a parameter dataclass, see :mod:`.params`), ``outputs`` (output name →
kind: "model", "adapter", "data" or "metrics") and ``run(ctx, params) -> {output: Path}``.
Defining the class registers it in :data:`STEPS`. ``run`` works inside ``ctx.dir`` and must be
resumable: the runner calls it again, with the same directory, after an interruption.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from controller.pipeline import refs
from controller.pipeline.events import Events
from controller.pipeline.steps.params import describe as describe_params
from controller.pipeline.steps.params import walk_refs

if TYPE_CHECKING:
    from controller.pipeline.recipe import Recipe, StepSpec

OUTPUT_KINDS = ("model", "adapter", "data", "metrics")

# The step classes by name. A table filled once, at import, by the class definitions below
# it (as Olive's pass registry is); nothing writes to it at run time.
STEPS: dict[str, type[Step]] = {}


class StepError(RuntimeError):
    """A step that can't go on; the message says what was wrong and what to do."""


class Step:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type]
    outputs: ClassVar[Mapping[str, str]] = {}
    # Run even when done before: for a step that reads more than its references (register
    # reads every evaluate step's metrics and the recipe's hash) and is cheap.
    always_run: ClassVar[bool] = False
    # Its data references are opaque files (a GGUF, weights), not JSON lines: the runner's
    # preflight checks they exist without reading them as rows.
    opaque_data: ClassVar[bool] = False
    # Files of its dir that outlive a change of its fingerprint: caches that carry their own
    # validity key (distill's teacher answers are keyed by the teacher, its settings and each
    # prompt), so changing only the student does not ask the teacher again.
    kept_across_changes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in STEPS:
                raise TypeError(f"two step classes are named {cls.name!r}")
            assert all(k in OUTPUT_KINDS for k in cls.outputs.values()), cls
            STEPS[cls.name] = cls

    @classmethod
    def declared_outputs(cls, params: Any) -> Mapping[str, str]:
        """The outputs this step will produce with ``params`` (some depend on them)."""
        return cls.outputs

    @classmethod
    def references(cls, params: Any) -> Iterator[tuple[str, Any, str]]:
        """(field path, reference type, value) for each model/data reference in ``params``."""
        return walk_refs(params)

    @classmethod
    def preflight(cls, params: Any, device: str) -> None:
        """Check, before any step runs, what this host must offer (raise StepError if not)."""

    @classmethod
    def describe(cls) -> str:
        """The step's parameters with types, defaults and help; its outputs."""
        lines = [f"{cls.name}: {cls.summary}", "  parameters:"]
        lines += describe_params(cls.Params, indent="    ")
        outs = ", ".join(f"{k} ({v})" for k, v in cls.outputs.items())
        lines.append(f"  outputs: {outs or 'none'}")
        return "\n".join(lines)

    def run(self, ctx: StepContext, params: Any) -> dict[str, Path]:
        raise NotImplementedError


@dataclass
class StepRecord:
    """A finished step, as its ``done.json`` keeps it."""

    step: str
    uses: str
    fingerprint: str
    outputs: dict[str, Path]
    kinds: dict[str, str]
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # adapter output → its base (path or hub id)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """A model reference made concrete. ``source`` is what ``from_pretrained`` takes: a
    directory, or a hub id (then ``path`` is None). An adapter carries its base."""

    ref: str
    source: str
    path: Path | None
    kind: str  # "model" | "adapter"
    base: ResolvedModel | None = None

    def lineage(self) -> dict[str, Any]:
        return {"ref": self.ref}


@dataclass
class StepContext:
    """What a running step sees. Built by the runner; steps read it and fill ``lineage``
    (per output), ``bases`` (adapter output → base source) and ``info`` (facts for done.json)."""

    recipe: Recipe
    spec: StepSpec
    index: int
    count: int
    dir: Path
    work_dir: Path
    events: Events
    done: Mapping[str, StepRecord]
    device: str = "cpu"  # the recipe's device, resolved ("auto" became "cuda" or "cpu")
    inputs: Mapping[str, Path] | None = None
    base_dir: Path | None = None
    resolve_model: Callable[[str], Path] | None = None
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def task(self, part: str = "") -> str:
        """The progress task name for this step, e.g. "student/train"."""
        return f"{self.spec.id}/{part}" if part else self.spec.id

    def data(self, ref: str) -> Path:
        """The file a data reference points at."""
        parsed = refs.parse_data_ref(ref)
        if isinstance(parsed, refs.StepRef):
            path = self.done[parsed.step].outputs[parsed.output]
        else:
            path = external_path(ref, self.inputs, self.base_dir, "data file")
        if not path.is_file():
            raise StepError(f"data file {ref!r} ({path}) does not exist")
        return path

    def model(self, ref: str) -> ResolvedModel:
        """The model (or adapter, with its base) a model reference points at."""
        parsed = refs.parse_model_ref(ref)
        if isinstance(parsed, refs.StepRef):
            record = self.done[parsed.step]
            path = record.outputs[parsed.output]
            kind = record.kinds[parsed.output]
            base = record.bases.get(parsed.output)
            base_model = ResolvedModel(ref=f"{ref} (base)", source=base, path=_maybe_path(base),
                                       kind="model") if base else None
            return ResolvedModel(ref=ref, source=str(path), path=path, kind=kind, base=base_model)
        if isinstance(parsed, refs.HubRef):
            return ResolvedModel(ref=ref, source=parsed.hub_id, path=None, kind="model")
        if isinstance(parsed, refs.RegistryRef):
            if self.resolve_model is None:
                raise StepError(f"{ref}: no model registry to resolve it from")
            path = Path(self.resolve_model(ref))
        else:
            path = external_path(ref, None, self.base_dir, "model path")
        if not path.exists():
            raise StepError(f"model {ref!r}: {path} does not exist")
        return _local_model(ref, path)


def _local_model(ref: str, path: Path) -> ResolvedModel:
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        return ResolvedModel(ref=ref, source=str(path), path=path, kind="model")
    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise StepError(f"adapter {ref!r}: its adapter_config.json names no base model")
    return ResolvedModel(ref=ref, source=str(path), path=path, kind="adapter",
                         base=ResolvedModel(ref=f"{ref} (base)", source=str(base),
                                            path=_maybe_path(str(base)), kind="model"))


def _maybe_path(source: str) -> Path | None:
    return Path(source) if source.startswith("/") else None


def external_path(ref: str, inputs: Mapping[str, Path] | None, base_dir: Path | None, what: str) -> Path:
    """A path written in the recipe: the uploaded copy in a job, else relative to the recipe."""
    if inputs is not None and ref in inputs:
        return Path(inputs[ref])
    if base_dir is None:
        if inputs is not None and what == "data file":
            raise StepError(f"{what} {ref!r} was not uploaded with the job")
        if what == "model path":
            raise StepError(f"model path {ref!r}: a job can't read a directory named in a recipe; import "
                            "the model with `slmops models import` and use registry:NAME, or run the "
                            "recipe with --local")
        raise StepError(f"{what} {ref!r}: paths on the controller can't be used in a job; run the "
                        "recipe with --local")
    return (base_dir / Path(ref).expanduser()).resolve()
