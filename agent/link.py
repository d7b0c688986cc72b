"""The agent's one long-lived stream to the controller, over mutual TLS.

Reconnects with exponential backoff and jitter when the controller is away. Telemetry leaves
the spool in batches, one batch in flight at a time; a sample is deleted only once the
controller acknowledged it, so a cut stream or a killed process loses nothing and a resent
batch is stored once (the controller keeps the highest seq it holds).

Commands from the controller run as tasks of their own (a benchmark takes a while), beside
the stream: their answers (CommandResult, BenchmarkReport) wait in an outbox and are sent as
soon as a stream is up, so a command that outlives its stream is still answered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import grpc

from agent import __version__
from agent.identity import Identity
from agent.telemetry.spool import Spool
from protos import common_pb2, delivery_pb2, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

# Matched with the controller's SERVER_OPTIONS (controller/server.py).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
MAX_OUTBOX = 100  # answers waiting for a stream; older ones are dropped beyond this

# Runs one command; returns the messages that answer it (ending with its CommandResult).
CommandHandler = Callable[[fleet_pb2.Command], Awaitable[list[fleet_pb2.ConnectRequest]]]
# Sends one message up the stream (one writer at a time).
Write = Callable[[fleet_pb2.ConnectRequest], Awaitable[None]]
if TYPE_CHECKING:  # grpc's classes are not generic at run time, only in grpc-stubs
    ConnectCall = grpc.aio.StreamStreamCall[fleet_pb2.ConnectRequest, fleet_pb2.ConnectResponse]


def command_result(command_id: str, ok: bool, result_json: str = "", error: str = ""
                   ) -> fleet_pb2.ConnectRequest:
    return fleet_pb2.ConnectRequest(command_result=fleet_pb2.CommandResult(
        id=command_id, ok=ok, result_json=result_json, error=error))


async def unsupported(command: fleet_pb2.Command) -> list[fleet_pb2.ConnectRequest]:
    return [command_result(command.id, False, error=f"command {command.kind!r} is not supported "
                                                    f"by agent {__version__}")]


class DeviceRefused(Exception):
    """The controller refuses this device's certificate (e.g. it was removed). Retrying won't help."""


@dataclass(frozen=True)
class LinkSettings:
    heartbeat_interval_s: float = 5.0
    batch_max_samples: int = 500
    ack_timeout_s: float = 30.0
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: between half and all of min(high, low * 2**attempt)."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_cert_pem.encode(),
        private_key=identity.key_pem.encode(),
        certificate_chain=identity.cert_pem.encode(),
    )


class ControllerLink:
    def __init__(
        self, identity: Identity, spool: Spool, hardware: common_pb2.Hardware,
        settings: LinkSettings,
        on_desired_state: Callable[[fleet_pb2.DesiredState], None] | None = None,
        on_command: CommandHandler = unsupported,
    ) -> None:
        self._identity, self._spool, self._hardware = identity, spool, hardware
        self._settings = settings
        self._on_desired_state = on_desired_state
        self._on_command = on_command
        self._outbox: collections.deque[fleet_pb2.ConnectRequest] = collections.deque()
        self._outbox_ready = asyncio.Event()
        # The latest deployment status: sent once per change, and again on every new stream so
        # the controller always knows where the device stands (older ones are superseded).
        self._status: fleet_pb2.ConnectRequest | None = None
        self._status_sent = True
        self._commands: set[asyncio.Task[None]] = set()
        self._new_samples = asyncio.Event()
        self._rng = random.Random()
        self.connected = False
        self.sessions = 0
        self.last_error = ""

    def notify_new_samples(self) -> None:
        self._new_samples.set()

    def set_status(self, status: delivery_pb2.DeploymentStatus) -> None:
        """Send ``status`` upstream as soon as a stream is up (latest wins)."""
        self._status = fleet_pb2.ConnectRequest(deployment=status)
        self._status_sent = False
        self._outbox_ready.set()

    async def run(self) -> None:
        """Run until cancelled; raises DeviceRefused if the controller refuses this device."""
        try:
            await self._connect_forever()
        finally:
            for task in self._commands:
                task.cancel()
            await asyncio.gather(*self._commands, return_exceptions=True)

    async def _connect_forever(self) -> None:
        attempt = 0
        options = [*CHANNEL_OPTIONS,
                   ("grpc.ssl_target_name_override", self._identity.server_name)]
        while True:
            try:
                async with grpc.aio.secure_channel(
                    self._identity.controller, channel_credentials(self._identity), options
                ) as channel:
                    async for _ in self._session(channel):
                        attempt = 0  # a welcomed session resets the backoff
            except grpc.aio.AioRpcError as e:
                self.last_error = f"{e.code().name}: {e.details()}"
                if e.code() in REFUSED:
                    raise DeviceRefused(e.details() or e.code().name) from None
            except (TimeoutError, ConnectionError, StreamEnded) as e:
                self.last_error = str(e) or type(e).__name__
            except DeviceRefused:
                raise
            except Exception as e:  # whatever a dying stream raises (logged with its traceback): reconnect
                # grpc.aio raises asyncio.InvalidStateError from call.write once the controller
                # ended the call, an on_desired_state callback may hit a full disk (OSError):
                # none of it is a reason for the device to stop serving or go offline for good.
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("the stream to %s failed", self._identity.controller, exc_info=True)
            finally:
                self.connected = False
            delay = backoff_delay(attempt, self._settings.min_backoff_s,
                                  self._settings.max_backoff_s, self._rng)
            attempt += 1
            log.warning("controller %s unreachable (%s); retrying in %.1f s",
                        self._identity.controller, self.last_error, delay)
            await asyncio.sleep(delay)

    async def _session(self, channel: grpc.aio.Channel) -> AsyncIterator[fleet_pb2.Welcome]:
        call: ConnectCall = fleet_pb2_grpc.FleetServiceStub(channel).Connect()
        write_lock = asyncio.Lock()

        async def write(message: fleet_pb2.ConnectRequest) -> None:
            async with write_lock:
                await call.write(message)

        await write(fleet_pb2.ConnectRequest(hello=fleet_pb2.Hello(
            agent_version=__version__, hardware=self._hardware,
            heartbeat_interval_ms=int(self._settings.heartbeat_interval_s * 1000),
            last_acked_seq=self._spool.last_acked_seq(),
        )))
        async with asyncio.timeout(self._settings.ack_timeout_s):
            first = await self._receive(call)
        if first.WhichOneof("body") != "welcome":
            await self._raise_for_status(call)
        welcome = first.welcome
        self._spool.ensure_seq_above(welcome.acked_through_seq)
        self._spool.ack_through(welcome.acked_through_seq)
        self.connected, self.sessions = True, self.sessions + 1
        log.info("connected to %s as %s", self._identity.controller, welcome.device_id)
        yield welcome

        acks: asyncio.Queue[fleet_pb2.TelemetryAck] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._read(call, acks, write)),
            asyncio.create_task(self._heartbeats(write)),
            asyncio.create_task(self._send_telemetry(write, acks)),
            asyncio.create_task(self._send_outbox(write)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _receive(self, call: ConnectCall) -> fleet_pb2.ConnectResponse:
        message = await call.read()
        # Anything else is grpc.aio.EOF (grpc-stubs types it as a plain object): the stream ended.
        if not isinstance(message, fleet_pb2.ConnectResponse):
            await self._raise_for_status(call)
        return message

    async def _raise_for_status(self, call: ConnectCall) -> NoReturn:
        code = await call.code()
        details = await call.details()
        if code in REFUSED:
            raise DeviceRefused(details or code.name)
        raise StreamEnded(f"stream ended: {code.name}: {details}")

    async def _read(self, call: ConnectCall, acks: asyncio.Queue[fleet_pb2.TelemetryAck],
                    write: Write) -> None:
        while True:
            message = await self._receive(call)
            kind = message.WhichOneof("body")
            if kind == "telemetry_ack":
                acks.put_nowait(message.telemetry_ack)
            elif kind == "desired_state" and self._on_desired_state is not None:
                self._on_desired_state(message.desired_state)
            elif kind == "command":
                task = asyncio.create_task(self._run_command(message.command))
                self._commands.add(task)
                task.add_done_callback(self._commands.discard)

    async def _run_command(self, command: fleet_pb2.Command) -> None:
        log.info("command %s: %s", command.id, command.kind)
        try:
            answers = await self._on_command(command)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a failed command is logged and answered, the agent goes on
            log.exception("command %s (%s) failed", command.id, command.kind)
            answers = [command_result(command.id, False, error=f"the agent failed: {e}")]
        for answer in answers:
            if len(self._outbox) >= MAX_OUTBOX:
                self._outbox.popleft()
            self._outbox.append(answer)
        self._outbox_ready.set()

    async def _send_outbox(self, write: Write) -> None:
        self._status_sent = self._status is None  # a new stream hears the latest status again
        while True:
            self._outbox_ready.clear()
            while self._outbox:
                await write(self._outbox[0])  # removed only once written: a cut stream resends
                self._outbox.popleft()
            status = self._status
            if status is not None and not self._status_sent:
                await write(status)
                self._status_sent = status is self._status
            if self._outbox or not self._status_sent:
                continue
            await self._outbox_ready.wait()

    async def _heartbeats(self, write: Write) -> None:
        while True:
            await write(fleet_pb2.ConnectRequest(heartbeat=fleet_pb2.Heartbeat(
                timestamp_ms=int(time.time() * 1000),
                spool_pending=self._spool.pending_count(),
                spool_dropped_total=self._spool.dropped_total(),
            )))
            await asyncio.sleep(self._settings.heartbeat_interval_s)

    async def _send_telemetry(self, write: Write, acks: asyncio.Queue[fleet_pb2.TelemetryAck]) -> None:
        batch_id = 0
        while True:
            samples = self._spool.pending(self._settings.batch_max_samples)
            if not samples:
                self._new_samples.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await self._new_samples.wait()
                except TimeoutError:
                    pass
                continue
            batch_id += 1
            await write(fleet_pb2.ConnectRequest(telemetry=fleet_pb2.TelemetryBatch(
                batch_id=batch_id, samples=samples, dropped_total=self._spool.dropped_total(),
            )))
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
            # arrives as the ack does, and the stream's clean-up then waited out the ack timeout.
            async with asyncio.timeout(self._settings.ack_timeout_s):
                ack = await acks.get()
            if ack.batch_id != batch_id:
                raise StreamEnded(f"ack for batch {ack.batch_id}, expected {batch_id}")
            self._spool.ack_through(ack.acked_through_seq)


class StreamEnded(Exception):
    pass
