"""The demo's fleet: a controller and agents as real processes on loopback, each in a session of
its own with its output in ``DATA_DIR/logs``.

Without ``keep`` every child also gets SIGKILL from the kernel if the demo dies (Linux), and
``stop`` ends them with SIGTERM (SIGKILL after a grace period), so the demo leaves nothing
running. With ``keep`` they outlive it; their pids are in ``DATA_DIR/demo.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.child_launcher import with_parent_death

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0


class FleetError(RuntimeError):
    """A process of the demo's fleet did not start; the message holds the tail of its log."""


def executable(name: str) -> str:
    """The console script next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FleetError(f"can't find the {name!r} command next to {sys.executable} or on PATH; "
                         "install slmops as README.md says")
    return found


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    data_dir: Path

    def logs(self) -> str:
        return f"--- {self.out}\n{_tail(self.out)}\n--- {self.err}\n{_tail(self.err)}"


class DemoFleet:
    def __init__(self, root: Path, keep: bool) -> None:
        self.root, self.keep = root, keep
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []
        self.controller: dict[str, Any] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("SLMOPS_TOKEN", None)

    def _spawn(self, name: str, argv: list[str], data_dir: Path) -> Child:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(argv if self.keep else with_parent_death(argv), stdout=o, stderr=e,
                                    stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        child = Child(name, proc, out, err, data_dir)
        self.children.append(child)
        self._write_state()
        return child

    def _write_state(self) -> None:
        state = {"controller": self.controller,
                 "processes": [{"name": c.name, "pid": c.proc.pid, "data_dir": str(c.data_dir)}
                               for c in self.children if c.proc.poll() is None]}
        tmp = self.root / "demo.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.root / "demo.json")

    def start_controller(self, *flags: str) -> dict[str, Any]:
        """Start it and wait for its ready line (JSON: listen, enroll, config, data_dir)."""
        data_dir = self.root / "controller"
        child = self._spawn("controller", [
            executable("slmops"), "controller", "start", "--data-dir", str(data_dir),
            "--listen", "127.0.0.1:0", "--json", *flags], data_dir)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in child.out.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    info = json.loads(line)
                    if isinstance(info, dict) and "listen" in info:
                        self.controller = {**info, "pid": child.proc.pid}
                        self._write_state()
                        return self.controller
            if child.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise FleetError(f"the controller did not start (exit {child.proc.poll()}):\n{child.logs()}")

    def start_agent(self, name: str, token: str, *flags: str) -> Child:
        """Enroll with ``token`` (its labels become the device's) and serve on free ports."""
        data_dir = self.root / "agents" / name
        return self._spawn(name, [
            executable("slmops-agent"), "run", "--controller", self.controller["listen"],
            "--enroll-address", self.controller["enroll"], "--token", token,
            "--data-dir", str(data_dir), "--name", name, "--serve", "127.0.0.1:0",
            "--grpc-listen", "127.0.0.1:0", *flags], data_dir)

    def check_running(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise FleetError(f"{child.name} exited with code {child.proc.returncode}:\n{child.logs()}")

    def agent(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def serving_url(self, name: str) -> str | None:
        """The agent's OpenAI-compatible base URL, once it serves (agent/daemon.py writes it)."""
        try:
            return str(json.loads((self.agent(name).data_dir / "serving.json").read_text())["url"])
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        """SIGTERM every child (agents first, then the controller), SIGKILL what is left after
        the grace period."""
        agents = [c for c in self.children if c.name != "controller"]
        for group in (agents, [c for c in self.children if c.name == "controller"]):
            for child in group:
                if child.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for child in group:
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        child.proc.kill()
                    child.proc.wait(timeout=10)
        self._write_state()
