"""The agent daemon: enroll once, then sample telemetry into the spool and keep the link up,
converge to the desired state (the release the controller assigned: agent/delivery), serve the
active model to local apps, and run what the controller asks of the device (commands: a
benchmark of the active model)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__
from agent.bench import BenchError, BenchOptions, bench_in_child
from agent.datadir_lock import DataDirLock, DataDirLocked
from agent.delivery.channel import DeliveryChannel
from agent.delivery.updater import Updater
from agent.engine import ModelSlot
from agent.enroll import EnrollmentError, enroll
from agent.files import write_atomic
from agent.hardware import detect_hardware
from agent.identity import Identity
from agent.link import ControllerLink, LinkSettings, backoff_delay, command_result
from agent.supervise import supervised
from agent.telemetry.inference import InferenceSampler
from agent.telemetry.sampler import SystemSampler
from agent.telemetry.spool import Spool, SpoolError
from protos import common_pb2, fleet_pb2

log = logging.getLogger(__name__)
SERVING_FILE = "serving.json"  # where this agent serves local apps, once it does


class SettingsError(ValueError):
    pass


class DataDirInUse(SettingsError, DataDirLocked):
    """Another agent process runs on this data dir."""


@dataclass(frozen=True)
class AgentSettings:
    data_dir: Path
    controller: str = ""
    enroll_address: str = ""  # "" = the controller's host, port + 1
    token: str = ""
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    telemetry_interval_s: float = 10.0
    spool_max_samples: int = 50_000
    link: LinkSettings = field(default_factory=LinkSettings)
    model: Path | None = None  # a variant directory to serve until a release is active
    bench_timeout_s: float = 1800.0
    serve_host: str = "127.0.0.1"
    serve_port: int | None = None  # None = don't serve local apps (`run` serves on 8080)
    grpc_listen: str = ""  # "" = no gRPC InferenceService
    api_key: str = ""
    download_bytes_per_s: float = 0.0  # 0 = no cap
    keep_free_bytes: int = 64 * 2**20  # a download that would leave less free fails
    download_window_bytes: int = 256 << 10  # HTTP/2 receive window of downloads (agent/delivery/channel.py)

    def __post_init__(self) -> None:
        checks = [
            ("--telemetry-interval", self.telemetry_interval_s, 0.05, 86_400),
            ("--heartbeat-interval", self.link.heartbeat_interval_s, 0.1, 3_600),
            ("--max-backoff", self.link.max_backoff_s, self.link.min_backoff_s, 3_600),
            ("--batch-max", self.link.batch_max_samples, 1, 1_000),
            ("--spool-max-samples", self.spool_max_samples, 1, 10_000_000),
            ("--bench-timeout", self.bench_timeout_s, 1, 86_400),
            ("--max-download-rate", self.download_bytes_per_s, 0, 1e12),
            ("--download-window-kb", self.download_window_bytes, 16 << 10, 1 << 30),
        ]
        for flag, value, low, high in checks:
            if not low <= value <= high:
                raise SettingsError(f"{flag}: {value} is out of range; allowed {low}..{high}")
        if self.model is not None and not Path(self.model).is_dir():
            raise SettingsError(f"--model: {self.model} is not a directory; give a model variant "
                                "directory (genai_config.json, model.onnx, tokenizer.json)")

    @property
    def resolved_enroll_address(self) -> str:
        if self.enroll_address:
            return self.enroll_address
        host, sep, port = self.controller.rpartition(":")
        if not sep or not port.isdigit():
            raise SettingsError(f"--controller: {self.controller!r} is not HOST:PORT")
        return f"{host}:{int(port) + 1}"


# Bounds of a bench command's arguments (the controller checks them too).
BENCH_ARGS = {"prompts": (1, 1000), "max_tokens": (1, 8192)}


def bench_options(args_json: str) -> BenchOptions:
    """A bench command's arguments, {"prompts": N, "max_tokens": M}, both optional."""
    try:
        args = json.loads(args_json or "{}")
    except json.JSONDecodeError as e:
        raise BenchError(f"args_json: not JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise BenchError("args_json: must be a JSON object")
    for key, value in args.items():
        if key not in BENCH_ARGS:
            raise BenchError(f"args_json: unknown argument {key!r}; known: {', '.join(BENCH_ARGS)}")
        low, high = BENCH_ARGS[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise BenchError(f"args_json.{key}: {value!r} is out of range; allowed {low}..{high}")
    defaults = BenchOptions()
    return BenchOptions(n=args.get("prompts", defaults.n),
                        max_tokens=args.get("max_tokens", defaults.max_tokens))


def benchmark_message(command_id: str, report: dict[str, Any]) -> fleet_pb2.ConnectRequest:
    variant = report.get("variant", {})
    return fleet_pb2.ConnectRequest(benchmark=fleet_pb2.BenchmarkReport(
        command_id=command_id, model=str(variant.get("model", "")),
        version=str(variant.get("version", "")), profile=str(variant.get("profile", "")),
        precision=str(variant.get("precision", "")),
        variant_sha256=str(variant.get("variant_sha256", "")), report_json=json.dumps(report)))


class Agent:
    def __init__(self, settings: AgentSettings, slot: ModelSlot | None = None) -> None:
        self.settings = settings
        self.slot = slot or ModelSlot()
        self.desired: fleet_pb2.DesiredState | None = None
        # While a model is served in this process: its ServeMetrics, or the RunningServer of
        # agent/serve (anything with their stats()). Set when serving starts; the telemetry
        # sampler reads it (agent/telemetry/inference.py).
        self.serve_metrics: Any = None
        self.local: Any = None  # agent.serve.local.LocalServing once serving
        self.updater: Updater | None = None
        self._bench_lock = asyncio.Lock()

    async def handle_command(self, command: fleet_pb2.Command) -> list[fleet_pb2.ConnectRequest]:
        if command.kind == "bench":
            return await self._bench(command)
        return [command_result(command.id, False, error=f"command {command.kind!r} is not "
                                                        f"supported by agent {__version__}")]

    async def _bench(self, command: fleet_pb2.Command) -> list[fleet_pb2.ConnectRequest]:
        """Benchmark the active model in a child process (its peak RSS is the model's)."""
        loaded = self.slot.current
        model = loaded.engine.info.path if loaded is not None else self.settings.model
        if model is None:
            return [command_result(command.id, False, error=(
                "no active model on this device; assign one (slmops devices assign) or start its "
                "agent with --model VARIANT_DIR"))]
        if self._bench_lock.locked():
            return [command_result(command.id, False, error=(
                "a benchmark is already running on this device; wait for its report"))]
        async with self._bench_lock:
            try:
                options = bench_options(command.args_json)
                report = await bench_in_child(model, options, self.settings.bench_timeout_s)
            except BenchError as e:
                return [command_result(command.id, False, error=str(e))]
        variant = report.get("variant", {})
        summary = {"variant_sha256": variant.get("variant_sha256", ""),
                   "decode_tokens_per_s": report.get("decode_tokens_per_s")}
        log.info("benchmark of %s: %s tokens/s", model, summary["decode_tokens_per_s"])
        return [benchmark_message(command.id, report),
                command_result(command.id, True, result_json=json.dumps(summary))]

    async def obtain_identity(self, hardware: common_pb2.Hardware) -> Identity:
        s = self.settings
        identity = Identity.load(s.data_dir)
        if identity is not None:
            if s.controller and s.controller != identity.controller:
                identity = Identity(**{**identity.__dict__, "controller": s.controller})
                identity.save(s.data_dir)
            return identity
        if not (s.controller and s.token and s.name):
            raise SettingsError(
                f"{s.data_dir} holds no identity yet: give --controller, --token and --name "
                "to enroll this device"
            )
        attempt = 0
        while True:
            try:
                identity = await asyncio.to_thread(
                    enroll, enroll_address=s.resolved_enroll_address, controller=s.controller,
                    token=s.token, name=s.name, labels=s.labels, hardware=hardware,
                )
                break
            except EnrollmentError as e:
                if not e.retryable:
                    raise
                delay = backoff_delay(attempt, s.link.min_backoff_s, s.link.max_backoff_s,
                                      random.Random())
                attempt += 1
                log.warning("%s; retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
        identity.save(s.data_dir)
        log.info("enrolled as %s", identity.device_id)
        return identity

    def _on_desired_state(self, state: fleet_pb2.DesiredState) -> None:
        self.desired = state
        log.info("desired state generation %d: model %s, profile %s, labels %s", state.generation,
                 state.model or "none", state.profile or "?", dict(state.labels))
        if self.updater is not None:
            self.updater.on_desired(state.profile, state.manifest if state.HasField("manifest") else None)

    async def ensure_serving(self) -> None:
        """Start the local HTTP and gRPC servers once there is a model to serve."""
        s = self.settings
        port = s.serve_port
        if self.local is not None or self.slot.current is None or port is None:
            return
        from agent.serve.local import start_local_serving

        self.local = await start_local_serving(self.slot, s.serve_host, port, s.grpc_listen,
                                               api_key=s.api_key or None)
        self.serve_metrics = self.local.http  # inference figures flow into the telemetry
        info = self.local.info()
        write_atomic(s.data_dir / SERVING_FILE, json.dumps(
            {"url": self.local.http.url, "grpc": info["grpc"]}).encode())
        log.info("serving %s on %s/v1 (gRPC %s)", info["model"], self.local.http.url, info["grpc"] or "off")

    async def run(self) -> None:
        lock = DataDirLock(self.settings.data_dir)
        try:
            lock.acquire("slmops-agent run")
        except DataDirLocked as e:
            raise DataDirInUse(str(e)) from None
        try:
            await self._run()
        finally:
            lock.release()

    async def _run(self) -> None:
        s = self.settings
        (s.data_dir / SERVING_FILE).unlink(missing_ok=True)
        hardware = await asyncio.to_thread(detect_hardware, s.data_dir)  # nvidia-smi may hang
        identity = await self.obtain_identity(hardware)
        spool = Spool(s.data_dir / "telemetry.db", s.spool_max_samples)
        link = ControllerLink(identity, spool, hardware, s.link, self._on_desired_state,
                              self.handle_command)
        delivery = DeliveryChannel(identity, s.download_window_bytes)
        self.updater = Updater(s.data_dir, identity.manifest_public_key, hardware, self.slot, delivery.get,
                               link.set_status, max_bytes_per_s=s.download_bytes_per_s,
                               reserve_bytes=s.keep_free_bytes, on_active=self.ensure_serving)
        if await asyncio.to_thread(self.updater.load_active) is None and s.model is not None \
                and self.slot.current is None:
            await asyncio.to_thread(self.slot.load, s.model)
        await self.ensure_serving()
        self.updater.resume()
        sampler = SystemSampler(s.data_dir)
        sampling = asyncio.create_task(supervised(
            "telemetry sampling", lambda: self.sample_forever(sampler, spool, link.notify_new_samples)))
        try:
            await link.run()
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            await self.updater.stop()
            await delivery.close()
            if self.local is not None:
                await self.local.stop()
            self.slot.unload()
            spool.close()

    async def sample_forever(self, sampler: SystemSampler, spool: Spool,
                             notify: Callable[[], None]) -> None:
        """Sample every telemetry interval into the spool. A sample the spool can't store (a
        full disk) is counted in the spool's dropped_total, which the next stored sample and
        every heartbeat report, and sampling goes on."""
        interval = self.settings.telemetry_interval_s
        inference = InferenceSampler(lambda: self.serve_metrics)
        next_at = time.monotonic()
        failing = False
        while True:
            values = sampler.sample()
            values.extend(inference.sample())
            values.append(common_pb2.MetricValue(metric="spool_pending",
                                                 value=float(spool.pending_count())))
            values.append(common_pb2.MetricValue(metric="spool_dropped_total",
                                                 value=float(spool.dropped_total())))
            try:
                spool.append(int(time.time() * 1000), values)
            except SpoolError as e:
                spool.count_lost(1)
                if not failing:
                    log.error("telemetry sample lost: %s; counting the losses until it can be "
                              "stored again", e)
                failing = True
            else:
                if failing:
                    log.warning("telemetry stored again; %d samples lost in all so far",
                                spool.dropped_total())
                failing = False
                notify()
            next_at = max(next_at + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
