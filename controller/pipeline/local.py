"""``slmops run --local``: a recipe run in this process, registered in a local registry.

The same runner as a controller job, with two differences: paths in the recipe are files on
this machine (relative to the recipe file), and ``registry:`` references and the results go
to the registry in ``data_dir`` (``<data_dir>/fleet.db``, models under ``<data_dir>/models``).
Models are registered only after every step succeeded. A rerun of the same recipe with the
same data dir resumes in the same work dir (``<data_dir>/runs/<name>-<sha12>``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from controller.pipeline.events import Events
from controller.pipeline.recipe import Recipe, load_recipe
from controller.pipeline.runner import run_recipe

if TYPE_CHECKING:
    from controller.registry import ModelRecord


def default_work_dir(data_dir: Path, recipe: Recipe) -> Path:
    """Where a local run of ``recipe`` works: the same for the same recipe text, so a rerun resumes."""
    return Path(data_dir) / "runs" / f"{recipe.name}-{recipe.sha256[:12]}"


def run_local(recipe_path: Path, data_dir: Path, work_dir: Path | None, events: Events) -> list[ModelRecord]:
    """Run the recipe at ``recipe_path`` and register what its register steps name. Raises
    RecipeError (bad recipe, before anything runs), RunError (a step failed), Cancelled."""
    from controller.registry import ModelRegistry

    recipe = load_recipe(Path(recipe_path))
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")

    def resolve_model(ref: str) -> Path:
        return Path(registry.path(registry.get(ref.removeprefix("registry:"))))

    work = Path(work_dir) if work_dir is not None else default_work_dir(data_dir, recipe)
    result = run_recipe(recipe, work, events, resolve_model=resolve_model, base_dir=recipe.base_dir)
    if not result.entries:
        events.log("nothing to register (the recipe has no register step)")
        return []
    records = registry.register(result.entries, job_id=f"local-{uuid.uuid4().hex[:12]}")
    events.log("registered " + ", ".join(f"{r.name}:{r.version}" for r in records))
    return list(records)
