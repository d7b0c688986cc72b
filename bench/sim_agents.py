"""Many simulated agents in one process: the load generator of bench/fleet_scale.py.

Each agent is a real gRPC client with its own enrolled key and certificate, on its own
``grpc.aio.secure_channel`` (its own TCP connection: a local subchannel pool, and credentials
that differ per agent anyway). It speaks the protocol of agent/link.py: Hello -> Welcome, a
heartbeat every 5 s, one sample of 20 catalog metrics every second, sent in a TelemetryBatch
with one batch in flight at a time. A sample stays pending until a TelemetryAck's
``acked_through_seq`` covers it, so when the controller is slow the next batch carries several
samples (as the real agent's spool would), instead of the generator slowing down with it.
A broken stream is reconnected with backoff, like the real agent, and counted.

Run by fleet_scale.py as ``python -m bench.sim_agents --identities FILE ...``. It writes JSON
lines on stdout: ``progress`` (every second), ``steady_start``, ``steady_end``, ``result``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice

import grpc

from agent.identity import Identity
from agent.link import CHANNEL_OPTIONS, backoff_delay, channel_credentials
from agent.telemetry.catalog import is_known
from protos import common_pb2, fleet_pb2, fleet_pb2_grpc

AGENT_VERSION = "bench-sim/0.1"
HEARTBEAT_S = 5.0
ACK_TIMEOUT_S = 30.0  # agent/link.py's LinkSettings.ack_timeout_s
BATCH_MAX_SAMPLES = 500  # agent/link.py's LinkSettings.batch_max_samples

# (metric, series): 20 values a sample, all names from agent/telemetry/catalog.py.
METRICS: tuple[tuple[str, str], ...] = (
    ("cpu_percent", ""), *(("cpu_core_percent", str(core)) for core in range(4)),
    ("load1", ""), ("memory_used_bytes", ""), ("memory_available_bytes", ""),
    ("memory_percent", ""), ("swap_used_bytes", ""), ("disk_used_bytes", ""),
    ("disk_free_bytes", ""), ("net_sent_bytes", ""), ("net_recv_bytes", ""),
    ("process_rss_bytes", ""), ("temperature_celsius", "cpu"), ("temperature_celsius", "soc"),
    ("battery_percent", ""), ("spool_pending", ""), ("spool_dropped_total", ""),
)
assert all(is_known(name) for name, _ in METRICS), "bench metric not in the catalog"


def emit(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def stats_ms(values_s: list[float]) -> dict[str, float | int]:
    """Nearest-rank percentiles of durations given in seconds, in ms."""
    if not values_s:
        return {"count": 0}
    ordered = sorted(values_s)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 2)

    return {"count": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99),
            "p999": rank(99.9), "max": round(ordered[-1] * 1000, 2),
            "mean": round(sum(ordered) / len(ordered) * 1000, 2)}


class StreamEnded(Exception):
    pass


@dataclass
class Shared:
    """Process-wide state: the measuring window and what was measured in it."""

    window: bool = False
    stopping: bool = False
    batch_latency: list[float] = field(default_factory=list)  # write -> its ack, s
    sample_age: list[float] = field(default_factory=list)  # sample made -> acked, s


class SimAgent:
    def __init__(self, name: str, identity: Identity, shared: Shared, seed: int) -> None:
        self.name, self.identity, self.shared = name, identity, shared
        self.rng = random.Random(seed)
        self.pending: deque[tuple[float, common_pb2.Sample]] = deque()
        self.new_sample = asyncio.Event()
        self.next_seq = 1
        self.sent = 0  # highest seq written to a stream
        self.acked = 0  # highest acked_through_seq heard
        self.welcomed = False
        self.connected = False
        self.sessions = 0
        self.disconnects = 0  # streams that broke after a Welcome, before the stop
        self.last_error = ""
        self.acked_at_start = self.acked_at_end = 0
        self.connected_at_end = False
        self._sampler: asyncio.Task[None] | None = None

    # the device side: one sample a second
    def _make_sample(self) -> common_pb2.Sample:
        r = self.rng
        cpu = [r.uniform(0, 100) for _ in range(4)]
        used = r.uniform(1.0e9, 3.0e9)
        values = (sum(cpu) / 4, *cpu, r.uniform(0, 4), used, 4.0e9 - used, used / 4.0e7, 0.0,
                  2.0e10, 4.0e10, r.uniform(0, 1e6), r.uniform(0, 1e6), r.uniform(4e7, 6e7),
                  r.uniform(40, 70), r.uniform(40, 80), 100.0, float(len(self.pending)), 0.0)
        sample = common_pb2.Sample(seq=self.next_seq, timestamp_ms=int(time.time() * 1000))
        for (metric, series), value in zip(METRICS, values, strict=True):
            sample.values.add(metric=metric, series=series, value=value)
        self.next_seq += 1
        return sample

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.shared.stopping:
            self.pending.append((loop.time(), self._make_sample()))
            self.new_sample.set()
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _ack_through(self, seq: int, now: float) -> None:
        self.acked = max(self.acked, seq)
        while self.pending and self.pending[0][1].seq <= self.acked:
            made, _ = self.pending.popleft()
            if self.shared.window:
                self.shared.sample_age.append(now - made)

    # the stream
    async def run(self, start_at: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        options = [*CHANNEL_OPTIONS,
                   ("grpc.ssl_target_name_override", self.identity.server_name),
                   ("grpc.use_local_subchannel_pool", 1)]
        attempt = 0
        try:
            while True:
                try:
                    async with grpc.aio.secure_channel(
                        self.identity.controller, channel_credentials(self.identity), options
                    ) as channel:
                        await self._session(channel)
                    return  # drained after the stop
                except grpc.aio.AioRpcError as e:
                    self.last_error = f"{e.code().name}: {e.details()}"
                except (TimeoutError, StreamEnded, ConnectionError) as e:
                    self.last_error = str(e) or type(e).__name__
                if self.connected and not self.shared.stopping:
                    self.disconnects += 1
                self.connected = False
                if self.shared.stopping:
                    return
                await asyncio.sleep(backoff_delay(attempt, 0.5, 10.0, self.rng))
                attempt += 1
        finally:
            self.connected = False
            if self._sampler is not None:
                self._sampler.cancel()

    async def _session(self, channel: grpc.aio.Channel) -> None:
        call = fleet_pb2_grpc.FleetServiceStub(channel).Connect()
        lock = asyncio.Lock()

        async def write(message: fleet_pb2.ConnectRequest) -> None:
            async with lock:
                await call.write(message)

        await write(fleet_pb2.ConnectRequest(hello=fleet_pb2.Hello(
            agent_version=AGENT_VERSION, heartbeat_interval_ms=int(HEARTBEAT_S * 1000),
            last_acked_seq=self.acked,
            hardware=common_pb2.Hardware(arch="x86_64", cpu_model="bench simulated device",
                                         logical_cores=4, physical_cores=4,
                                         memory_total_bytes=4 << 30, os="Linux sim",
                                         hostname=self.name),
        )))
        first = await asyncio.wait_for(call.read(), ACK_TIMEOUT_S)
        if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
            raise StreamEnded(f"no welcome: {await call.code()} {await call.details()}")
        loop = asyncio.get_running_loop()
        self._ack_through(first.welcome.acked_through_seq, loop.time())
        self.welcomed = self.connected = True
        self.sessions += 1
        if self._sampler is None:
            self._sampler = asyncio.create_task(self._sample_loop())
        acks: asyncio.Queue[fleet_pb2.TelemetryAck] = asyncio.Queue()
        reader = asyncio.create_task(self._read(call, acks, write))
        beats = asyncio.create_task(self._heartbeats(write))
        sender = asyncio.create_task(self._send(write, acks))
        try:
            done, _ = await asyncio.wait([reader, beats, sender],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the sender returns once drained after the stop
        finally:
            for task in (reader, beats, sender):
                task.cancel()
            await asyncio.gather(reader, beats, sender, return_exceptions=True)
            call.cancel()

    async def _read(self, call, acks, write) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise StreamEnded(f"stream ended: {await call.code()} {await call.details()}")
            kind = message.WhichOneof("body")
            if kind == "telemetry_ack":
                acks.put_nowait(message.telemetry_ack)
            elif kind == "command":
                await write(fleet_pb2.ConnectRequest(command_result=fleet_pb2.CommandResult(
                    id=message.command.id, ok=False, error="not supported by the bench agent")))

    async def _heartbeats(self, write) -> None:
        while True:
            await write(fleet_pb2.ConnectRequest(heartbeat=fleet_pb2.Heartbeat(
                timestamp_ms=int(time.time() * 1000), spool_pending=len(self.pending))))
            await asyncio.sleep(HEARTBEAT_S)

    async def _send(self, write, acks) -> None:
        loop = asyncio.get_running_loop()
        batch_id = 0
        while True:
            if not self.pending:
                if self.shared.stopping:
                    return
                self.new_sample.clear()
                await self.new_sample.wait()
                continue
            samples = [s for _, s in islice(self.pending, BATCH_MAX_SAMPLES)]
            batch_id += 1
            sent_at = loop.time()
            await write(fleet_pb2.ConnectRequest(telemetry=fleet_pb2.TelemetryBatch(
                batch_id=batch_id, samples=samples)))
            self.sent = max(self.sent, samples[-1].seq)
            ack = await asyncio.wait_for(acks.get(), ACK_TIMEOUT_S)
            now = loop.time()
            if ack.batch_id != batch_id:
                raise StreamEnded(f"ack for batch {ack.batch_id}, expected {batch_id}")
            if self.shared.window:
                self.shared.batch_latency.append(now - sent_at)
            self._ack_through(ack.acked_through_seq, now)


async def _loop_lag(shared: Shared, lags: list[float], period: float = 0.05) -> None:
    """How late the event loop wakes a sleeper: the loader's own saturation."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        if shared.window:
            lags.append(loop.time() - before - period)


