"""The agent daemon: enroll once, then sample telemetry into the spool and keep the link up."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.enroll import EnrollmentError, enroll
from agent.hardware import detect_hardware
from agent.identity import Identity
from agent.link import ControllerLink, LinkSettings, backoff_delay
from agent.telemetry.sampler import SystemSampler
from agent.telemetry.spool import Spool
from protos import common_pb2, fleet_pb2

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    pass


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

    def __post_init__(self) -> None:
        checks = [
            ("--telemetry-interval", self.telemetry_interval_s, 0.05, 86_400),
            ("--heartbeat-interval", self.link.heartbeat_interval_s, 0.1, 3_600),
            ("--max-backoff", self.link.max_backoff_s, self.link.min_backoff_s, 3_600),
            ("--batch-max", self.link.batch_max_samples, 1, 1_000),
            ("--spool-max-samples", self.spool_max_samples, 1, 10_000_000),
        ]
        for flag, value, low, high in checks:
            if not low <= value <= high:
                raise SettingsError(f"{flag}: {value} is out of range; allowed {low}..{high}")

    @property
    def resolved_enroll_address(self) -> str:
        if self.enroll_address:
            return self.enroll_address
        host, sep, port = self.controller.rpartition(":")
        if not sep or not port.isdigit():
            raise SettingsError(f"--controller: {self.controller!r} is not HOST:PORT")
        return f"{host}:{int(port) + 1}"


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.desired: fleet_pb2.DesiredState | None = None

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
        log.info("desired state generation %d: labels %s", state.generation, dict(state.labels))

    async def run(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        hardware = await asyncio.to_thread(detect_hardware, s.data_dir)  # nvidia-smi may hang
        identity = await self.obtain_identity(hardware)
        spool = Spool(s.data_dir / "telemetry.db", s.spool_max_samples)
        link = ControllerLink(identity, spool, hardware, s.link, self._on_desired_state)
        sampler = SystemSampler(s.data_dir)
        sampling = asyncio.create_task(self._sample(sampler, spool, link))
        try:
            await link.run()
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            spool.close()

    async def _sample(self, sampler: SystemSampler, spool: Spool, link: ControllerLink) -> None:
        interval = self.settings.telemetry_interval_s
        next_at = time.monotonic()
        while True:
            values = sampler.sample()
            values.append(common_pb2.MetricValue(metric="spool_pending",
                                                 value=float(spool.pending_count())))
            values.append(common_pb2.MetricValue(metric="spool_dropped_total",
                                                 value=float(spool.dropped_total())))
            spool.append(int(time.time() * 1000), values)
            link.notify_new_samples()
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
