"""A fleet of real processes for the rollout fault tests (tests/test_rollouts_processes.py).

Not a test module. ``start_fleet`` starts a ``slmops controller start`` process whose rollout
engine ticks every 0.1 s, enrolls ``slmops-agent run`` processes labelled site=lab, and has
each one running support:1 (the tiny int4 variant) before the test rolls support:2 out with the
real CLI. What a test asserts comes from the processes themselves: the CLI's --json output, the
devices' own deployment reports (as the controller stored them), and, read-only, the releases
the controller signed (its SQLite file, in WAL mode, so reading it while it runs is safe).

``Hammer`` is serving traffic: threads sending real chat completions to the agents' OpenAI
endpoints until stopped, so the telemetry's serving latency is what the tests make it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import Agent, Controller, ProcessHarness, _read_only
from test_delivery_processes import _register

from controller.cli.client import AdminClient
from protos import admin_pb2

V1, V2 = "support:1", "support:2"
SELECTOR = "site=lab"
FINAL = ("halted", "succeeded", "aborted", "rolled_back")
AGENT_FLAGS = ("--serve", "127.0.0.1:0", "--grpc-listen", "")  # port 0: many agents on one host
SETTLE_S = 120.0  # bound on any wait for the fleet; 2 shared cores, ten agents at most


def controller_flags(*, waves_per_minute: float = 6000.0, max_in_flight: int = 20) -> tuple[str, ...]:
    """A rollout engine that ticks every 0.1 s: waves follow each other as fast as devices
    settle, unless ``waves_per_minute`` paces them."""
    return ("--rollout-tick", "100ms", "--rollout-waves-per-minute", f"{waves_per_minute:g}",
            "--rollout-max-in-flight", str(max_in_flight))


def by_name(rollout: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rollout's devices (CLI --json view) by device name."""
    return {d["device_name"]: d for d in rollout["devices"]}


def actions(rollout: dict[str, Any]) -> list[str]:
    return [e["action"] for e in rollout["events"]]


def serving_url(agent: Agent) -> str:
    """Where the agent serves its OpenAI API (it writes serving.json once it serves)."""
    return str(json.loads((agent.data_dir / "serving.json").read_text())["url"])


