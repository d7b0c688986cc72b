"""The controller under test as a real process: start, token, watch its memory and CPU, stop,
and count what its SQLite database holds per device (read-only)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PROFILE_ENV = "SLMOPS_BENCH_PROFILE"  # read by bench/ctl_profile.py only


class BenchError(Exception):
    pass


def vm_hwm_bytes(pid: int | str = "self", key: str = "VmHWM") -> int:
    """Peak RSS as the kernel counts it (VmHWM; or another kB field of /proc/PID/status, such as
    VmRSS), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Endpoints:
    listen: str
    enroll: str
    config: str


class ControllerProcess:
    def __init__(self, work_dir: Path, profile_to: Path | None = None,
                 profile_mode: str = "timing", cpu: int | None = None) -> None:
        self.data_dir = work_dir / "controller"
        self.stdout_path, self.log_path = work_dir / "controller.out", work_dir / "controller.log"
        self.profile_to, self.profile_mode, self.cpu = profile_to, profile_mode, cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.endpoints: Endpoints | None = None
        self.rss_peak = 0
        self._watching = False
        self._watcher: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> Endpoints:
        args = ["controller", "start", "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--json"]
        env = dict(os.environ)
        if self.profile_to is not None:  # the same CLI, run under cProfile by bench/ctl_profile
            cmd = [sys.executable, "-m", "bench.ctl_profile", *args]
            env[PROFILE_ENV] = str(self.profile_to)
            env["SLMOPS_BENCH_PROFILE_MODE"] = self.profile_mode
        else:
            cmd = [str(Path(sys.executable).parent / "slmops"), *args]
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=log, cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL)
        self.ps = psutil.Process(self.proc.pid)
        if self.cpu is not None:
            self.ps.cpu_affinity([self.cpu])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the controller exited with {self.proc.returncode}; see "
                                 f"{self.log_path}:\n{self.log_path.read_text()[-2000:]}")
            for line in self.stdout_path.read_text().splitlines():
                try:
                    info = json.loads(line)
                except ValueError:
                    continue
                self.endpoints = Endpoints(info["listen"], info["enroll"], info["config"])
                self._watching = True
                self._watcher = threading.Thread(target=self._watch, daemon=True)
                self._watcher.start()
                return self.endpoints
            time.sleep(0.1)
        raise BenchError(f"the controller printed no endpoints within {timeout_s:.0f} s; "
                         f"see {self.log_path}")

    def _watch(self) -> None:
        while self._watching:
            try:
                self.rss_peak = max(self.rss_peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.25)

    def create_token(self, uses: int) -> str:
        assert self.endpoints is not None
        env = {**os.environ, "SLMOPS_CONFIG": self.endpoints.config}
        out = subprocess.run(
            [str(Path(sys.executable).parent / "slmops"), "token", "create", "--uses", str(uses),
             "--ttl", "1h", "--json"], env=env, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BenchError(f"`slmops token create` failed: {out.stdout} {out.stderr}")
        return str(json.loads(out.stdout)["token"])

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def vm_hwm(self) -> int:
        assert self.proc is not None
        return vm_hwm_bytes(self.proc.pid)

    def thread_cpu(self) -> dict[int, tuple[str, float]]:
        """tid -> (label, user+system CPU seconds), from /proc. Python 3.11 doesn't name its
        threads for the OS: "main" is the event loop, "py-TID" another Python thread (the
        ingest writer, to_thread workers); gRPC core names its own (grpc_*, ...)."""
        assert self.proc is not None
        out = {}
        main_comm = Path(f"/proc/{self.proc.pid}/comm").read_text().strip()
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
            except (OSError, ValueError, IndexError):
                continue
            tid = int(task.name)
            if tid == self.proc.pid:
                name = "main"
            elif name == main_comm:
                name = f"py-{tid}"
            out[tid] = (name, ticks / os.sysconf("SC_CLK_TCK"))
        return out

    def threads(self) -> int:
        assert self.ps is not None
        return int(self.ps.num_threads())

    def established(self) -> int:
        """TCP connections established on the mTLS port: one per agent stream."""
        assert self.ps is not None and self.endpoints is not None
        port = int(self.endpoints.listen.rsplit(":", 1)[1])
        return sum(1 for c in self.ps.net_connections(kind="tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)

    def stop(self, timeout_s: float = 20.0) -> str:
        """SIGTERM, then SIGKILL after ``timeout_s``; says which it took."""
        self._watching = False
        if self.proc is None or self.proc.poll() is not None:
            return "not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
            return f"SIGTERM (exit {self.proc.returncode})"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return "SIGKILL after SIGTERM timed out"

    def stored_per_device(self, acked: dict[str, int]) -> dict[str, tuple[int, int]]:
        """device id -> (samples stored, samples stored with seq <= acked), read-only."""
        db = self.data_dir / "fleet.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            out = {}
            for device_id, acked_seq in acked.items():
                total, upto = conn.execute(
                    "SELECT COUNT(DISTINCT p.seq), COUNT(DISTINCT CASE WHEN p.seq <= ? "
                    "THEN p.seq END) FROM points p JOIN series s ON s.id = p.series_id "
                    "WHERE s.device_id = ?", (acked_seq, device_id)).fetchone()
                out[device_id] = (int(total), int(upto))
            return out
        finally:
            conn.close()
