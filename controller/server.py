"""The controller process: the mTLS port (fleet, delivery, admin, pipeline, health) and the
bootstrap port (enrollment, health), the store, the ingest writer and the blob store, started and
stopped together."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controller.client_config import FILE_NAME, ClientConfig, ConfigError
from controller.delivery.blobs import BlobStore
from controller.delivery.integrity import log_damaged
from controller.delivery.releases import Releases
from controller.hub import Hub
from controller.ingest import IngestWriter
from controller.jobs import JobManager, JobStore
from controller.pki import (
    ROLE_ADMIN,
    ROLE_CONTROLLER,
    SERVER_NAME,
    CertificateAuthority,
    load_or_create_signing_key,
    raw_public_key,
)
from controller.registry import ModelRegistry
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.waves import Limits
from controller.services.admin import AdminServicer
from controller.services.delivery import DeliveryServicer
from controller.services.enrollment import EnrollmentServicer
from controller.services.fleet import FleetServicer
from controller.services.pipeline import PipelineServicer
from controller.settings import ControllerSettings, split_address
from controller.store import FleetStore, open_store
from protos import (
    admin_pb2_grpc,
    delivery_pb2_grpc,
    enrollment_pb2_grpc,
    fleet_pb2_grpc,
    pipeline_pb2_grpc,
)

log = logging.getLogger(__name__)

# Keepalive matched with the agent's channel (agent/link.py): pings every 20 s are allowed.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    # gRPC binds with SO_REUSEPORT by default: a second controller on a port in use would start
    # "fine" and share it, and clients would reach either one. Refuse to share it.
    ("grpc.so_reuseport", 0),
]


class AddressInUse(RuntimeError):
    """A port can't be bound; the message names the option and the address, and what to do."""


