"""`slmops run`: a recipe as a job on the controller (or, with --local, in this process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from controller.cli import views
from controller.cli.follow import follow, interrupted, require_success
from controller.cli.output import CliError, console, emit, json_option, when
from controller.cli.pipeline_client import PipelineClient
from controller.jobs.states import JobState
from controller.settings import default_data_dir


def _load(path: Path) -> Any:
    from controller.pipeline.recipe import RecipeError, load_recipe

    try:
        return load_recipe(path)
    except RecipeError as e:
        raise CliError(str(e), "invalid_argument", 2) from None


def _data_files(recipe: Any) -> dict[str, Path]:
    """The data files the recipe names, as written -> the file here (relative to the recipe)."""
    from controller.pipeline.recipe import file_refs

    files = {}
    for ref in file_refs(recipe):
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else recipe.base_dir / path
        if not path.is_file():
            raise CliError(f"{recipe.origin}: data file {ref!r} ({path}) does not exist",
                           "invalid_argument", 2)
        files[ref] = path
    return files


def _run_local(recipe_path: Path, data_dir: Path, work_dir: Path | None, as_json: bool) -> None:
    from controller.pipeline.events import Cancelled, Events
    from controller.pipeline.jsonl import DataError
    from controller.pipeline.local import run_local
    from controller.pipeline.recipe import RecipeError
    from controller.pipeline.rich_events import RichEvents
    from controller.pipeline.runner import RunError

    try:
        if as_json:
            records = run_local(recipe_path, data_dir, work_dir, Events())
        else:
            with RichEvents() as events:
                records = run_local(recipe_path, data_dir, work_dir, events)
    except RecipeError as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    except (RunError, DataError) as e:
        raise CliError(f"{e}\nfix it and run the same command again: finished steps are kept",
                       "failed") from None
    except (KeyboardInterrupt, Cancelled):
        raise CliError("interrupted; run the same command again to resume where it stopped",
                       "interrupted", 130) from None
    data = {"models": [{"name": r.name, "version": r.version, "ref": r.ref, "kind": r.kind,
                        "params": r.params, "size_bytes": r.size_bytes, "metrics": r.metrics,
                        "created": when(r.created_at_ms)} for r in records],
            "data_dir": str(data_dir)}
    emit(data, as_json, lambda d: console.print(
        "registered " + (", ".join(m["ref"] for m in d["models"]) or "nothing") +
        f" in {d['data_dir']}", highlight=False))


def _summary(j: dict[str, Any]) -> None:
    if j["status"] == JobState.SUCCEEDED:
        console.print(f"job {j['id']} succeeded: registered {', '.join(j['models']) or 'nothing'}"
                      + (" (see `slmops models list`)" if j["models"] else ""), highlight=False)
    else:
        console.print(f"submitted job {j['id']} ({j['recipe_name']}), {j['status']}; follow it "
                      f"with `slmops jobs logs {j['id']} --follow`", highlight=False)


@click.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--follow", "-f", "follow_job", is_flag=True,
              help="draw the job's progress until it ends; the exit status is the job's")
@click.option("--local", "local", is_flag=True,
              help="run here, in this process, without a controller")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="with --local: the registry and work dirs (default ~/.local/share/slmops/"
                   "controller)")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="with --local: where the steps work (default: one per recipe in the data "
                   "dir, so a rerun resumes)")
@json_option
@click.pass_obj
def run(obj: dict, recipe: Path, follow_job: bool, local: bool, data_dir: Path | None,
        work_dir: Path | None, as_json: bool) -> None:
    """Run a recipe: submit it as a job to the controller (its data files are uploaded)."""
    if local:
        _run_local(recipe, data_dir or default_data_dir(), work_dir, as_json)
        return
    if data_dir is not None or work_dir is not None:
        raise CliError("--data-dir and --work-dir go with --local; a job works on the controller",
                       "invalid_argument", 2)
    loaded = _load(recipe)
    files = _data_files(loaded)
    client = PipelineClient(obj["config"])
    job = client.submit(loaded.text, files)
    if follow_job:
        if not as_json:
            console.print(f"submitted job {job.id} ({job.recipe_name})", highlight=False)
        try:
            job = follow(client, job.id, show=not as_json)
        except KeyboardInterrupt:
            raise interrupted(job.id) from None
        require_success(job)
    emit(views.job(job), as_json, _summary)