def _totals(agents: list[SimAgent]) -> dict[str, int]:
    return {"welcomed": sum(a.welcomed for a in agents),
            "connected": sum(a.connected for a in agents),
            "sent": sum(a.sent for a in agents), "acked": sum(a.acked for a in agents),
            "pending": sum(len(a.pending) for a in agents),
            "disconnects": sum(a.disconnects for a in agents)}


async def run(args: argparse.Namespace) -> None:
    with open(args.identities) as f:
        entries = json.load(f)
    shared = Shared()
    agents = [SimAgent(e["name"], Identity(**e["identity"]), shared, seed=i)
              for i, e in enumerate(entries)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = [asyncio.create_task(a.run(t0 + i / args.ramp_rate)) for i, a in enumerate(agents)]
    lags: list[float] = []
    lag_task = asyncio.create_task(_loop_lag(shared, lags))

    # ramp: until every agent has its Welcome (or the deadline)
    deadline = t0 + len(agents) / args.ramp_rate + args.connect_timeout
    while True:
        totals = _totals(agents)
        emit("progress", phase="ramp", t=round(loop.time() - t0, 1), total=len(agents), **totals)
        if totals["connected"] == len(agents) or loop.time() > deadline:
            break
        await asyncio.sleep(1.0)
    ramp_s = loop.time() - t0
    await asyncio.sleep(args.settle)  # let every agent reach its 1-a-second rhythm

    # steady window
    for a in agents:
        a.acked_at_start = a.acked
    shared.window = True
    cpu0, w0 = time.process_time(), loop.time()
    emit("steady_start", t=round(w0 - t0, 1), **_totals(agents))
    while (left := w0 + args.duration - loop.time()) > 0:
        await asyncio.sleep(min(1.0, left))
        emit("progress", phase="steady", t=round(loop.time() - t0, 1),
             elapsed=round(loop.time() - w0, 1), total=len(agents),
             p99_ms=stats_ms(shared.batch_latency[-5000:]).get("p99"), **_totals(agents))
    shared.window = False
    window_s, cpu_s = loop.time() - w0, time.process_time() - cpu0
    for a in agents:
        a.acked_at_end, a.connected_at_end = a.acked, a.connected
    emit("steady_end", t=round(loop.time() - t0, 1), window_s=round(window_s, 3),
         **_totals(agents))

    # stop: no new samples; each agent drains its pending samples, then closes its stream
    shared.stopping = True
    for a in agents:
        a.new_sample.set()
    _, unfinished = await asyncio.wait(tasks, timeout=args.stop_timeout)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lag_task.cancel()
    emit("result", ramp_s=round(ramp_s, 2), window_s=round(window_s, 3),
         cpu_window_s=round(cpu_s, 3), values_per_sample=len(METRICS),
         stop_unfinished=len(unfinished),
         batch_latency_ms=stats_ms(shared.batch_latency),
         sample_age_ms=stats_ms(shared.sample_age), loop_lag_ms=stats_ms(lags),
         agents=[{"name": a.name, "device_id": a.identity.device_id, "welcomed": a.welcomed,
                  "sessions": a.sessions, "disconnects": a.disconnects,
                  "connected_at_end": a.connected_at_end, "generated": a.next_seq - 1,
                  "sent": a.sent, "acked": a.acked,
                  "acked_window": a.acked_at_end - a.acked_at_start,
                  "last_error": a.last_error} for a in agents])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", required=True, help="JSON list of {name, identity}")
    p.add_argument("--duration", type=float, default=60.0, help="steady window, s")
    p.add_argument("--ramp-rate", type=float, default=100.0, help="new streams a second")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="extra time after the ramp for every agent to get its Welcome, s")
    p.add_argument("--settle", type=float, default=3.0, help="pause before the window, s")
    p.add_argument("--stop-timeout", type=float, default=15.0,
                   help="time for agents to drain their pending samples after the window, s")
    args = p.parse_args()
    for name in ("duration", "ramp_rate", "connect_timeout", "stop_timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: {getattr(args, name)} must be > 0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
