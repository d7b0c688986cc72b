"""The fleet end to end, as real processes: a controller, the `slmops` CLI and agents, killed
and restarted the way machines and operators do it.

Fast settings throughout (telemetry every 0.2 s, heartbeats every 0.5 s, reconnect backoff at
most 1 s, offline after 2 s), so each test takes seconds. See tests/procs.py for the harness.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from procs import SLMOPS, Agent, ProcessHarness, seqs_stored_twice, stored_seqs

pytestmark = pytest.mark.integration

ROOMS = {"edge-1": "a", "edge-2": "a", "edge-3": "b"}
EXIT_REFUSED = 4  # agent/cli.py: the controller refuses this device


def start_fleet(procs: ProcessHarness, rooms: dict[str, str]) -> dict[str, Agent]:
    """A controller, one token (site=lab) and an agent per name, labelled room=ROOM."""
    procs.start_controller()
    token = procs.create_token("site=lab", uses=len(rooms))["token"]
    return {name: procs.start_agent(name, token=token, labels=(f"room={room}",))
            for name, room in rooms.items()}


def device_ids(procs: ProcessHarness, agents: dict[str, Agent]) -> dict[str, str]:
    """name -> device id, once every agent has enrolled."""
    return {name: procs.wait_until(agent.device_id, 20, f"{name} to enroll")
            for name, agent in agents.items()}


def wait_all_online(procs: ProcessHarness, ids: set[str], timeout: float = 20) -> list[dict]:
    def online() -> list[dict] | None:
        devices = procs.devices(include_removed=True)
        ok = ({d["id"] for d in devices} == ids
              and all(d["status"] == "online" for d in devices))
        return devices if ok else None

    return procs.wait_until(online, timeout, f"exactly the devices {sorted(ids)} online",
                            interval=0.3)


def wait_acked(procs: ProcessHarness, agent: Agent, at_least: int, timeout: float = 30) -> int:
    """Wait until the agent's spool says the controller acknowledged ``at_least``."""
    state = procs.wait_until(
        lambda: (s := agent.spool()) is not None and s.last_acked_seq >= at_least and s,
        timeout, f"{agent.proc.name} to have seq {at_least} acknowledged")
    return state.last_acked_seq


def assert_stored_once_without_gaps(procs: ProcessHarness, device: str, must_hold: int,
                                    below: int) -> list[int]:
    """The controller holds the device's seqs 1..top, each once, with must_hold <= top < below."""
    db = procs.controller.db
    seqs = stored_seqs(db, device)
    twice = seqs_stored_twice(db, device)
    assert not twice, f"{device}: (seq, count) stored more than once: {twice[:20]}"
    top = seqs[-1] if seqs else 0
    missing = sorted(set(range(1, max(top, must_hold) + 1)) - set(seqs))
    assert not missing, (f"{device}: seqs missing from the controller (it holds {len(seqs)}, "
                         f"up to {top}; must hold 1..{must_hold}): {missing[:50]}")
    assert seqs == list(range(1, top + 1)), f"{device}: stored seqs are not 1..{top}: {seqs}"
    assert top < below, f"{device}: stored seq {top}, but the agent never made seq {below}"
    return seqs


