"""Real processes for integration tests: the controller, the `slmops` CLI and agents.

Not a test module. A ``ProcessHarness`` (the ``procs`` fixture in conftest.py) starts every
process from this venv's console scripts, writes each one's stdout and stderr to files under
the test's tmp_path, and kills whatever is still running when the test ends. Failures quote
the tails of those logs, so a red test says what the processes said.

The harness also reads the state the processes keep on disk, read-only: an agent's spool
(``DATA_DIR/telemetry.db``) and the controller's points (``DATA_DIR/fleet.db``), both SQLite
in WAL mode, so reading them while their owner runs is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.child_launcher import with_parent_death

T = TypeVar("T")
BIN = Path(sys.executable).parent  # the venv's bin: not resolved, that would leave the venv
SLMOPS, SLMOPS_AGENT = BIN / "slmops", BIN / "slmops-agent"
READY_TIMEOUT_S = 30.0  # the controller imports grpc and SQLAlchemy and makes a CA: slow on 2 cores
CLI_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 25


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.1,
               logs: Callable[[], str] | None = None) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that. On timeout fail
    with ``what`` was awaited, the predicate's last result (or exception) and the logs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: Any = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - "not yet" (a file not written yet, say); reported
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last "
                                 f"result: {last!r}" + (f"\n{logs()}" if logs else ""))
        time.sleep(interval)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """One child process, its output in ``LOG_DIR/NAME.out`` and ``LOG_DIR/NAME.err``."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name, self.argv = name, argv
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # behind a launcher that gives it SIGKILL if pytest dies, so nothing outlives a
            # killed run (Linux; elsewhere the fixture's cleanup is all there is)
            self.popen = subprocess.Popen(
                with_parent_death(argv) if sys.platform == "linux" else argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for them
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.running:
            self.popen.send_signal(sig)  # by pid, and only while it is our unreaped child

    def kill(self) -> None:
        """SIGKILL and reap: no cleanup runs in the process."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful stop) and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout, "exit after SIGTERM")

    def wait(self, timeout: float, what: str = "exit") -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) did not {what} within "
                                 f"{timeout:g} s\n{self.logs()}") from None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def logs(self) -> str:
        state = "running" if self.running else f"exit code {self.returncode}"
        return (f"--- {self.name} (pid {self.pid}, {state}) stdout:\n{_tail(self.out_path)}\n"
                f"--- {self.name} stderr:\n{_tail(self.err_path)}")


@dataclass
class Controller:
    proc: Proc
    data_dir: Path
    port: int
    info: dict[str, Any]  # the "ready" line: listen, enroll, config, data_dir

    @property
    def address(self) -> str:
        return str(self.info["listen"])

    @property
    def db(self) -> Path:
        return self.data_dir / "fleet.db"


@dataclass
class Agent:
    proc: Proc
    data_dir: Path

    def device_id(self) -> str:
        return str(json.loads((self.data_dir / "identity.json").read_text())["device_id"])

    def spool(self) -> SpoolState | None:
        return read_spool(self.data_dir)


@dataclass(frozen=True)
class SpoolState:
    next_seq: int
    last_acked_seq: int
    dropped_total: int
    pending: tuple[int, ...]  # seqs of the samples still in the spool, ascending


@dataclass(frozen=True)
class CliResult:
    argv: list[str]
    returncode: int
    data: Any  # the parsed --json output, None if stdout was not JSON
    stdout: str
    stderr: str


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        yield db
    finally:
        db.close()


def read_spool(data_dir: Path) -> SpoolState | None:
    """The agent's spool as it is on disk now; None before the agent made it."""
    path = data_dir / "telemetry.db"
    if not path.exists():
        return None
    with _read_only(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        pending = tuple(seq for (seq,) in db.execute("SELECT seq FROM samples ORDER BY seq"))
    return SpoolState(int(meta["next_seq"]), int(meta["last_acked_seq"]),
                      int(meta["dropped_total"]), pending)


_CPU_SEQS = ("SELECT p.seq FROM points p JOIN series s ON s.id = p.series_id"
             " WHERE s.device_id = ? AND s.metric = 'cpu_percent'")


def stored_seqs(db_path: Path, device_id: str) -> list[int]:
    """The seqs of a device's samples in the controller's database, ascending, repeats kept
    (every sample carries cpu_percent, so its points stand for the samples)."""
    with _read_only(db_path) as db:
        return sorted(seq for (seq,) in db.execute(_CPU_SEQS, (device_id,)))


def seqs_stored_twice(db_path: Path, device_id: str) -> list[tuple[int, int]]:
    """(seq, count) for every seq the controller holds more than once for the device."""
    with _read_only(db_path) as db:
        return list(db.execute(
            "SELECT p.seq, COUNT(*) FROM points p JOIN series s ON s.id = p.series_id"
            " WHERE s.device_id = ? AND s.metric = 'cpu_percent'"
            " GROUP BY p.seq HAVING COUNT(*) > 1", (device_id,)))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A PORT with PORT and PORT + 1 free on 127.0.0.1 (the controller's mTLS and enrollment
    ports). Picked below the kernel's ephemeral range when there is room: a port from bind(0)
    comes from that range, which the agents' own outgoing connections draw from too, so one of
    them could take it while a killed controller is down and its restart could not bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low > 12_000:
        for _ in range(200):
            port = random.randrange(10_000, low - 1)
            if _port_free(port) and _port_free(port + 1):
                return port
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and _port_free(port + 1):
            return port
    raise RuntimeError("found no free pair of ports on 127.0.0.1")


class ProcessHarness:
    """Starts processes under ``root`` (logs in ``root/logs``) and kills them in ``cleanup``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.controller: Controller | None = None  # the latest one; the CLI talks to it
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "XDG_DATA_HOME": str(root / "xdg")}  # no default dir outside tmp_path
        self.env.pop("SLMOPS_TOKEN", None)

    def _start(self, name: str, argv: list[str]) -> Proc:
        taken = {p.name for p in self.procs}
        unique = name if name not in taken else next(
            f"{name}.{i}" for i in range(2, 1000) if f"{name}.{i}" not in taken)
        proc = Proc(unique, argv, self.log_dir, self.env)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.logs() for p in self.procs) or "(no processes started)"

    def wait_until(self, predicate: Callable[[], T], timeout: float, what: str,
                   interval: float = 0.1) -> T:
        return wait_until(predicate, timeout, what, interval=interval, logs=self.logs)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.running:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    proc.kill()

    # the controller
    def start_controller(self, *, data_dir: Path | None = None, port: int | None = None,
                         offline_after: str = "2s", extra: tuple[str, ...] = ()) -> Controller:
        """Start it and wait for its ready line. Without ``port``, pick free ports (and pick
        again if another process took them meanwhile); with one, use exactly that."""
        data_dir = data_dir or self.root / "controller"
        for attempt in range(3):
            chosen = port or free_port_pair()
            proc = self._start("controller", [
                str(SLMOPS), "controller", "start", "--data-dir", str(data_dir),
                "--listen", f"127.0.0.1:{chosen}", "--offline-after", offline_after, "--json",
                *extra])
            info = self._wait_ready(proc)
            if info is not None:
                self.controller = Controller(proc, data_dir, chosen, info)
                return self.controller
            if port is not None or "bind" not in proc.stdout() + proc.stderr() or attempt == 2:
                raise AssertionError(f"the controller exited with code {proc.returncode} "
                                     f"before it was ready\n{proc.logs()}")
        raise AssertionError("unreachable")

    def _wait_ready(self, proc: Proc) -> dict[str, Any] | None:
        """The ready line's JSON; None if the process exited first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in proc.stdout().splitlines():
                with contextlib.suppress(ValueError):
                    info = json.loads(line)
                    if isinstance(info, dict) and "listen" in info:
                        return info
            if not proc.running:
                return None
            time.sleep(0.05)
        proc.kill()
        raise AssertionError(f"the controller printed no ready line within {READY_TIMEOUT_S:g} s"
                             f"\n{proc.logs()}")

    # the operator's CLI
    def cli_result(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> CliResult:
        """Run ``slmops ARGS --json`` against the latest controller."""
        argv = [str(SLMOPS), *args, "--json"]
        env = dict(self.env)
        if self.controller is not None:
            env["SLMOPS_CONFIG"] = str(self.controller.info["config"])
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        try:
            data = json.loads(done.stdout)
        except ValueError:
            data = None
        return CliResult(argv, done.returncode, data, done.stdout, done.stderr)

    def cli(self, *args: str) -> Any:
        """``slmops ARGS --json``, parsed; fails the test unless it exits 0 with JSON."""
        result = self.cli_result(*args)
        if result.returncode != 0 or result.data is None:
            raise AssertionError(
                f"`slmops {' '.join(args)} --json` exited {result.returncode}\nstdout: "
                f"{result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}\n{self.logs()}")
        return result.data

    def create_token(self, *labels: str, uses: int = 1, ttl: str = "1h") -> dict[str, Any]:
        flags = [f for label in labels for f in ("--label", label)]
        return dict(self.cli("token", "create", *flags, "--ttl", ttl, "--uses", str(uses)))

    def devices(self, include_removed: bool = False) -> list[dict[str, Any]]:
        return list(self.cli("devices", "list", *(["--all"] if include_removed else []))
                    ["devices"])

    # agents
    def start_agent(self, name: str, data_dir: Path | None = None, *, token: str | None = None,
                    labels: tuple[str, ...] = (), controller: str | None = None,
                    telemetry_interval: float = 0.2, heartbeat_interval: float = 0.5,
                    max_backoff: float = 1.0, extra: tuple[str, ...] = ()) -> Agent:
        """``slmops-agent run``. With ``token`` it enrolls as ``name`` (first run); without,
        it must find its identity in ``data_dir``. ``controller`` defaults to the latest
        controller's address when enrolling, and is left out otherwise."""
        data_dir = data_dir or self.root / name
        argv = [str(SLMOPS_AGENT), "run", "--data-dir", str(data_dir),
                "--telemetry-interval", str(telemetry_interval),
                "--heartbeat-interval", str(heartbeat_interval), "--max-backoff", str(max_backoff)]
        if controller is None and token is not None and self.controller is not None:
            controller = self.controller.address
        if controller:
            argv += ["--controller", controller]
        if token is not None:
            argv += ["--token", token, "--name", name]
        argv += [f for label in labels for f in ("--label", label)]
        return Agent(self._start(name, [*argv, *extra]), data_dir)