def ask(url: str, max_tokens: int = 8, min_tokens: int = 0, timeout: float = 30) -> int:
    """One chat completion; the tokens generated."""
    body = json.dumps({"model": "support", "max_tokens": max_tokens, "min_tokens": min_tokens,
                       "messages": [{"role": "user", "content": "Are you open on Sunday?"}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(json.loads(response.read())["usage"]["completion_tokens"])


class Hammer:
    """``clients`` threads per URL, each sending long completions (200 tokens, forced with
    min_tokens) back to back until ``stop``: the agent's server answers them a few at a time, so
    the others wait and every request's latency grows with the queue. Errors (a server that is
    switching models) are counted, not raised."""

    def __init__(self, urls: Iterable[str], clients: int = 16, tokens: int = 200) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = self.errors = 0
        self._threads = [threading.Thread(target=self._run, args=(url, tokens), daemon=True)
                         for url in urls for _ in range(clients)]

    def _run(self, url: str, tokens: int) -> None:
        while not self._stop.is_set():
            try:
                ask(url, tokens, tokens, timeout=10)
                ok = True
            except Exception:  # noqa: BLE001 - a refused or cut request is traffic too; counted
                ok = False
                self._stop.wait(0.05)
            with self._lock:
                self.ok, self.errors = self.ok + ok, self.errors + (not ok)

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@dataclass
class Fleet:
    procs: ProcessHarness
    root: Path
    controller: Controller
    controller_extra: tuple[str, ...]
    agent_extra: tuple[str, ...]
    agents: dict[str, Agent] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # name -> device id
    profile: str = ""
    first: dict[str, int] = field(default_factory=dict)  # name -> its support:1 release

    # --- processes -----------------------------------------------------------------------------

    def start_agent(self, name: str, token: str | None = None) -> Agent:
        """Enroll ``name`` with ``token``, or, without one, start it again on its data dir."""
        agent = self.procs.start_agent(name, self.root / name, token=token, extra=self.agent_extra)
        self.agents[name] = agent
        return agent

    def kill_controller(self) -> None:
        """SIGKILL: no cleanup runs in the controller; what it left is in its data dir."""
        self.controller.proc.kill()

    def restart_controller(self) -> Controller:
        """The same data dir and port, so the agents find it again."""
        self.controller = self.procs.start_controller(
            data_dir=self.controller.data_dir, port=self.controller.port, extra=self.controller_extra)
        return self.controller

    # --- models --------------------------------------------------------------------------------

    def register(self, variant: Path, golden: list[dict[str, str]], *, pad: bool = False) -> str:
        """The next version of "support", its variant for the fleet's profile a copy of
        ``variant`` judged by ``golden``; ``pad`` adds 6 MB so that a capped download lasts."""
        return _register(self.controller.data_dir, self.root / "registry", variant, self.profile,
                         golden, pad)

    # --- the CLI -------------------------------------------------------------------------------

    def create(self, *flags: str) -> dict[str, Any]:
        """`slmops rollout create support:2 --selector site=lab FLAGS --json`."""
        return dict(self.procs.cli("rollout", "create", V2, "--selector", SELECTOR, *flags))

    def status(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.procs.cli("rollout", "status", rollout_id))

    def until(self, rollout_id: str, predicate: Callable[[dict[str, Any]], bool], what: str,
              timeout: float = SETTLE_S) -> dict[str, Any]:
        """The rollout's status once ``predicate`` holds for it (its last status on timeout)."""
        last: list[dict[str, Any]] = []

        def reached() -> dict[str, Any] | None:
            last[:] = [self.status(rollout_id)]
            return last[0] if predicate(last[0]) else None

        try:
            return self.procs.wait_until(reached, timeout, what, interval=0.2)
        except AssertionError as e:
            brief = {k: last[0][k] for k in ("state", "current_wave", "reason")} if last else None
            devices = {n: (d["status"], d["reason"]) for n, d in by_name(last[0]).items()} if last else {}
            raise AssertionError(f"{e}\nlast rollout status: {brief}\ndevices: {devices}") from None

    def until_final(self, rollout_id: str, timeout: float = SETTLE_S) -> dict[str, Any]:
        """Its status once it has ended (a rollback's final state is written with its event,
        once every device is on its way back: waves.py roll_back)."""
        return self.until(rollout_id, lambda r: r["state"] in FINAL,
                          f"rollout {rollout_id} to end ({'/'.join(FINAL)})", timeout)

    def deployment(self, name: str) -> dict[str, Any]:
        """The device's deployment as its own last report left it (`slmops devices show`)."""
        return dict(self.procs.cli("devices", "show", name)["deployment"])

    def deployments(self) -> dict[str, dict[str, Any]]:
        """Every device's deployment, by name, in one `slmops devices list`."""
        return {d["name"]: d["deployment"] for d in self.procs.devices()}

    def reports(self, expected: Mapping[str, int], phase: str = "active",
                timeout: float = SETTLE_S) -> dict[str, dict[str, Any]]:
        """Wait until each device in ``expected`` itself reports its release there in ``phase``
        (and, for active and rolled_back, runs it); every device's deployment then, by name."""
        def reached() -> dict[str, dict[str, Any]] | None:
            found = self.deployments()
            late = {n: (d["desired_release"], d["phase"], d["active_release"])
                    for n, d in found.items() if n in expected and not (
                        int(d["desired_release"]) == expected[n] and d["phase"] == phase and (
                            phase not in ("active", "rolled_back") or
                            int(d["active_release"]) == expected[n]))}
            return None if late or not set(expected) <= set(found) else found
        return self.procs.wait_until(reached, timeout, f"the devices to report {phase} on "
                                     f"{dict(expected)}", interval=0.2)

    def report(self, name: str, release: int, phase: str = "active") -> dict[str, Any]:
        return self.reports({name: release}, phase)[name]

    # --- what the controller signed ------------------------------------------------------------

    def releases_of(self, name: str, model: str = V2) -> list[int]:
        """The releases of ``model`` the controller issued to the device (rollback instructions
        left out), read from its database: each assignment is a new release number."""
        model_name, version = model.split(":")
        with _read_only(self.controller.db) as db:
            rows = db.execute("SELECT DISTINCT release FROM releases WHERE device_id = ? AND model = ?"
                              " AND version = ? AND rollback = 0 ORDER BY release",
                              (self.ids[name], model_name, int(version)))
            return [int(r) for (r,) in rows]

    def rollbacks_of(self, name: str) -> list[int]:
        """The rollback instructions (and call-offs) the controller issued to the device: each a
        new release naming the model it goes back to."""
        with _read_only(self.controller.db) as db:
            rows = db.execute("SELECT DISTINCT release FROM releases WHERE device_id = ? AND "
                              "rollback = 1 ORDER BY release", (self.ids[name],))
            return [int(r) for (r,) in rows]

    def back_on_v1(self, names: Iterable[str], phases: tuple[str, ...] = ("rolled_back",),
                   timeout: float = SETTLE_S) -> dict[str, dict[str, Any]]:
        """Wait until each device, by its own report, runs support:1 under the rollback
        instruction that is its desired state, in one of ``phases``; deployments by name."""
        names = list(names)

        def reached() -> dict[str, dict[str, Any]] | None:
            found = self.deployments()
            for n in names:
                d = found.get(n)
                if d is None or d["phase"] not in phases or d["active_model"] != V1 or \
                        int(d["active_release"]) != int(d["desired_release"]) or \
                        int(d["desired_release"]) not in self.rollbacks_of(n):
                    return None
            return found
        return self.procs.wait_until(reached, timeout, f"{names} to run {V1} by a rollback "
                                     f"instruction ({'/'.join(phases)})", interval=0.2)

    def stored_rollout(self, rollout_id: str) -> dict[str, Any]:
        """The rollout's row as the controller left it in its database (current_wave,
        wave_started_ms, state...), for when no controller is running to ask."""
        with _read_only(self.controller.db) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
            return dict(row)


def start_fleet(procs: ProcessHarness, root: Path, variant: Path, golden: list[dict[str, str]],
                names: Iterable[str], *, controller_extra: tuple[str, ...] | None = None,
                agent_extra: tuple[str, ...] = ()) -> Fleet:
    """A controller and one agent per name, labelled site=lab, every one active on support:1."""
    names = list(names)
    extra = controller_flags() if controller_extra is None else controller_extra
    fleet = Fleet(procs, root, procs.start_controller(extra=extra), extra, (*AGENT_FLAGS, *agent_extra))
    token = procs.create_token(SELECTOR, uses=len(names))["token"]
    for name in names:
        fleet.start_agent(name, token)

    def all_online() -> list[dict[str, Any]] | None:
        devices = procs.devices()
        online = [d for d in devices if d["status"] == "online" and d["profile"]]
        return devices if len(online) == len(names) else None

    devices = procs.wait_until(all_online, SETTLE_S, f"{len(names)} agents to enroll and come online")
    fleet.ids = {d["name"]: d["id"] for d in devices}
    profiles = {d["profile"] for d in devices}
    assert len(profiles) == 1, f"the agents matched different profiles: {profiles}"
    fleet.profile = profiles.pop()
    assert fleet.register(variant, golden) == V1
    fleet.first = assign(procs, names, V1)
    fleet.reports(fleet.first)
    return fleet


def assign(procs: ProcessHarness, names: Iterable[str], model: str) -> dict[str, int]:
    """Assign ``model`` to each device through the CLI's own admin client, in this process:
    setting a fleet up, the same call as `slmops devices assign` without a process per device
    (on a loaded 2-core host each costs a second of CPU). Name -> release."""
    assert procs.controller is not None
    client = AdminClient(Path(procs.controller.info["config"]))
    try:
        return {n: int(client.call(client.stub.AssignModel, admin_pb2.AssignModelRequest(
            id=n, model=model), timeout=60).release) for n in names}
    finally:
        client.close()
