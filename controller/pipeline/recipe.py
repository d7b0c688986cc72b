"""Recipes: YAML that names the steps of a pipeline run, validated before anything runs.

```yaml
name: support-demo          # letters, digits, '.', '_', '-'
seed: 0
device: auto                # auto | cpu | cuda | cuda:N
steps:
  - id: data
    uses: generate_task     # a step class, see controller/pipeline/steps
    with: {train: 3000}
  - id: teacher
    uses: init_model
    with:
      tokenizer_from: ${data.train}   # an earlier step's output (quote it inside {...} or [...])
```

Every problem is reported with where it is — ``recipes/x.yaml: steps[3].with.lora.r: expected
an integer, got 'eight'`` — all of them at once, one per line, in a :class:`RecipeError`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.pipeline import refs
from controller.pipeline.steps import STEPS, Step
from controller.pipeline.steps.params import ParamError, build

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]+)$")
TOP_FIELDS = ("name", "description", "seed", "device", "steps")
STEP_FIELDS = ("id", "uses", "with")
MAX_RECIPE_BYTES = 1024 * 1024


class RecipeError(ValueError):
    """A recipe that can't run. ``problems`` are "field: what is wrong" lines."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"{origin}: {p}" for p in problems))
        self.origin, self.problems = origin, problems


@dataclass(frozen=True)
class StepSpec:
    index: int
    id: str
    uses: str
    params: Any  # the step class's Params instance
    raw: Mapping[str, Any]  # the ``with:`` mapping as written

    @property
    def where(self) -> str:
        return f"steps[{self.index}]"

    @property
    def step_class(self) -> type[Step]:
        return STEPS[self.uses]


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    device: str
    steps: tuple[StepSpec, ...]
    text: str
    sha256: str
    origin: str  # the file name, or "<recipe>" for text
    path: Path | None = None
    description: str = ""

    @property
    def base_dir(self) -> Path | None:
        """Where relative paths in the recipe start (the recipe file's folder)."""
        return self.path.resolve().parent if self.path is not None else None

    def step(self, step_id: str) -> StepSpec:
        return next(s for s in self.steps if s.id == step_id)


def load_recipe(source: Path | str, *, origin: str | None = None) -> Recipe:
    """A Path is read as a recipe file; a str is the recipe's YAML text (e.g. from the wire)."""
    if isinstance(source, Path):
        label = origin or str(source)
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise RecipeError(label, ["no such file"]) from None
        except OSError as e:
            raise RecipeError(label, [f"can't read it: {e.strerror}"]) from None
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(label, [f"{len(data)} bytes; a recipe is at most {MAX_RECIPE_BYTES}"])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecipeError(label, [f"not UTF-8 text (byte {e.start})"]) from None
        return parse_recipe(text, label, path=source)
    return parse_recipe(source, origin or "<recipe>")


def parse_recipe(text: str, origin: str, path: Path | None = None) -> Recipe:
    doc = _load_yaml(text, origin)
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise RecipeError(origin, ["expected a mapping with name, steps (and seed, device)"])
    for key in doc:
        if key not in TOP_FIELDS:
            problems.append(f"{key}: unknown field; {_suggest(str(key), TOP_FIELDS)}")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(f"name: expected letters, digits, '.', '_' or '-' (at most 64), got {name!r}")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        problems.append(f"seed: expected a non-negative integer, got {seed!r}")
    device = doc.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.match(device):
        problems.append(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description: expected a string, got {description!r}")
    raw_steps = doc.get("steps")
    steps: list[StepSpec] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append("steps: expected a non-empty list of steps")
    else:
        steps, broken = _parse_steps(raw_steps, problems)
        problems.extend(_check_refs(steps, broken))
    if problems:
        raise RecipeError(origin, problems)
    assert isinstance(name, str)  # checked above: a problem otherwise
    return Recipe(name=name, seed=seed, device=device, steps=tuple(steps), text=text,
                  sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), origin=origin,
                  path=path, description=description)


