"""What a job runs, in the pipeline's terms: a recipe checked at submit (so a bad one is refused
before a job exists), the one-step recipe of an eval job, and what a finished worker left for
the controller (result.json's models to register; an eval job's metrics).

The recipe format and the worker's outputs belong to controller/pipeline (recipe.py, worker.py);
this module is the one place the job queue depends on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.validation import Invalid

REGISTRY_PREFIX = "registry:"
EVAL_STEP = "evaluate"


@dataclass(frozen=True)
class CheckedRecipe:
    name: str
    text: str
    file_refs: tuple[str, ...]  # data files as written: what must be uploaded with it
    registry_refs: tuple[str, ...]  # "registry:NAME[:VERSION]" as written


def check_recipe(text: str, field_name: str = "recipe_yaml") -> CheckedRecipe:
    """Invalid (naming the recipe's field, e.g. ``recipe_yaml: steps[2].uses: ...``) unless
    the recipe would run."""
    from controller.pipeline import refs
    from controller.pipeline.recipe import RecipeError, file_refs, load_recipe, registry_refs, step_refs

    try:
        recipe = load_recipe(text, origin=field_name)
    except RecipeError as e:
        raise Invalid(str(e)) from None
    for spec, field, ref_type, ref in step_refs(recipe):
        if ref_type is not refs.DataRef and isinstance(ref, refs.PathRef):
            raise Invalid(f"{field_name}: {spec.where}.with.{field}: {ref} is a model directory on "
                          "your machine, which a job on the controller can't read; register it "
                          "first (registry:NAME) or run with --local")
    return CheckedRecipe(recipe.name, text, tuple(file_refs(recipe)), tuple(registry_refs(recipe)))


def registry_name(ref: str) -> str:
    """``registry:NAME:3`` -> ``NAME:3`` (the registry's own reference)."""
    return ref.removeprefix(REGISTRY_PREFIX)


def eval_recipe(target: str, data_name: str, metrics: list[str] | None = None) -> CheckedRecipe:
    """The recipe of an eval job: evaluate one registered model on one uploaded data file, with
    ``metrics`` (the evaluate step's default when none)."""
    name = "eval-" + target.replace(":", "-v")
    step: dict[str, object] = {"models": [REGISTRY_PREFIX + target], "data": data_name}
    if metrics:
        step["metrics"] = list(metrics)
    text = yaml.safe_dump({
        "name": name[:64],
        "steps": [{"id": EVAL_STEP, "uses": "evaluate", "with": step}],
    }, sort_keys=False)
    return check_recipe(text, "eval recipe")


def eval_metrics(work_dir: Path) -> dict[str, Any]:
    """The metrics an eval job's evaluate step wrote (metrics.json: {"models": [{"ref",
    "metrics"}]}, one model here)."""
    path = work_dir / "steps" / EVAL_STEP / "metrics.json"
    try:
        report = json.loads(path.read_text())
        metrics = report["models"][0]["metrics"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"the evaluate step left no readable metrics ({path.name}: {e!r})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path.name}: the metrics are not an object")
    return metrics


def result_entries(result_path: Path, work_dir: Path) -> list[dict[str, Any]]:
    """result.json's ``register`` entries, each with a path inside the job's work directory
    (the worker writes it, but a path outside would let a recipe register any directory)."""
    try:
        result = json.loads(result_path.read_text())
    except FileNotFoundError:
        raise ValueError("the worker exited 0 but wrote no result.json") from None
    except ValueError as e:
        raise ValueError(f"result.json is not JSON: {e}") from None
    entries = result.get("register", []) if isinstance(result, dict) else None
    if not isinstance(entries, list):
        raise Invalid("result.json: register: expected a list of models")
    work = work_dir.resolve()
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise Invalid(f"result.json: register[{i}]: expected an object with a path")
        path = (work / entry["path"]).resolve()
        if not path.is_relative_to(work):
            raise Invalid(f"result.json: register[{i}].path: {entry['path']!r} is outside the "
                          "job's work directory")
        checked.append({**entry, "path": str(path)})
    return checked
