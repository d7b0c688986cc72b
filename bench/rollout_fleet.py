"""Many real agent daemons in one process: the fleet of bench/rollout.py.

Each agent is ``agent.daemon.Agent``, the code ``slmops-agent run`` runs, with a data dir and an
identity of its own (enrolled with the token on its first start), its own mTLS connections to
the controller, its own HTTP server for local apps (port 0) and its own model slot. They share
one asyncio loop and its worker threads, which is what lets 100 of them fit on 2 cores; on a
real fleet each would have a device to itself.

Run by bench/rollout.py as ``python -m bench.rollout_fleet --names a,b,c ...``. Every log line
carries the agent's name (a context variable set for each agent's task, inherited by the tasks
and worker threads it starts). On stdout: a JSON line ``started``, and ``agent_exited`` for an
agent whose daemon returned or raised (a bench error: the daemon runs until cancelled). SIGTERM
or SIGINT stops every agent (each closes its streams and its server) and exits.

The bench side, ``FleetProc``, starts such a process in a session of its own (a Ctrl-C is for
the benchmark, which then stops it) that gets SIGKILL if the benchmark process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from controller.child_launcher import with_parent_death

AGENT_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("agent_name", default="-")


class _NameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.agent = AGENT_NAME.get()
        return True


def emit(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def _one(settings, stagger_s: float) -> None:
    from agent.daemon import Agent

    await asyncio.sleep(stagger_s)
    try:
        await Agent(settings).run()
        emit("agent_exited", name=settings.name, error="returned")
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # reported to the bench, the others go on
        logging.getLogger(__name__).exception("agent %s stopped", settings.name)
        emit("agent_exited", name=settings.name, error=f"{type(e).__name__}: {e}"[:500])


async def run(args: argparse.Namespace) -> None:
    from agent.daemon import AgentSettings
    from agent.link import LinkSettings
    from controller.cli.token_cmd import parse_labels

    names = [n for n in args.names.split(",") if n]
    labels = parse_labels(tuple(args.label), "--label")
    link = LinkSettings(heartbeat_interval_s=args.heartbeat_interval, min_backoff_s=0.2,
                        max_backoff_s=args.max_backoff)
    tasks = []
    for i, name in enumerate(names):
        settings = AgentSettings(
            data_dir=args.root / name, controller=args.controller, enroll_address=args.enroll,
            token=args.token, name=name, labels=labels, telemetry_interval_s=args.telemetry_interval,
            link=link, serve_host="127.0.0.1", serve_port=0, grpc_listen="")
        context = contextvars.copy_context()
        context.run(AGENT_NAME.set, name)
        tasks.append(asyncio.create_task(_one(settings, i * args.stagger), name=name, context=context))
    emit("started", agents=len(names), pid=os.getpid())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    _, unfinished = await asyncio.wait(tasks, timeout=args.stop_timeout)
    emit("stopped", unfinished=len(unfinished))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", required=True, help="comma-separated device names, one agent each")
    p.add_argument("--root", type=Path, required=True, help="each agent's data dir is ROOT/NAME")
    p.add_argument("--controller", required=True, help="the controller's mTLS address")
    p.add_argument("--enroll", required=True, help="the controller's enrollment address")
    p.add_argument("--token", required=True, help="an enrollment token with a use per agent")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument("--telemetry-interval", type=float, default=1.0, help="s")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="s")
    p.add_argument("--max-backoff", type=float, default=2.0, help="s")
    p.add_argument("--stagger", type=float, default=0.05, help="s between agent starts")
    p.add_argument("--stop-timeout", type=float, default=20.0, help="s for the agents to stop")
    args = p.parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NameFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(agent)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(run(args))


# --- the bench side ---------------------------------------------------------------------------

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \[([^\]]+)\] (.*)$")


def log_time(stamp: str) -> float:
    """Unix time of a logging asctime ("2026-12-03 06:33:55,859", local time)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def agent_lines(err_paths: list[Path]) -> dict[str, list[tuple[float, str]]]:
    """Agent name -> [(unix time, message)] from fleet processes' logs, in order."""
    out: dict[str, list[tuple[float, str]]] = {}
    for path in err_paths:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if m:
                out.setdefault(m[2], []).append((log_time(m[1]), m[3]))
    return out


class FleetProc:
    """One ``python -m bench.rollout_fleet`` process, its output in LOG_DIR/NAME.out and .err."""

    def __init__(self, name: str, agents: list[str], root: Path, log_dir: Path) -> None:
        self.name, self.agents, self.root = name, agents, root
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, controller: str, enroll: str, token: str, labels: dict[str, str],
              telemetry_interval_s: float) -> None:
        from bench.controller_proc import REPO

        argv = [sys.executable, "-m", "bench.rollout_fleet", "--names", ",".join(self.agents),
                "--root", str(self.root), "--controller", controller, "--enroll", enroll,
                "--token", token, "--telemetry-interval", str(telemetry_interval_s),
                *[f for k, v in labels.items() for f in ("--label", f"{k}={v}")]]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                with_parent_death(argv) if sys.platform == "linux" else argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def events(self) -> list[dict[str, object]]:
        try:
            lines = self.out_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def exited_agents(self) -> list[str]:
        return [f"{e['name']}: {e['error']}" for e in self.events() if e.get("event") == "agent_exited"]

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        if self.running:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> str:
        """Wait for the exit after terminate(); SIGKILL if it takes longer. Says which."""
        if self.popen is None:
            return "not started"
        try:
            self.popen.wait(timeout_s)
            return f"exit {self.popen.returncode}"
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            return "SIGKILL after SIGTERM timed out"


if __name__ == "__main__":
    main()
