"""A real controller on 127.0.0.1 port 0, running on its own event loop thread, and sync
clients that talk to it through real mTLS channels: admin, enrollment, and device streams; and
real agent daemons beside it, each on an event loop thread of its own."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from click.testing import CliRunner, Result

from agent.daemon import Agent, AgentSettings
from agent.enroll import enroll
from agent.identity import Identity
from agent.link import CHANNEL_OPTIONS, LinkSettings, channel_credentials
from controller.client_config import ClientConfig
from controller.server import Controller
from controller.settings import ControllerSettings
from protos import admin_pb2, admin_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc

HARDWARE = common_pb2.Hardware(arch="x86_64", cpu_model="test cpu", isa_flags=["avx2"],
                               physical_cores=2, logical_cores=2, memory_total_bytes=2**33)


class DeviceStream:
    """A device's Connect stream driven from a test: send() and recv(timeout)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._out: queue.Queue[Any] = queue.Queue()
        self._in: queue.Queue[Any] = queue.Queue()
        self._call = fleet_pb2_grpc.FleetServiceStub(channel).Connect(self._requests())
        threading.Thread(target=self._pump, daemon=True).start()

    def _requests(self) -> Iterator[fleet_pb2.ConnectRequest]:
        while (item := self._out.get()) is not None:
            yield item

    def _pump(self) -> None:
        try:
            for message in self._call:
                self._in.put(message)
            self._in.put(None)
        except grpc.RpcError as e:
            self._in.put(e)

    def send(self, message: fleet_pb2.ConnectRequest) -> None:
        self._out.put(message)

    def recv(self, timeout: float = 10.0) -> fleet_pb2.ConnectResponse:
        item = self._in.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        assert item is not None, "stream ended"
        return item

    def recv_kind(self, kind: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message.WhichOneof("body") == kind:
                return getattr(message, kind)

    def hello(self) -> fleet_pb2.Welcome:
        self.send(fleet_pb2.ConnectRequest(hello=fleet_pb2.Hello(
            agent_version="test", hardware=HARDWARE, heartbeat_interval_ms=1000)))
        return self.recv_kind("welcome")

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()


def sample(seq: int, ts_ms: int, **values: float) -> common_pb2.Sample:
    return common_pb2.Sample(seq=seq, timestamp_ms=ts_ms, values=[
        common_pb2.MetricValue(metric=k, value=v) for k, v in values.items()])


class RunningController:
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        settings = ControllerSettings(**{"data_dir": data_dir, "listen": "127.0.0.1:0",
                                         "enroll_listen": "127.0.0.1:0", **overrides})
        self.controller = Controller(settings)
        self.endpoints = self.run(self.controller.start())
        self.config = ClientConfig.load(Path(self.endpoints.config_path))
        self._channels: list[grpc.Channel] = []
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel(
            self.config.admin_cert_pem, self.config.admin_key_pem))

    @property
    def store(self):
        return self.controller.store

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def channel(self, cert_pem: str = "", key_pem: str = "", ca_pem: str = "") -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(ca_pem or self.config.ca_cert_pem).encode(),
            private_key=key_pem.encode() or None, certificate_chain=cert_pem.encode() or None)
        channel = grpc.secure_channel(self.endpoints.listen, creds, options=[
            *CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.config.server_name)])
        self._channels.append(channel)
        return channel

    def token(self, uses: int = 5, ttl_ms: int = 3_600_000, **labels: str) -> str:
        response = self.admin.CreateToken(admin_pb2.CreateTokenRequest(
            labels=labels, ttl_ms=ttl_ms, max_uses=uses), timeout=10)
        return response.secret_token

    def enroll(self, name: str, token: str | None = None, **labels: str) -> Identity:
        return enroll(enroll_address=self.endpoints.enroll, controller=self.endpoints.listen,
                      token=token or self.token(), name=name, labels=labels, hardware=HARDWARE)

    def device_channel(self, identity: Identity) -> grpc.Channel:
        creds = channel_credentials(identity)
        channel = grpc.secure_channel(self.endpoints.listen, creds, options=[
            *CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", identity.server_name)])
        self._channels.append(channel)
        return channel

    def stream(self, identity: Identity) -> DeviceStream:
        return DeviceStream(self.device_channel(identity))

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self.run(self.controller.stop(grace_s=1))
        self.loop.call_soon_threadsafe(self.loop.stop)


class RunningAgent:
    """The agent daemon (agent.daemon.Agent) on its own event loop thread, enrolling with ``ctl``
    as ``name`` on its first run. ``settings`` override AgentSettings (e.g. ``model=``,
    ``serve_port=0`` to serve local apps on a free port)."""

    def __init__(self, ctl: RunningController, data_dir: Path, name: str, **settings: Any) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.agent = Agent(AgentSettings(**{
            "data_dir": data_dir, "controller": ctl.endpoints.listen, "enroll_address": ctl.endpoints.enroll,
            "token": ctl.token(), "name": name, "telemetry_interval_s": 0.2,
            "link": LinkSettings(heartbeat_interval_s=0.5, min_backoff_s=0.1, max_backoff_s=1.0),
            **settings}))
        async def start() -> asyncio.Task[None]:
            return asyncio.create_task(self.agent.run())
        self.task = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the agent's event loop; its result."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        """Cancel the agent and wait for its clean-up (it releases its data dir's lock); once."""
        if not self.loop.is_running():
            return

        async def cancel() -> None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(30)
        except TimeoutError:  # say what the agent's clean-up was still waiting on
            waiting = [f"{t.get_coro()!r} at {t.get_stack(limit=1)}" for t in asyncio.all_tasks(self.loop)]
            raise AssertionError("the agent's clean-up took over 30 s; still running:\n"
                                 + "\n".join(waiting)) from None
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class ControllerCli:
    """The `slmops` CLI, as a user runs it, against a controller running in this process."""

    ctl: RunningController

    def invoke(self, *args: str) -> Result:
        from controller.cli.main import cli

        return CliRunner().invoke(cli, ["--config", self.ctl.endpoints.config_path, *args], obj={})

    def json(self, *args: str) -> Any:
        """The command's --json output; it must succeed."""
        result = self.invoke(*args, "--json")
        assert result.exit_code == 0, (args, result.output, result.exception)
        return json.loads(result.stdout)
