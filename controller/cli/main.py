"""`slmops`: the operator's CLI. Every command has --json."""

from __future__ import annotations

from pathlib import Path

import click

from controller import __version__
from controller.cli.build_cmd import build
from controller.cli.bundle_cmd import bundle
from controller.cli.chat_cmd import chat
from controller.cli.controller_cmd import controller
from controller.cli.demo_cmd import demo
from controller.cli.devices_cmd import devices
from controller.cli.eval_cmd import eval_
from controller.cli.jobs_cmd import jobs
from controller.cli.models_cmd import models
from controller.cli.output import CliError, fail
from controller.cli.profiles_cmd import profiles
from controller.cli.rollout_cmd import rollout
from controller.cli.run_cmd import run
from controller.cli.telemetry_cmd import telemetry
from controller.cli.token_cmd import token


class Group(click.Group):
    """Turns CliError into a clean message (JSON with --json) and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CliError as e:
            fail(e, bool(ctx.meta.get("slmops.as_json")))


@click.group(cls=Group)
@click.version_option(__version__)
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="client config written by `controller start` (or SLMOPS_CONFIG)")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """slmops: run small language models on a fleet of edge devices."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


for command in (controller, token, devices, telemetry, run, jobs, models, eval_, profiles, build,
                bundle, rollout, demo, chat):
    cli.add_command(command)


def main() -> None:
    cli(obj={})
