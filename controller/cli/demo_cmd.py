"""`slmops demo`: the whole system in one command, on loopback (see controller/demo/flow.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
from rich.console import Console

from controller.cli.output import CliError, console, json_option
from controller.cli.token_cmd import duration_ms
from controller.settings import default_data_dir

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fresh(data_dir: Path) -> None:
    """Start in an empty dir: a previous demo's dir (it has demo.json) is replaced, unless what
    it kept is still running; any other non-empty dir is refused."""
    if not data_dir.exists() or not any(data_dir.iterdir()):
        return
    state_file = data_dir / "demo.json"
    if not state_file.is_file():
        raise CliError(f"--data-dir {data_dir} is not empty and holds no earlier demo (no demo.json); "
                       "give an empty or new directory", "invalid_argument", 2)
    try:
        state = json.loads(state_file.read_text())
        running = [p for p in state.get("processes", []) if _alive(int(p["pid"]))]
    except (OSError, ValueError, KeyError, TypeError):
        running = []
    if running:
        listed = ", ".join(f"{p['name']} (pid {p['pid']})" for p in running)
        raise CliError(f"the demo kept in {data_dir} is still running: {listed}; stop it (kill "
                       f"{' '.join(str(p['pid']) for p in running)}) or give another --data-dir",
                       "failed_precondition", 2)
    shutil.rmtree(data_dir)


@click.command("demo")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="where the demo's controller and agents keep their state "
                   "(default ~/.local/share/slmops/demo; an earlier demo there is replaced)")
@click.option("--quick", is_flag=True,
              help="the same flow on the same real model with less training "
                   "(recipes/smollm2-support-quick.yaml): fewer right answers, in about half the time")
@click.option("--recipe", type=click.Path(path_type=Path), default=None,
              help="the recipe to run instead (default: recipes/smollm2-support.yaml; "
                   "recipes/support-tiny.yaml is a toy on random-initialised models, for a fast look)")
@click.option("--keep", is_flag=True, help="leave the controller and agents running at the end")
@click.option("--bake", default="10s", show_default=True, help="how long each rollout wave bakes")
@json_option
def demo(data_dir: Path | None, quick: bool, recipe: Path | None, keep: bool, bake: str,
         as_json: bool) -> None:
    """Start a controller and three agents (int4, int8 and fp32 profiles), import the real
    pretrained model the recipe starts from (SmolLM2-135M-Instruct), run the demo recipe (a
    teacher fine-tuned from it, a smaller student distilled from the teacher, evaluation),
    build the student for each profile,
    roll it out canary first with health gates, ask each device through its OpenAI endpoint,
    benchmark each device, and print the fleet, the teacher against the student, the
    benchmarks and the telemetry. Nothing is left running unless --keep."""
    from controller.demo.flow import Demo, DemoOptions
    from controller.demo.report import as_json as result_json
    from controller.demo.report import print_report

    data_dir = (data_dir or default_data_dir().parent / "demo").expanduser().resolve()
    if quick and recipe is not None:
        raise CliError("--quick picks the recipe; give either --quick or --recipe", "invalid_argument", 2)
    default = "smollm2-support-quick.yaml" if quick else "smollm2-support.yaml"
    recipe = (recipe or RECIPES / default).expanduser()
    if not recipe.is_file():
        raise CliError(f"--recipe: {recipe} does not exist; pass a recipe file (the repository's "
                       f"recipes/{default} is the default)", "invalid_argument", 2)
    bake_s = duration_ms(bake, "--bake") / 1000
    _fresh(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    options = DemoOptions(data_dir=data_dir, recipe=recipe, keep=keep, bake_s=bake_s)
    progress = Console(stderr=True) if as_json else console
    try:
        result = Demo(options, progress, show=True).run()
    except KeyboardInterrupt:
        left = (f"the controller and agents keep running (--keep; pids in {data_dir / 'demo.json'})"
                if keep else "everything it started has stopped")
        raise CliError(f"interrupted; {left}", "interrupted", 130) from None
    if as_json:
        click.echo(json.dumps(result_json(result), indent=2, default=str))
    else:
        print_report(result)