def bind(server: grpc.aio.Server, option: str, address: str,
         credentials: grpc.ServerCredentials | None = None) -> int:
    """``server`` listening on ``address``; AddressInUse (one line) if it can't be bound."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        raise AddressInUse(f"{option}: can't bind {address}: the address is in use (another "
                           f"controller?) or not this host's; stop the other process or choose "
                           f"another {option}") from None


@dataclass(frozen=True)
class Endpoints:
    listen: str
    enroll: str
    config_path: str


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.hub = Hub()
        self.store: FleetStore | None = None
        self.ingest: IngestWriter | None = None
        self.registry: ModelRegistry | None = None
        self.jobs: JobManager | None = None
        self.releases: Releases | None = None
        self.delivery: DeliveryServicer | None = None
        self.rollouts: RolloutEngine | None = None
        self._servers: list[grpc.aio.Server] = []
        self._check: asyncio.Task[None] | None = None

    async def start(self) -> Endpoints:
        """Open the stores, bind both ports and serve. If any of it fails (a port in use, say),
        what was started is stopped again before the error goes up."""
        try:
            return await self._start()
        except BaseException:
            await self.stop(grace_s=0)
            raise

    async def _start(self) -> Endpoints:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(s.data_dir, 0o700)
        pki_dir = s.data_dir / "pki"
        ca = CertificateAuthority.load_or_create(pki_dir)
        signing_key = load_or_create_signing_key(pki_dir / "manifest-signing.key")
        host, _ = split_address("--listen", s.listen)
        names = tuple(dict.fromkeys((SERVER_NAME, "localhost", host, *s.extra_server_names)))
        server_cert = ca.issue(SERVER_NAME, ROLE_CONTROLLER, server_names=names)
        self.store = await asyncio.to_thread(open_store, s.resolved_db_url)
        self.ingest = IngestWriter(self.store, s.ingest_max_delay_ms, s.retention_ms)
        self.ingest.start()
        profiles = await asyncio.to_thread(s.profiles)
        self.registry = await asyncio.to_thread(ModelRegistry, s.resolved_db_url, s.data_dir / "models")
        job_store = await asyncio.to_thread(JobStore, s.resolved_db_url)
        self.jobs = JobManager(job_store, self.registry, s.data_dir / "jobs",
                               max_concurrent=s.max_concurrent_jobs)

        blobs = await asyncio.to_thread(BlobStore, s.data_dir / "blobs")
        self.releases = Releases(self.store, self.registry, blobs, signing_key, profiles,
                                 ttl_ms=s.manifest_ttl_s * 1000)
        self.delivery = DeliveryServicer(self.store, self.releases, s.max_concurrent_downloads)
        self.rollouts = RolloutEngine(
            self.store, self.releases, self.registry, self.hub, tick_s=s.rollout_tick_s,
            limits=Limits(s.rollout_max_in_flight, s.rollout_waves_per_minute))

        options = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", s.max_message_bytes)]
        main = grpc.aio.server(options=options)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(
            FleetServicer(self.store, self.hub, self.ingest, profiles), main)
        delivery_pb2_grpc.add_DeliveryServiceServicer_to_server(self.delivery, main)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.store, self.hub, self.ingest, s.offline_after_ms, profiles=profiles,
                          releases=self.releases, rollouts=self.rollouts,
                          manifest_public_key=raw_public_key(signing_key)), main)
        pipeline_pb2_grpc.add_PipelineServiceServicer_to_server(
            PipelineServicer(self.jobs, self.registry, profiles, blobs, self.store), main)
        credentials = grpc.ssl_server_credentials(
            [(server_cert.key_pem.encode(), server_cert.cert_pem.encode())],
            root_certificates=ca.cert_pem.encode(), require_client_auth=True,
        )
        port = bind(main, "--listen", s.listen, credentials)

        bootstrap = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length",
                                                              1024 * 1024)])
        enrollment_pb2_grpc.add_EnrollmentServiceServicer_to_server(
            EnrollmentServicer(self.store, ca, signing_key, profiles), bootstrap)
        enroll_port = bind(bootstrap, "--enroll-listen", s.resolved_enroll_listen)

        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs 1.53 lacks grpc_health's aio module
        for server in (main, bootstrap):
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        for service in ("slmops.v1.FleetService", "slmops.v1.DeliveryService", "slmops.v1.AdminService",
                        "slmops.v1.EnrollmentService", "slmops.v1.PipelineService"):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._servers = [main, bootstrap]
        for server in self._servers:
            await server.start()
        await self.jobs.start()
        self.rollouts.start()
        # cheap (sizes only), logged, and off the event loop: a large registry delays nothing
        self._check = asyncio.create_task(asyncio.to_thread(log_damaged, self.registry, blobs))

        enroll_host, _ = split_address("--enroll-listen", s.resolved_enroll_listen)
        endpoints = Endpoints(
            listen=f"{_client_host(host)}:{port}",
            enroll=f"{_client_host(enroll_host)}:{enroll_port}",
            config_path=str(s.data_dir / FILE_NAME),
        )
        self._write_client_config(ca, endpoints)
        log.info("controller serving mTLS on %s, enrollment on %s", endpoints.listen, endpoints.enroll)
        return endpoints

    def _write_client_config(self, ca: CertificateAuthority, endpoints: Endpoints) -> None:
        path = self.settings.data_dir / FILE_NAME
        try:
            old = ClientConfig.load(path)
            admin_cert, admin_key = old.admin_cert_pem, old.admin_key_pem
        except ConfigError:  # no usable config yet: make a new admin credential
            issued = ca.issue("admin", ROLE_ADMIN)
            admin_cert, admin_key = issued.cert_pem, issued.key_pem
        ClientConfig(
            controller=endpoints.listen, enroll_address=endpoints.enroll, server_name=SERVER_NAME,
            ca_cert_pem=ca.cert_pem, admin_cert_pem=admin_cert, admin_key_pem=admin_key,
        ).save(path)

    async def wait(self) -> None:
        if self._servers:
            await self._servers[0].wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Graceful: streams are told to end, in-flight calls get ``grace_s`` to finish, and
        everything acknowledged is already committed. Running jobs' workers are stopped and
        the jobs queued again, to resume at the next start."""
        if self._check is not None:
            await self._check  # the start-up check: closing the registry under it would fail it
        if self.rollouts is not None:
            await self.rollouts.stop()
        self.hub.close_all("controller shutting down")
        if self.jobs is not None:
            await self.jobs.stop()
        await asyncio.gather(*(server.stop(grace_s) for server in self._servers))
        if self.ingest is not None:
            await self.ingest.stop()
        if self.jobs is not None:
            self.jobs.store.close()
        if self.registry is not None:
            self.registry.close()
        if self.store is not None:
            self.store.close()
