"""Run a recipe's steps in order, in a work directory, resuming where a previous run stopped.

Layout of ``work_dir``::

    steps/<id>/              the step's own files (models, data, checkpoints, partial results)
    steps/<id>/fingerprint   what the step was started with (its params, the seed, its inputs)
    steps/<id>/done.json     written atomically when the step succeeded: outputs, lineage, info
    result.json              written atomically after the LAST step succeeded: the models to
                             register ({"register": [...]}, see worker.py); never on failure

A rerun with the same work dir skips steps whose done.json matches their fingerprint, and runs
an interrupted step again in its directory, where it picks up its own partial work (labelled
answers, training checkpoints, models already measured). A step whose parameters or inputs
changed is started afresh, and so is every step that uses its outputs. A register step always
runs again (it is cheap, and reads every evaluate step before it and the recipe's hash).

Progress: each step reports ``events.step(step, state, index, count)`` (state "started",
"done" or "skipped") when ``events`` has such a method (:class:`StepEvents`), else
``events.progress("recipe", finished, count, step=..., state=...)``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from controller.pipeline import refs
from controller.pipeline.chatdata import check_file
from controller.pipeline.events import Cancelled, Events
from controller.pipeline.jsonl import DataError, write_atomic
from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.recipe import Recipe, RecipeError, StepSpec, step_refs
from controller.pipeline.steps.base import StepContext, StepError, StepRecord, external_path
from controller.pipeline.steps.params import columns_for, to_plain

RESULT_FILE = "result.json"


class RunError(RuntimeError):
    """A step failed; the message names the step and says why. ``step`` is its id."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


@runtime_checkable
class StepEvents(Protocol):
    def step(self, step: str, state: str, index: int, count: int) -> None: ...


@dataclass
class RunResult:
    outputs: dict[str, dict[str, Path]]
    result_path: Path
    entries: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_recipe(recipe: Recipe, work_dir: Path, events: Events, *,
               resolve_model: Callable[[str], Path] | None = None, inputs: Mapping[str, Path] | None = None,
               base_dir: Path | None = None) -> RunResult:
    """Run every step of ``recipe`` in ``work_dir``; see the module docstring. Raises
    RecipeError (before anything runs) for references that can't be resolved, RunError for a
    failed step, Cancelled when ``events`` was asked to cancel."""
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(work_dir):
        result_path = work_dir / RESULT_FILE
        result_path.unlink(missing_ok=True)
        resolver = _CachingResolver(resolve_model)
        externals = _preflight(recipe, inputs, base_dir, resolver)
        device = _resolve_device(recipe, events)
        events.log(f"recipe {recipe.name}: {len(recipe.steps)} steps in {work_dir} (device {device})")
        done: dict[str, StepRecord] = {}
        result = RunResult(outputs={}, result_path=result_path, entries=[])
        count = len(recipe.steps)
        for index, spec in enumerate(recipe.steps):
            events.check_cancelled()
            fingerprint = _fingerprint(recipe, spec, done, externals)
            step_dir = work_dir / "steps" / spec.id
            record = None if spec.step_class.always_run else _load_done(step_dir, spec, fingerprint, work_dir)
            if record is not None:
                result.skipped.append(spec.id)
                report_step(events, spec.id, "skipped", index, count)
            else:
                _prepare(step_dir, fingerprint, spec.step_class.kept_across_changes)
                report_step(events, spec.id, "started", index, count)
                ctx = StepContext(recipe=recipe, spec=spec, index=index, count=count, dir=step_dir,
                                  work_dir=work_dir, events=ScopedEvents(events, spec.id), done=done,
                                  device=device, inputs=inputs, base_dir=base_dir, resolve_model=resolver)
                record = _run_step(ctx, fingerprint)
                _write_done(step_dir, record, work_dir)
                result.ran.append(spec.id)
                report_step(events, spec.id, "done", index, count)
            done[spec.id] = record
            result.outputs[spec.id] = dict(record.outputs)
        result.entries = _entries(done)
        write_atomic(result_path, (json.dumps({"recipe": recipe.name, "recipe_sha256": recipe.sha256,
                                               "register": result.entries}, indent=2) + "\n").encode())
        events.log(f"recipe {recipe.name}: finished; {len(result.entries)} model(s) to register")
        return result


