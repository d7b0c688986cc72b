"""Real processes and clients for bench/delivery.py: ``slmops-agent run`` processes, the
controller's admin API (assign, poll the fleet), the ``slmops`` CLI, versions registered straight
into the controller's registry, and a raw FetchBlob read with a device's identity.

Every agent runs in a process of its own, in a session of its own (a Ctrl-C in the terminal is for
the benchmark, which then stops them), with its output in ``LOG_DIR/NAME.out`` and ``.err``; on
Linux it also gets SIGKILL if the benchmark process dies, so nothing outlives a killed run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from agent.identity import Identity
from agent.link import CHANNEL_OPTIONS, channel_credentials
from bench.controller_proc import BenchError
from controller.child_launcher import with_parent_death
from controller.cli.views import phase_word
from controller.client_config import ClientConfig
from protos import admin_pb2, admin_pb2_grpc, delivery_pb2, delivery_pb2_grpc

BIN = Path(sys.executable).parent
MODEL_NAME = "deliver"
POLL_S = 0.2
SERVED_RE = re.compile(r"served blob ([0-9a-f]{64}) to (\S+): bytes (\d+)\.\.(\d+)")
FETCH_RE = re.compile(r"fetching blob ([0-9a-f]{64}) \((\S+)\) from byte (\d+) of (\d+)")


class AgentProc:
    """One ``slmops-agent run`` in ``data_dir``, logging to ``log_dir/NAME.err``."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.name, self.data_dir, self.log_dir, self.extra = name, data_dir, log_dir, extra
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.err_path = log_dir / f"{name}.err"

    def start(self, controller: str = "", enroll: str = "", token: str = "",
              extra: tuple[str, ...] | None = None) -> None:
        """Start (again). With ``token`` it enrolls as NAME at ``enroll``; without, it uses its
        identity."""
        self.starts += 1
        suffix = "" if self.starts == 1 else f".{self.starts}"
        self.err_path = self.log_dir / f"{self.name}{suffix}.err"
        argv = [str(BIN / "slmops-agent"), "run", "--data-dir", str(self.data_dir),
                "--serve", "127.0.0.1:0", "--grpc-listen", "", "--heartbeat-interval", "1",
                "--max-backoff", "2", *(self.extra if extra is None else extra)]
        if token:
            argv += ["--controller", controller, "--enroll-address", enroll, "--token", token,
                     "--name", self.name]
        with open(self.log_dir / f"{self.name}{suffix}.out", "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                with_parent_death(argv) if sys.platform == "linux" else argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL and reap (no cleanup runs in the agent)."""
        if self.running:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, SIGKILL if it does not exit in time."""
        if not self.running:
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def identity(self) -> Identity:
        identity = Identity.load(self.data_dir)
        if identity is None:
            raise BenchError(f"{self.name} has not enrolled; see {self.err_path}")
        return identity

    def serving_url(self) -> str:
        return str(json.loads((self.data_dir / "serving.json").read_text())["url"])

    def fetches(self, since: int = 0) -> list[tuple[str, str, int, int]]:
        """(sha, path, from byte, size) of every "fetching blob" line after char ``since``."""
        return [(m[1], m[2], int(m[3]), int(m[4])) for m in FETCH_RE.finditer(self.stderr()[since:])]


class Admin:
    """The admin API over mTLS with the client config `controller start` wrote."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        cfg = ClientConfig.load(config_path)
        creds = grpc.ssl_channel_credentials(
            root_certificates=cfg.ca_cert_pem.encode(), private_key=cfg.admin_key_pem.encode(),
            certificate_chain=cfg.admin_cert_pem.encode())
        self.channel = grpc.secure_channel(cfg.controller, creds, options=[
            *CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", cfg.server_name)])
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)

    def devices(self) -> dict[str, admin_pb2.Device]:
        return {d.name: d for d in self.stub.ListDevices(admin_pb2.ListDevicesRequest(), timeout=30).devices}

    def device(self, name: str) -> admin_pb2.Device:
        return self.stub.GetDevice(admin_pb2.GetDeviceRequest(id=name), timeout=30).device

    def assign(self, name: str, ref: str) -> int:
        request = admin_pb2.AssignModelRequest(id=name, model=ref)
        return int(self.stub.AssignModel(request, timeout=60).release)

    def cli(self, *args: str) -> Any:
        """``slmops ARGS --json`` against this controller, parsed."""
        done = subprocess.run([str(BIN / "slmops"), *args, "--json"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL,
                              env={**os.environ, "SLMOPS_CONFIG": str(self.config_path)})
        if done.returncode != 0:
            raise BenchError(f"`slmops {' '.join(args)}` exited {done.returncode}: "
                             f"{done.stdout} {done.stderr}")
        return json.loads(done.stdout)

    def wait_online(self, names: list[str], timeout_s: float, agents: dict[str, AgentProc]) -> dict[str, str]:
        """Until every named device is online with a profile; name -> profile."""
        deadline = time.monotonic() + timeout_s
        while True:
            devices = self.devices()
            ready = {n: devices[n].profile for n in names
                     if n in devices and devices[n].status == "online" and devices[n].profile}
            if len(ready) == len(names):
                return ready
            dead = [n for n in names if n in agents and not agents[n].running]
            if dead or time.monotonic() > deadline:
                late = next(n for n in names if n not in ready)
                tail = "\n".join(agents[late].stderr().splitlines()[-5:]) if late in agents else ""
                raise BenchError(f"{len(names) - len(ready)} of {len(names)} agents not online with a "
                                 f"profile (exited: {dead[:5]}); the last lines of {late}'s log:\n{tail}")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.channel.close()


class Clock:
    """A start time, on the monotonic clock and on the wall clock the controller stamps reports
    with (the same machine)."""

    def __init__(self) -> None:
        self.mono, self.wall = time.monotonic(), time.time()

    def since(self) -> float:
        return time.monotonic() - self.mono


def watch_releases(admin: Admin, releases: dict[str, int], t0: Clock, timeout_s: float,
                   say: Callable[[str], None], every_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Poll the fleet every POLL_S until every device in ``releases`` (name -> release) is
    active on its release. Per device, seconds since ``t0`` to "downloaded" (the first report past
    downloading: verifying, staging, gating or active) and to "active": when the controller
    stored the report that showed it (the deployment's updated_at_ms), so the poll interval does
    not blur the figure; the first report seen past downloading may be a later phase than
    verifying (staging takes milliseconds; gating follows it)."""
    seen: dict[str, dict[str, Any]] = {n: {"downloaded_s": None, "active_s": None} for n in releases}
    deadline, last_say = time.monotonic() + timeout_s, time.monotonic()
    while True:
        devices, now = admin.devices(), t0.since()
        for name, release in releases.items():
            d, mark = devices[name].deployment, seen[name]
            stamped = min(now, d.updated_at_ms / 1000 - t0.wall) if d.updated_at_ms else now
            is_active = d.active_release == release
            phase = phase_word(d.deployment_phase, bool(d.updated_at_ms))
            if mark["downloaded_s"] is None and (is_active or (
                    d.desired_release == release and phase in ("verifying", "staging", "gating"))):
                mark["downloaded_s"] = stamped
            if mark["active_s"] is None and is_active:
                mark["active_s"] = stamped
            if d.desired_release == release and phase in ("failed", "refused") and not is_active:
                raise BenchError(f"{name}: release {release} {phase}: {d.reason}")
        done = sum(1 for m in seen.values() if m["active_s"] is not None)
        if done == len(releases):
            return seen
        if time.monotonic() - last_say >= every_s:
            last_say = time.monotonic()
            downloaded = sum(1 for m in seen.values() if m["downloaded_s"] is not None)
            say(f"  t={now:.1f}s: {downloaded}/{len(releases)} downloaded, {done}/{len(releases)} active")
        if time.monotonic() > deadline:
            raise BenchError(f"only {done} of {len(releases)} devices active after {timeout_s:.0f} s")
        time.sleep(POLL_S)


def register_version(data_dir: Path, root: Path, variant: Path, profile: str,
                     golden: list[dict[str, str]], *, name: str = MODEL_NAME,
                     precision: str = "fp32") -> tuple[str, int]:
    """A new version of ``name`` in the running controller's registry (its SQLite file), its
    variant for ``profile`` a copy of ``variant``, passed, with ``golden`` as the gate's
    prompts; (ref, variant bytes). The registry rewrites slmops-variant.json for each version,
    so versions built from the same directory share every other file."""
    from controller.registry import ModelRegistry
    from controller.store import sqlite_url

    model = root / "model-stub"  # the version's own files are not what is delivered
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    registry = ModelRegistry(sqlite_url(data_dir / "fleet.db"), data_dir / "models")
    try:
        (record,) = registry.register([{"name": name, "kind": "base", "path": str(model)}])
        (built,) = registry.add_variants(record.ref, [{
            "profile": profile, "precision": precision, "provider": "cpu", "runtime": "onnxruntime-genai",
            "status": "passed", "reason": "", "path": str(variant),
            "metrics": {"golden": {"rows": golden, "correct": len(golden)}},
            "build": {"gates": {"max_accuracy_drop": 2.0, "min_tokens_per_s": 1.0,
                                "max_memory_bytes": 8 * 2**30}}}])
        return record.ref, built.size_bytes
    finally:
        registry.close()


def variant_with_extra_file(variant: Path, dest: Path) -> Path:
    """A copy of ``variant`` plus one small file: a new release that must download and gate."""
    if not dest.is_dir():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(variant, tmp)
        (tmp / "bench-note.txt").write_text("a second release of the same weights\n" * 32)
        tmp.rename(dest)
    return dest


def socket_figures(pid: int, controller_port: int) -> dict[str, int]:
    """What the kernel says about ``pid``'s TCP connections to the controller (`ss -tni`): bytes
    they received (TLS records, all streams on them), bytes still in their receive queues, and
    bytes in the send queues of the controller's ends of them."""
    import psutil

    mine = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
            if c.raddr and c.raddr.port == controller_port}
    out = {"agent_bytes_received": 0, "agent_recv_q": 0, "controller_send_q": 0}
    lines = subprocess.run(["ss", "-tniH"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        parts = head.split()  # state, Recv-Q, Send-Q, local, peer
        if len(parts) < 5 or not info[:1].isspace():
            continue
        local, peer = int(parts[3].rsplit(":", 1)[1]), int(parts[4].rsplit(":", 1)[1])
        if local in mine and peer == controller_port:
            out["agent_recv_q"] += int(parts[1])
            received = re.search(r"bytes_received:(\d+)", info)
            out["agent_bytes_received"] += int(received[1]) if received else 0
        elif local == controller_port and peer in mine:
            out["controller_send_q"] += int(parts[2])
    return out


def served_ranges(controller_log: str, device_id: str) -> dict[str, list[tuple[int, int]]]:
    """sha -> [(start, end)] of every FetchBlob stream the controller served to ``device_id``
    (its INFO line "served blob SHA to DEVICE: bytes START..END")."""
    out: dict[str, list[tuple[int, int]]] = {}
    for m in SERVED_RE.finditer(controller_log):
        if m[2].rstrip(":") == device_id:
            out.setdefault(m[1], []).append((int(m[3]), int(m[4])))
    return out


async def _read_blob(identity: Identity, sha: str, repeats: int) -> list[tuple[int, float]]:
    channel = grpc.aio.secure_channel(identity.controller, channel_credentials(identity), [
        *CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", identity.server_name)])
    stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
    runs = []
    try:
        await channel.channel_ready()
        for _ in range(repeats):
            received, started = 0, time.perf_counter()
            async for chunk in stub.FetchBlob(delivery_pb2.FetchBlobRequest(sha256=sha, offset=0)):
                received += len(chunk.data)
            runs.append((received, time.perf_counter() - started))
    finally:
        await channel.close()
    return runs


def raw_fetch(identity: Identity, sha: str, repeats: int = 3) -> list[tuple[int, float]]:
    """FetchBlob of blob ``sha`` from 0, read to the end and thrown away, ``repeats`` times on one
    connection (as the agent's grpc.aio client reads it); (bytes, seconds) per read."""
    return asyncio.run(_read_blob(identity, sha, repeats))
