"""`slmops controller`: run the controller in the foreground."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from controller.cli.output import CliError, json_option
from controller.settings import ControllerSettings, SettingsError, default_data_dir
from controller.telemetry.aggregate import parse_duration


@click.group()
def controller() -> None:
    """The controller process."""


@controller.command("start")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="state, CA and client config (default ~/.local/share/slmops/controller)")
@click.option("--listen", default="127.0.0.1:7443", show_default=True,
              help="mTLS address for agents and the CLI (port 0 picks one)")
@click.option("--enroll-listen", default="", help="bootstrap address for enrollment "
              "(default: the listen port + 1)")
@click.option("--db-url", default="", help="SQLAlchemy URL (default: SQLite in the data dir)")
@click.option("--retention", default="7d", show_default=True, help="how long telemetry is kept")
@click.option("--offline-after", default="15s", show_default=True,
              help="a device with no message for this long is offline")
@click.option("--max-jobs", type=int, default=1, show_default=True,
              help="pipeline jobs (worker processes) that run at once; the rest wait in the queue")
@click.option("--profiles", "profiles_file", type=click.Path(path_type=Path), default=None,
              help="custom device profiles (YAML), beside the built-in ones; `slmops profiles list "
                   "--file` checks one")
@click.option("--max-downloads", type=int, default=8, show_default=True,
              help="model downloads served at once; devices asking for more retry with jitter")
@click.option("--manifest-ttl", default="7d", show_default=True,
              help="how long a signed manifest stays valid; a device refuses an expired one")
@click.option("--rollout-max-in-flight", type=int, default=20, show_default=True,
              help="devices that rollouts update at once, over all rollouts")
@click.option("--rollout-waves-per-minute", type=float, default=10.0, show_default=True,
              help="waves a rollout starts per minute, at most")
@click.option("--rollout-tick", default="500ms", show_default=True,
              help="how often the rollout engine moves running rollouts on")
@json_option
def start(data_dir: Path | None, listen: str, enroll_listen: str, db_url: str, retention: str,
          offline_after: str, max_jobs: int, profiles_file: Path | None, max_downloads: int,
          manifest_ttl: str, rollout_max_in_flight: int, rollout_waves_per_minute: float,
          rollout_tick: str, as_json: bool) -> None:
    """Start the controller in the foreground; SIGTERM or Ctrl-C stops it gracefully."""
    from controller.server import Controller

    try:
        settings = ControllerSettings(
            data_dir=data_dir or default_data_dir(), listen=listen, enroll_listen=enroll_listen,
            db_url=db_url, retention_ms=parse_duration(retention),
            offline_after_ms=parse_duration(offline_after), max_concurrent_jobs=max_jobs,
            profiles_file=profiles_file, max_concurrent_downloads=max_downloads,
            manifest_ttl_s=parse_duration(manifest_ttl) // 1000,
            rollout_tick_s=parse_duration(rollout_tick) / 1000,
            rollout_max_in_flight=rollout_max_in_flight,
            rollout_waves_per_minute=rollout_waves_per_minute,
        )
    except (SettingsError, ValueError) as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def serve() -> None:
        ctl = Controller(settings)
        endpoints = await ctl.start()
        info = {"listen": endpoints.listen, "enroll": endpoints.enroll,
                "config": endpoints.config_path, "data_dir": str(settings.data_dir)}
        if as_json:
            click.echo(json.dumps(info), nl=True)
        else:
            click.echo(f"controller ready: mTLS {info['listen']}, enrollment {info['enroll']}\n"
                       f"client config: {info['config']} (export SLMOPS_CONFIG={info['config']})")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logging.getLogger(__name__).info("shutting down")
        await ctl.stop()

    try:
        asyncio.run(serve())
    except (OSError, RuntimeError) as e:
        raise CliError(f"can't start: {e}", "unavailable", 1) from None