@pytest.mark.timeout(120)
def test_three_agents_enroll_stream_and_show_in_the_fleet(procs: ProcessHarness) -> None:
    agents = start_fleet(procs, ROOMS)
    ids = device_ids(procs, agents)
    for agent in agents.values():
        wait_acked(procs, agent, 1)
    devices = {d["name"]: d for d in wait_all_online(procs, set(ids.values()))}

    for name, room in ROOMS.items():
        d = devices[name]
        assert d["id"] == ids[name]
        assert d["labels"] == {"site": "lab", "room": room}, d
        assert d["hardware"]["arch"] and d["hardware"]["logical_cores"] > 0, d["hardware"]
        assert d["profile"], d

    def room_a_memory() -> dict | None:
        data = procs.cli("telemetry", "query", "--selector", "room=a", "--metric",
                         "memory_used_bytes", "--since", "10m", "--agg", "max")
        series = data["series"]
        return data if len(series) == 2 and all(s["points"] for s in series) else None

    data = procs.wait_until(room_a_memory, 20, "memory_used_bytes of both room=a devices",
                            interval=0.3)
    assert {s["device_id"] for s in data["series"]} == {ids["edge-1"], ids["edge-2"]}
    assert all(p["value"] > 0 for s in data["series"] for p in s["points"]), data

    edge1 = ids["edge-1"]
    assert procs.cli("devices", "label", edge1, "room=c")["labels"] == {"site": "lab",
                                                                        "room": "c"}
    assert procs.cli("devices", "show", edge1)["labels"] == {"site": "lab", "room": "c"}
    # ... and the connected agent is told at once (desired state, generation 2).
    procs.wait_until(lambda: "generation 2" in (e := agents["edge-1"].proc.stderr())
                     and "'room': 'c'" in e, 10, "edge-1 to receive its new labels")
    procs.cli("devices", "label", edge1, "room-")
    assert procs.cli("devices", "show", edge1)["labels"] == {"site": "lab"}

    assert agents["edge-3"].proc.terminate() == 0

    def edge3_offline() -> dict | None:
        status = {d["name"]: d["status"] for d in procs.devices()}
        return status if status == {"edge-1": "online", "edge-2": "online",
                                    "edge-3": "offline"} else None

    procs.wait_until(edge3_offline, 6, "edge-3 offline, the others online", interval=0.2)


@pytest.mark.timeout(150)
def test_controller_sigkill_loses_no_acknowledged_sample_and_stores_none_twice(
    procs: ProcessHarness,
) -> None:
    agents = start_fleet(procs, ROOMS)
    ids = device_ids(procs, agents)
    for agent in agents.values():
        wait_acked(procs, agent, 20)

    first = procs.controller
    assert first is not None
    first.proc.kill()
    # Acknowledged = what an agent recorded as acknowledged; it is gone from its spool now.
    acked_at_kill = {name: agent.spool().last_acked_seq
                     for name, agent in agents.items()}
    time.sleep(2)  # the agents keep sampling into their spools, and keep retrying
    for name, agent in agents.items():
        state = agent.spool()
        assert agent.proc.running, f"{name} exited while the controller was down\n{procs.logs()}"
        assert state is not None and len(state.pending) >= 3, f"{name}: spool {state}"

    procs.start_controller(data_dir=first.data_dir, port=first.port)
    wait_all_online(procs, set(ids.values()))  # they reconnected by themselves
    made_before_restart = {name: agent.spool().next_seq - 1
                           for name, agent in agents.items()}
    for name, agent in agents.items():  # the backlog is through, and some more after it
        wait_acked(procs, agent, made_before_restart[name] + 5)

    for name, agent in agents.items():
        assert agent.proc.terminate() == 0, agent.proc.logs()
        assert agent.device_id() == ids[name]
    assert {d["id"] for d in procs.devices(include_removed=True)} == set(ids.values())
    for name, agent in agents.items():
        final = agent.spool()
        assert final is not None and final.dropped_total == 0, f"{name}: {final}"
        assert final.last_acked_seq > acked_at_kill[name]
        # The controller may hold a batch whose ack the agent never read (it was stopped
        # while waiting): so the stored seqs run from 1 to somewhere in
        # [last_acked_seq, next_seq), with no gap and nothing twice.
        assert_stored_once_without_gaps(procs, ids[name], final.last_acked_seq, final.next_seq)


@pytest.mark.timeout(120)
def test_agent_sigkill_and_restart_keeps_its_id_and_sends_unacknowledged_samples(
    procs: ProcessHarness,
) -> None:
    agent = start_fleet(procs, {"edge-1": "a"})["edge-1"]
    device = device_ids(procs, {"edge-1": agent})["edge-1"]
    wait_acked(procs, agent, 5)

    first = procs.controller
    assert first is not None
    first.proc.kill()
    procs.wait_until(lambda: (s := agent.spool()) is not None and len(s.pending) >= 10 and s,
                     20, "10 samples pending in the spool")
    agent.proc.kill()
    at_kill = agent.spool()
    assert at_kill is not None and at_kill.pending, at_kill
    assert min(at_kill.pending) > at_kill.last_acked_seq, at_kill

    procs.start_controller(data_dir=first.data_dir, port=first.port)
    # No --token, --name or --controller: everything comes from identity.json.
    again = procs.start_agent("edge-1", agent.data_dir)
    wait_all_online(procs, {device})
    assert again.device_id() == device
    last_acked = wait_acked(procs, again, max(at_kill.pending) + 5)

    assert_stored_once_without_gaps(procs, device, last_acked, again.spool().next_seq)
    assert "enrolled as" not in again.proc.stderr(), again.proc.logs()
    assert f"as {device}" in again.proc.stderr(), again.proc.logs()
    assert again.proc.terminate() == 0