def _parse_steps(raw_steps: list[Any], problems: list[str]) -> tuple[list[StepSpec], set[str]]:
    """The well-formed steps, and the ids of the others (already reported)."""
    steps: list[StepSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_steps):
        where = f"steps[{i}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: expected a mapping with id, uses and with")
            continue
        unknown = [k for k in raw if k not in STEP_FIELDS]
        for key in unknown:
            problems.append(f"{where}.{key}: unknown field; {_suggest(str(key), STEP_FIELDS)}")
        step_id, uses = raw.get("id"), raw.get("uses")
        if not isinstance(step_id, str) or not refs.STEP_ID.match(step_id):
            problems.append(f"{where}.id: expected a name of letters, digits, '_' or '-' starting "
                            f"with a letter, got {step_id!r}")
            continue
        if step_id in seen:
            problems.append(f"{where}.id: duplicate id {step_id!r} (also steps[{seen[step_id]}])")
            continue
        seen[step_id] = i
        if uses not in STEPS:
            close = difflib.get_close_matches(str(uses), STEPS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(f"{where}.uses: unknown step {uses!r}; {hint}known: {', '.join(sorted(STEPS))}")
            continue
        with_ = raw.get("with") or {}
        try:
            params = build(STEPS[uses].Params, with_, "")
        except ParamError as e:
            problems.append(f"{where}.with{'.' + e.field if e.field else ''}: {e.problem}")
            continue
        if unknown:
            continue
        steps.append(StepSpec(index=i, id=step_id, uses=uses, params=params, raw=dict(with_)))
    return steps, set(seen) - {s.id for s in steps}


def _check_refs(steps: list[StepSpec], broken: set[str]) -> list[str]:
    problems: list[str] = []
    by_id = {s.id: s for s in steps}
    for spec in steps:
        for field, ref_type, value in spec.step_class.references(spec.params):
            where = f"{spec.where}.with.{field}"
            parsed = (refs.parse_data_ref if ref_type is refs.DataRef else refs.parse_model_ref)(value)
            if not isinstance(parsed, refs.StepRef) or parsed.step in broken:
                continue
            target = by_id.get(parsed.step)
            if target is None:
                close = difflib.get_close_matches(parsed.step, by_id, n=1)
                hint = f"did you mean {close[0]}?" if close else f"steps: {', '.join(by_id)}"
                problems.append(f"{where}: {value}: no step {parsed.step!r} in this recipe; {hint}")
                continue
            if target.index >= spec.index:
                what = "this step itself" if target is spec else f"{target.where}, which runs later"
                problems.append(f"{where}: {value} refers to {what}; use an earlier step's output")
                continue
            outputs = target.step_class.declared_outputs(target.params)
            kind = outputs.get(parsed.output)
            if kind is None:
                problems.append(f"{where}: {value}: step {target.id!r} ({target.uses}) has no output "
                                f"{parsed.output!r}; its outputs: {', '.join(outputs) or 'none'}")
            elif kind not in refs.ACCEPTS[ref_type]:
                problems.append(f"{where}: {value} is {_kind_text(kind)}; this field needs "
                                f"{' or '.join(_kind_text(k) for k in refs.ACCEPTS[ref_type])}")
    return problems


def _kind_text(kind: str) -> str:
    return {"model": "a full model", "adapter": "a LoRA adapter (merge it with merge: true for a full "
            "model)", "data": "a data file", "metrics": "a metrics file"}[kind]


def step_refs(recipe: Recipe) -> list[tuple[StepSpec, str, Any, refs.Ref]]:
    """Every reference in the recipe: (step, field path, reference type, parsed reference)."""
    out = []
    for spec in recipe.steps:
        for field, ref_type, value in spec.step_class.references(spec.params):
            parse = refs.parse_data_ref if ref_type is refs.DataRef else refs.parse_model_ref
            out.append((spec, field, ref_type, parse(value)))
    return out


def file_refs(recipe: Recipe) -> list[str]:
    """Every data-file path as written in the recipe (what the CLI uploads with a job)."""
    found = [str(r) for _s, _f, kind, r in step_refs(recipe)
             if kind is refs.DataRef and isinstance(r, refs.PathRef)]
    return list(dict.fromkeys(found))


def registry_refs(recipe: Recipe) -> list[str]:
    """Every ``registry:`` model reference (what the controller resolves before a job starts)."""
    found = [str(r) for _s, _f, _t, r in step_refs(recipe) if isinstance(r, refs.RegistryRef)]
    return list(dict.fromkeys(found))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        lines = text.splitlines()
        hint = ""
        if mark is not None and mark.line < len(lines) and "${" in lines[mark.line]:
            hint = ' (a ${...} reference inside {...} or [...] must be quoted: "${step.output}")'
        raise RecipeError(origin, [f"malformed YAML: {where}{problem}{hint}"]) from None


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
