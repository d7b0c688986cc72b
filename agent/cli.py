"""slmops-agent: the device daemon's command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from google.protobuf import json_format

from agent import __version__
from agent.bench_cmd import bench
from agent.daemon import Agent, AgentSettings, SettingsError
from agent.enroll import EnrollmentError
from agent.enrollment_proof import TokenFormatError
from agent.identity import Identity, IdentityError
from agent.link import DeviceRefused, LinkSettings

if TYPE_CHECKING:
    from agent.engine import ModelSlot

EXIT_USAGE, EXIT_ENROLL, EXIT_REFUSED = 2, 3, 4


def _parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


def _fail(message: str, code: int, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": message}))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(__version__)
def main() -> None:
    """The slmops agent: enrolls this device, streams its telemetry, keeps it in sync."""


@main.command()
@click.option("--controller", default="", help="the controller's mTLS address, HOST:PORT")
@click.option("--enroll-address", default="", help="bootstrap address (default: port + 1)")
@click.option("--token", default="", envvar="SLMOPS_TOKEN", help="enrollment token (first run)")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option("--name", default="", help="device name (first run)")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE, repeatable (first run)")
@click.option("--telemetry-interval", type=float, default=10.0, show_default=True, help="seconds")
@click.option("--heartbeat-interval", type=float, default=5.0, show_default=True, help="seconds")
@click.option("--batch-max", type=int, default=500, show_default=True, help="samples per batch")
@click.option("--spool-max-samples", type=int, default=50_000, show_default=True)
@click.option("--max-backoff", type=float, default=30.0, show_default=True, help="seconds")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="a model variant directory to serve until the controller's release is active")
@click.option("--serve", "serve_listen", default="127.0.0.1:8080", show_default=True,
              help="HOST:PORT of the OpenAI-compatible HTTP server, once there is a model to serve")
@click.option("--grpc-listen", default="127.0.0.1:50051", show_default=True,
              help="HOST:PORT of the gRPC InferenceService ('' for none)")
@click.option("--max-download-rate", type=float, default=0.0, show_default=True,
              help="cap model downloads at this many MB/s (0: no cap)")
@click.option("--keep-free-mb", type=click.IntRange(0), default=64, show_default=True,
              help="a model download that would leave less free space on the data dir's disk fails")
@click.option("--download-window-kb", type=int, default=256, show_default=True,
              help="HTTP/2 receive window of model downloads: raise it to bandwidth x round-trip on slow "
                   "links; what is in flight is re-sent if the agent dies")
@click.option("--api-key", default="", envvar="SLMOPS_API_KEY", help="require this Bearer key on /v1/*")
@click.option("--bench-timeout", type=float, default=1800.0, show_default=True,
              help="seconds a benchmark the controller asks for may take")
@click.option("--json", "as_json", is_flag=True, help="log lines as JSON")
def run(controller: str, enroll_address: str, token: str, data_dir: Path, name: str,
        labels: tuple[str, ...], telemetry_interval: float, heartbeat_interval: float,
        batch_max: int, spool_max_samples: int, max_backoff: float, model_dir: Path | None,
        serve_listen: str, grpc_listen: str, max_download_rate: float, keep_free_mb: int,
        download_window_kb: int, api_key: str, bench_timeout: float, as_json: bool) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C."""
    fmt = ('{"time":"%(asctime)s","level":"%(levelname)s","msg":"%(message)s"}' if as_json
           else "%(asctime)s %(levelname)s %(message)s")
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    try:
        serve_host, serve_port = _parse_listen(serve_listen)
        settings = AgentSettings(
            data_dir=data_dir, controller=controller, enroll_address=enroll_address, token=token,
            name=name, labels=_parse_labels(labels), telemetry_interval_s=telemetry_interval,
            spool_max_samples=spool_max_samples, model=model_dir, bench_timeout_s=bench_timeout,
            link=LinkSettings(heartbeat_interval_s=heartbeat_interval,
                              batch_max_samples=batch_max, max_backoff_s=max_backoff),
            serve_host=serve_host, serve_port=serve_port, grpc_listen=grpc_listen, api_key=api_key,
            download_bytes_per_s=max_download_rate * 1e6, keep_free_bytes=keep_free_mb * 2**20,
            download_window_bytes=download_window_kb << 10,
        )
        slot = _load_slot(model_dir, as_json) if model_dir is not None else None
        asyncio.run(_run_until_signal(Agent(settings, slot)))
    except OSError as e:
        _fail(f"can't listen: {e.strerror or e}", EXIT_USAGE, as_json)
    except (SettingsError, TokenFormatError, IdentityError) as e:
        _fail(str(e), EXIT_USAGE, as_json)
    except EnrollmentError as e:
        _fail(str(e), EXIT_ENROLL, as_json)
    except DeviceRefused as e:
        _fail(f"the controller refused this device: {str(e).rstrip('.')}. To rejoin, move "
              f"{data_dir / 'identity.json'} aside and run again with a new --token.",
              EXIT_REFUSED, as_json)