def report_step(events: Events, step: str, state: str, index: int, count: int) -> None:
    if isinstance(events, StepEvents):
        events.step(step, state, index, count)
    else:
        events.progress("recipe", index + (state != "started"), count, step=step, state=state)


class ScopedEvents(Events):
    """The run's events as one step sees them: progress tasks are named "<step id>/<task>", so
    a listener can tell whose bar it is; cancellation is the run's."""

    def __init__(self, inner: Events, step: str) -> None:
        super().__init__()
        self.inner, self.prefix = inner, f"{step}/"

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        name = task if task.startswith(self.prefix) else self.prefix + task
        self.inner.progress(name, done, total, **fields)

    def log(self, message: str) -> None:
        self.inner.log(message)

    def request_cancel(self) -> None:
        self.inner.request_cancel()

    def check_cancelled(self) -> None:
        self.inner.check_cancelled()


def _run_step(ctx: StepContext, fingerprint: str) -> StepRecord:
    spec = ctx.spec
    try:
        outputs = spec.step_class().run(ctx, spec.params)
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as e:  # any failure of a step ends the run with its name on it
        ctx.events.check_cancelled()  # a child killed by the cancel fails; that is a cancel
        raise RunError(spec.id, f"step {spec.id!r} ({spec.uses}) failed: {e}") from e
    declared = spec.step_class.declared_outputs(spec.params)
    missing = [name for name in declared if name not in outputs or not Path(outputs[name]).exists()]
    if missing or set(outputs) - set(declared):
        raise RunError(spec.id, f"step {spec.id!r} ({spec.uses}) returned outputs {sorted(outputs)}, "
                                f"declared {sorted(declared)} (a bug in the step)")
    lineage = {name: dict(ctx.lineage.get(name, {})) for name, kind in declared.items()
               if kind in ("model", "adapter")}
    for name, item in lineage.items():
        item.setdefault("kind", declared[name])
        item.setdefault("seed", ctx.seed)
        item.setdefault("hyperparameters", to_plain(spec.params))
    lineage.update({k: v for k, v in ctx.lineage.items() if k not in lineage})
    return StepRecord(step=spec.id, uses=spec.uses, fingerprint=fingerprint,
                      outputs={k: Path(v) for k, v in outputs.items()}, kinds=dict(declared),
                      lineage=lineage, bases=dict(ctx.bases), info=dict(ctx.info))