@pytest.mark.timeout(90)
def test_removed_device_is_refused_and_agent_exits_with_a_clear_message(
    procs: ProcessHarness,
) -> None:
    agent = start_fleet(procs, {"edge-1": "a"})["edge-1"]
    device = device_ids(procs, {"edge-1": agent})["edge-1"]
    wait_all_online(procs, {device})

    assert procs.cli("devices", "remove", device)["status"] == "removed"
    assert agent.proc.wait(15, "exit after its device was removed") == EXIT_REFUSED, \
        agent.proc.logs()
    assert "removed" in agent.proc.stderr(), agent.proc.logs()

    again = procs.start_agent("edge-1", agent.data_dir)
    assert again.proc.wait(20, "exit: its device is removed") == EXIT_REFUSED, again.proc.logs()
    assert "removed" in again.proc.stderr(), again.proc.logs()
    assert procs.devices() == []
    assert [d["status"] for d in procs.devices(include_removed=True)] == ["removed"]


def _wrong_secret(procs: ProcessHarness) -> str:
    token = procs.create_token("site=lab")["token"]
    token_id, secret, fingerprint = token.split(".")
    swapped = "A" if secret[0] != "A" else "B"  # still a well-formed token
    return f"{token_id}.{swapped}{secret[1:]}.{fingerprint}"


def _revoked(procs: ProcessHarness) -> str:
    created = procs.create_token("site=lab")
    assert procs.cli("token", "revoke", created["id"])["revoked"] is True
    return str(created["token"])


def _used_up(procs: ProcessHarness) -> str:
    token = str(procs.create_token("site=lab", uses=1)["token"])
    first = procs.start_agent("first", token=token)
    procs.wait_until(first.device_id, 20, "the first agent to enroll with the token")
    return token


def _garbage(procs: ProcessHarness) -> str:
    return "this-is-not-a-token"


BAD_TOKENS: list[tuple[str, Callable[[ProcessHarness], str], str, int]] = [
    # case, make the token, what stderr must say, exit code (agent/cli.py)
    ("wrong_secret", _wrong_secret, "wrong secret", 3),
    ("revoked", _revoked, "revoked", 3),
    ("used_up", _used_up, "used", 3),
    ("garbage", _garbage, "not an slmops enrollment token", 2),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("make_token", "reason", "exit_code"),
                         [case[1:] for case in BAD_TOKENS], ids=[c[0] for c in BAD_TOKENS])
def test_bad_tokens_are_refused_with_the_reason(
    procs: ProcessHarness, make_token: Callable[[ProcessHarness], str], reason: str,
    exit_code: int,
) -> None:
    procs.start_controller()
    token = make_token(procs)
    before: list[dict[str, Any]] = procs.devices(include_removed=True)

    started = time.monotonic()
    agent = procs.start_agent("refused", token=token)
    assert agent.proc.wait(20, "give up on a bad token") == exit_code, agent.proc.logs()
    assert time.monotonic() - started < 15, "the agent should not retry a refused token"
    assert reason in agent.proc.stderr(), agent.proc.logs()
    assert not (agent.data_dir / "identity.json").exists()
    after = procs.devices(include_removed=True)
    assert [d["id"] for d in after] == [d["id"] for d in before], after
    assert "refused" not in {d["name"] for d in after}


def test_second_controller_on_a_port_in_use_exits_with_a_clear_error_and_the_first_keeps_serving(
        procs: ProcessHarness) -> None:
    first = procs.start_controller()
    argv = [str(SLMOPS), "controller", "start", "--data-dir", str(procs.root / "second"),
            "--listen", f"127.0.0.1:{first.port}", "--enroll-listen", "127.0.0.1:0", "--json"]
    done = subprocess.run(argv, env=procs.env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0, done.stdout + done.stderr
    message = json.loads(done.stdout)["error"]["message"]
    assert f"--listen: can't bind 127.0.0.1:{first.port}: the address is in use" in message
    assert "\n" not in message and "choose another --listen" in message
    assert procs.cli("devices", "list")["devices"] == []  # the first one still answers