def _load_slot(model_dir: Path, as_json: bool, threads: int | None = None, name: str = "") -> ModelSlot:
    """A model slot with ``model_dir`` loaded; exits with a message naming the file if the
    variant is damaged."""
    from agent.engine import ModelSlot, VariantError

    slot = ModelSlot(threads=threads)
    try:
        slot.load(model_dir, name=name or None)
    except VariantError as e:
        _fail(str(e), EXIT_USAGE, as_json)
    return slot


async def _run_until_signal(agent: Agent) -> None:
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopped")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("."))
@click.option("--json", "as_json", is_flag=True)
def hardware(data_dir: Path, as_json: bool) -> None:
    """Show what this agent detects about the machine."""
    from agent.hardware import detect_hardware

    data = json_format.MessageToDict(detect_hardware(data_dir))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key:>18}: {', '.join(map(str, value)) if isinstance(value, list) else value}")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def status(data_dir: Path, as_json: bool) -> None:
    """Show this device's identity, its telemetry spool, and the releases it runs."""
    from agent.delivery.slots import Slots, SlotsError
    from agent.telemetry.spool import Spool

    try:
        identity = Identity.load(data_dir)
    except IdentityError as e:
        _fail(str(e), EXIT_USAGE, as_json)
        return
    spool_path = data_dir / "telemetry.db"
    info: dict[str, object] = {
        "enrolled": identity is not None,
        "device_id": identity.device_id if identity else None,
        "controller": identity.controller if identity else None,
    }
    if spool_path.exists():
        spool = Spool(spool_path)
        info.update(spool_pending=spool.pending_count(), spool_dropped_total=spool.dropped_total(),
                    last_acked_seq=spool.last_acked_seq(), next_seq=spool.next_seq())
        spool.close()
    if (data_dir / "models").is_dir():
        try:
            slots = Slots(data_dir / "models")
            active, previous = slots.active(), slots.previous()
        except SlotsError as e:
            _fail(str(e), EXIT_USAGE, as_json)
            return
        info.update(active_release=active.release if active else None,
                    active_model=active.model if active else None,
                    previous_release=previous.release if previous else None,
                    previous_model=previous.model if previous else None)
    deploy = data_dir / "deploy.json"
    if deploy.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            state = json.loads(deploy.read_text())
            info.update(latest_release=state.get("release"), latest_phase=state.get("phase"),
                        latest_reason=state.get("reason") or None)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            click.echo(f"{key:>20}: {value}")


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)", param_hint="--listen")
    return host, int(port)


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="a variant directory (genai_config.json, model.onnx, tokenizer.json); without it the "
                   "server starts empty and answers 503 model_not_loaded")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to bind")
@click.option("--grpc-listen", default="127.0.0.1:50051", show_default=True,
              help="HOST:PORT of the gRPC InferenceService ('' for none)")
@click.option("--api-key", default="", envvar="SLMOPS_API_KEY",
              help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
@click.option("--name", default="", help="the model id clients send (default: the registered model's name "
              "from the variant's slmops-variant.json, else the directory's name)")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="generations that run at once")
@click.option("--max-queued", type=click.IntRange(0), default=64, show_default=True,
              help="requests that may wait for a worker; more get 503")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="onnxruntime threads (default: one per core)")