def _entries(done: Mapping[str, StepRecord]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    for record in done.values():
        for entry in record.info.get("register", []):
            if entry["name"] in owner:
                raise RunError(record.step, f"model name {entry['name']!r} is registered by both "
                                            f"{owner[entry['name']]!r} and {record.step!r}")
            owner[entry["name"]] = record.step
            entries.append(entry)
    return entries


class _CachingResolver:
    """resolve_model, asked once per registry reference."""

    def __init__(self, resolve: Callable[[str], Path] | None) -> None:
        self._resolve = resolve
        self._cache: dict[str, Path] = {}

    def __call__(self, ref: str) -> Path:
        if ref not in self._cache:
            if self._resolve is None:
                raise StepError(f"{ref}: no model registry here to resolve it")
            self._cache[ref] = Path(self._resolve(ref))
        return self._cache[ref]


def _preflight(recipe: Recipe, inputs: Mapping[str, Path] | None, base_dir: Path | None,
               resolver: _CachingResolver) -> dict[str, str]:
    """Check every reference outside the recipe and every step's host needs before anything
    runs; returns what each external reference is (a file hash, a directory), for fingerprints."""
    problems: list[str] = []
    externals: dict[str, str] = {}
    for spec, field_path, ref_type, parsed in step_refs(recipe):
        where, text = f"{spec.where}.with.{field_path}", str(parsed)
        try:
            if isinstance(parsed, refs.PathRef):
                what = "data file" if ref_type is refs.DataRef else "model path"
                path = external_path(text, inputs, base_dir, what)
                if ref_type is refs.DataRef:
                    if not path.is_file():
                        raise StepError(f"data file {text!r} does not exist ({path})")
                    # Malformed rows fail now, by line number, not after an hour of training.
                    if not spec.step_class.opaque_data:
                        check_file(path, columns_for(spec.step_class.Params, field_path))
                    externals[text] = file_sha256(path)
                else:
                    if not path.is_dir():
                        raise StepError(f"model path {text!r} is not a directory ({path})")
                    externals[text] = str(path)
            elif isinstance(parsed, refs.RegistryRef):
                path = resolver(text)
                if not path.is_dir():
                    raise StepError(f"{text} resolved to {path}, which is not a directory")
                externals[text] = str(path)
            elif isinstance(parsed, refs.HubRef):
                externals[text] = text
        except DataError as e:
            problems.append(f"{where}: {str(e).replace(str(path), text)}")  # the name as written
        except (StepError, LookupError, ValueError) as e:
            problems.append(f"{where}: {e}")
    for spec in recipe.steps:
        try:
            spec.step_class.preflight(spec.params, recipe.device)
        except StepError as e:
            problems.append(f"{spec.where}: {e}")
    if problems:
        raise RecipeError(recipe.origin, problems)
    return externals


def _resolve_device(recipe: Recipe, events: Events) -> str:
    from controller.pipeline.modelkit import ModelError, resolve_device

    try:
        return resolve_device(recipe.device, events)
    except ModelError as e:
        raise RecipeError(recipe.origin, [f"device: {e}"]) from None


def _fingerprint(recipe: Recipe, spec: StepSpec, done: Mapping[str, StepRecord],
                 externals: Mapping[str, str]) -> str:
    upstream: dict[str, str] = {}
    for _field, ref_type, value in spec.step_class.references(spec.params):
        parsed = (refs.parse_data_ref if ref_type is refs.DataRef else refs.parse_model_ref)(value)
        if isinstance(parsed, refs.StepRef):
            upstream[value] = done[parsed.step].fingerprint
        else:
            upstream[value] = externals.get(str(parsed), str(parsed))
    text = json.dumps({"uses": spec.uses, "with": spec.raw, "seed": recipe.seed, "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load_done(step_dir: Path, spec: StepSpec, fingerprint: str, work_dir: Path) -> StepRecord | None:
    path = step_dir / "done.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("fingerprint") != fingerprint or data.get("uses") != spec.uses:
        return None
    outputs = {k: work_dir / v for k, v in data["outputs"].items()}
    if not all(p.exists() for p in outputs.values()):
        return None
    return StepRecord(step=spec.id, uses=spec.uses, fingerprint=fingerprint, outputs=outputs,
                      kinds=data["kinds"], lineage=data.get("lineage", {}), bases=data.get("bases", {}),
                      info=data.get("info", {}))


def _prepare(step_dir: Path, fingerprint: str, keep: Sequence[str] = ()) -> None:
    """Keep an interrupted step's files only if it was started with the same fingerprint, and
    the step's ``keep`` files (caches with their own validity key) in any case."""
    import shutil

    marker = step_dir / "fingerprint"
    if step_dir.exists():
        same = marker.is_file() and marker.read_text(encoding="utf-8").strip() == fingerprint
        if same:
            (step_dir / "done.json").unlink(missing_ok=True)
            return
        for child in step_dir.iterdir():
            if child.name in keep and child.is_file():
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        step_dir.mkdir(parents=True)
    write_atomic(marker, fingerprint.encode("utf-8"))


def _write_done(step_dir: Path, record: StepRecord, work_dir: Path) -> None:
    data = {"step": record.step, "uses": record.uses, "fingerprint": record.fingerprint,
            "outputs": {k: os.path.relpath(v, work_dir) for k, v in record.outputs.items()},
            "kinds": record.kinds, "lineage": record.lineage, "bases": record.bases, "info": record.info,
            "finished_at": round(time.time(), 3)}
    write_atomic(step_dir / "done.json", (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


@contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """One run per work dir at a time (the lock goes away with the process that held it)."""
    with (work_dir / ".lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError("", f"work dir {work_dir} is in use by another run") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