@click.option("--json", "as_json", is_flag=True, help="print the address and model as JSON")
def serve(model_dir: Path | None, listen: str, grpc_listen: str, api_key: str, name: str, workers: int,
          max_queued: int, threads: int | None, as_json: bool) -> None:
    """Serve a model variant to local apps (OpenAI-compatible HTTP and gRPC) until SIGTERM or
    Ctrl-C."""
    from agent.engine import ModelSlot

    host, port = _parse_listen(listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    slot = (_load_slot(model_dir, as_json, threads, name) if model_dir is not None
            else ModelSlot(threads=threads))
    try:
        asyncio.run(_serve_until_signal(slot, host, port, grpc_listen, api_key or None, workers, max_queued,
                                        as_json))
    except OSError as e:
        _fail(f"can't listen on {listen}: {e.strerror or e}", EXIT_USAGE, as_json)
    finally:
        slot.unload()  # frees the model before exit (onnxruntime-genai reports leaks otherwise)


async def _serve_until_signal(slot: ModelSlot, host: str, port: int, grpc_listen: str, api_key: str | None,
                              workers: int, max_queued: int, as_json: bool) -> None:
    from agent.serve.local import start_local_serving

    running = await start_local_serving(slot, host, port, grpc_listen, api_key=api_key, workers=workers,
                                        max_queued=max_queued)
    info = running.info()
    if as_json:
        click.echo(json.dumps(info))
    elif info["model"]:
        click.echo(f"serving {info['model']} ({info['precision']}) on {info['url']}/v1, "
                   f"gRPC {info['grpc'] or 'off'}")
    else:
        click.echo(f"listening on {info['url']}/v1 with no model loaded")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()


main.add_command(bench)


@main.command("install-bundle")
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--data-dir", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def install_bundle(bundle: Path, data_dir: Path, as_json: bool) -> None:
    """Install a model bundle (slmops bundle export) on a device with no network path to the
    controller: the same signature, profile, release, hash and on-device gate checks as a
    network delivery. Run it while the agent is stopped; the agent serves it when it starts."""
    from agent.datadir_lock import DataDirLock, DataDirLocked

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        identity = Identity.load(data_dir)
    except IdentityError as e:
        _fail(str(e), EXIT_USAGE, as_json)
        return
    if identity is None:
        _fail(f"{data_dir} holds no identity: enroll this device first (slmops-agent run --token ...); "
              "the bundle's signature is checked against the controller key pinned at enrollment",
              EXIT_USAGE, as_json)
        return
    lock = DataDirLock(data_dir)
    try:
        lock.acquire("slmops-agent install-bundle")
    except DataDirLocked as e:
        _fail(str(e), EXIT_USAGE, as_json)
        return
    try:
        _install_bundle_locked(bundle, data_dir, identity, as_json)
    finally:
        lock.release()  # the process's life, or one call under click's test runner


def _install_bundle_locked(bundle: Path, data_dir: Path, identity: Identity, as_json: bool) -> None:
    from agent.delivery.bundle import BundleError
    from agent.delivery.manifest import ManifestRefused
    from agent.delivery.phases import DeploymentPhase
    from agent.delivery.storage import shortage
    from agent.delivery.updater import NO_SPACE, Updater
    from agent.engine import ModelSlot
    from agent.hardware import detect_hardware
    from protos import delivery_pb2

    statuses: list[delivery_pb2.DeploymentStatus] = []

    def no_channel() -> NoReturn:
        raise RuntimeError("a bundle install has no network path")

    updater = Updater(data_dir, identity.manifest_public_key, detect_hardware(data_dir), ModelSlot(),
                      no_channel, statuses.append)
    try:
        phase = asyncio.run(updater.install_bundle(bundle))
    except (BundleError, ManifestRefused) as e:
        _fail(f"{bundle}: {e}", EXIT_REFUSED, as_json)
        return
    except OSError as e:
        problem: Exception = e
        if e.errno in NO_SPACE:
            problem = shortage(data_dir, bundle.stat().st_size, what=f"to install {bundle.name}",
                               reserve_bytes=0, then=f"free some space on {data_dir}'s disk and run "
                                                     f"install-bundle again (the disk said: {e})")
        _fail(f"{bundle}: {problem}", EXIT_REFUSED, as_json)
        return
    last = statuses[-1] if statuses else None
    info = {"bundle": str(bundle), "phase": phase, "reason": last.reason if last else "",
            "release": last.release if last else 0, "model": last.model if last else "",
            "active_model": last.active_model if last else ""}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{info['model']} (release {info['release']}): {phase}"
                   + (f": {info['reason']}" if info["reason"] else ""))
    if phase not in (DeploymentPhase.ACTIVE, DeploymentPhase.ROLLED_BACK):
        sys.exit(EXIT_REFUSED)


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="a variant directory (genai_config.json, model.onnx, tokenizer.json)")
@click.option("--system", default="",
              help="a system prompt (refused if the model's template has no system turn)")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True, help="per answer")
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=0.7, show_default=True,
              help="0 answers greedily")
@click.option("--message", default=None, help="with --json: the user message (default: read from stdin)")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="onnxruntime threads (default: one per core)")
@click.option("--json", "as_json", is_flag=True,
              help="answer one message (--message or stdin) and print the answer and usage as JSON")
def chat(model_dir: Path, system: str, max_tokens: int, temperature: float, message: str | None,
         threads: int | None, as_json: bool) -> None:
    """Talk to a model variant in the terminal, streaming, with the conversation's history.
    Ctrl-D or /exit leaves."""
    from agent.chat_cli import interactive, one_shot
    from agent.engine import Engine, ParamError, SamplingParams, VariantError

    try:
        engine = Engine.load(model_dir, threads=threads)
    except VariantError as e:
        _fail(str(e), EXIT_USAGE, as_json)
        return
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
    name, version = registered_name_of(model_dir)

    def respond(messages: list[dict[str, str]]) -> Any:
        return engine.stream(engine.chat_prompt(messages), params)

    try:
        if as_json:
            text = message if message is not None else sys.stdin.read()
            if not text.strip():
                _fail("no message: pass --message TEXT or write it to stdin", EXIT_USAGE, as_json)
                return
            click.echo(json.dumps(one_shot(respond, name, text.strip(), system)))
            return
        click.echo(f"{name} ({engine.info.precision}); Ctrl-D or /exit to leave", err=True)
        interactive(respond, system, lambda: input("> "), sys.stdout)
    except ParamError as e:
        _fail(f"{e.field}: {e.message}", EXIT_USAGE, as_json)
    finally:
        engine.close()


def registered_name_of(model_dir: Path) -> tuple[str, str]:
    """The served name of a variant (NAME:VERSION from its slmops-variant.json, else the
    directory's name) and its version."""
    from agent.engine.variant import VariantError, registered_name

    try:
        name, version = registered_name(model_dir)
    except VariantError:
        name, version = "", ""
    return (f"{name}:{version}" if name and version else name or Path(model_dir).resolve().name), version
