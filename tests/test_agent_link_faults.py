"""The agent outlives its controller: a stream that fails in any way is reconnected with
backoff, and local serving never stops because the controller went away. One agent process per
data dir. Real controllers (in this process, and as processes SIGKILLed under load) and real
agent processes serving the tiny int4 variant."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import variants
from inproc import HARDWARE, RunningController
from procs import SLMOPS_AGENT, ProcessHarness
from rollout_procs import Hammer, ask, serving_url

from agent.link import ControllerLink, LinkSettings
from agent.telemetry.spool import Spool
from protos import fleet_pb2

ROUNDS = 6  # controller SIGKILLs per test: the fault hit 2 agents in 4, so 6 rounds see it


def test_link_reconnects_after_an_error_of_a_type_it_did_not_expect(ctl: RunningController,
                                                                    tmp_path: Path) -> None:
    """A failure inside the session that is not a gRPC status (here: the desired state's
    handler failing, as a full disk makes it) ends that session, not the link."""
    identity = ctl.enroll("edge-1")
    calls: list[int] = []

    def on_desired(state: fleet_pb2.DesiredState) -> None:
        calls.append(state.generation)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    outcome: list[BaseException | None] = []
    links: list[ControllerLink] = []

    async def run_until_second_session() -> None:
        with Spool(tmp_path / "telemetry.db") as spool:  # SQLite: made on the thread that uses it
            link = ControllerLink(identity, spool, HARDWARE, LinkSettings(
                heartbeat_interval_s=0.2, min_backoff_s=0.05, max_backoff_s=0.2), on_desired)
            links.append(link)
            task = asyncio.create_task(link.run())
            deadline = time.monotonic() + 30
            while link.sessions < 2 and not task.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            alive = not task.done()
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            outcome.append(None if alive else results[0])

    thread = threading.Thread(target=lambda: asyncio.run(run_until_second_session()))
    thread.start()
    thread.join(60)
    (link,) = links
    assert outcome == [None], f"the link ended with {outcome}"
    assert link.sessions >= 2 and len(calls) >= 2
    assert "OSError" in link.last_error


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_agent_survives_controller_sigkill_while_busy_and_reconnects_every_time(
        procs: ProcessHarness, tiny: variants.TinyVariants, tmp_path: Path) -> None:
    model = variants.copy_variant(tiny.int4, tmp_path / "support")  # served as model "support"
    controller = procs.start_controller()
    token = procs.create_token("site=lab")["token"]
    agent = procs.start_agent("edge-1", token=token, telemetry_interval=0.05, heartbeat_interval=0.1,
                              max_backoff=0.5, extra=("--model", str(model), "--serve", "127.0.0.1:0",
                                                      "--grpc-listen", ""))
    procs.wait_until(lambda: (agent.data_dir / "serving.json").is_file(), 60, "the agent to serve")
    url = serving_url(agent)

    def sessions() -> int:
        return agent.proc.stderr().count(" connected to ")

    procs.wait_until(sessions, 30, "the agent's first session")
    with Hammer([url], clients=3, tokens=40) as hammer:
        for round_ in range(ROUNDS):
            before = sessions()
            acked = agent.spool().last_acked_seq
            procs.wait_until(lambda n=round_: hammer.ok > n, 60, "requests to be answered")
            controller.proc.kill()
            time.sleep(0.3)  # the agent is mid-write on a stream whose other end just died
            assert agent.proc.running, f"round {round_}: the agent exited\n{agent.proc.logs()}"
            assert ask(url, max_tokens=4) > 0  # local apps are still served, controller or not
            controller = procs.start_controller(data_dir=controller.data_dir, port=controller.port)
            procs.wait_until(lambda n=before: sessions() > n, 60, f"round {round_}: the agent to reconnect")
            procs.wait_until(lambda n=acked: agent.spool().last_acked_seq > n,
                             60, f"round {round_}: telemetry to flow again")
    assert agent.proc.running
    assert hammer.ok > 0
    assert "Task exception was never retrieved" not in agent.proc.stderr()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_second_agent_process_on_a_data_dir_in_use_is_refused(procs: ProcessHarness,
                                                                 tmp_path: Path) -> None:
    procs.start_controller()
    agent = procs.start_agent("edge-1", token=procs.create_token()["token"])
    procs.wait_until(agent.device_id, 30, "edge-1 to enroll")
    bundle = tmp_path / "some.bundle"
    bundle.write_bytes(b"not looked at: the data dir is checked first")

    for argv in (["install-bundle", str(bundle), "--data-dir", str(agent.data_dir), "--json"],
                 ["run", "--data-dir", str(agent.data_dir), "--serve", "127.0.0.1:0", "--grpc-listen", ""]):
        done = subprocess.run([str(SLMOPS_AGENT), *argv], env=procs.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode != 0, done
        message = done.stdout + done.stderr
        assert f"data dir {agent.data_dir} is in use by another slmops-agent process (pid " \
               f"{agent.proc.pid})" in message, message
    assert agent.proc.running

    # Once the agent is stopped, the data dir is free again.
    assert agent.proc.terminate() == 0
    done = subprocess.run([str(SLMOPS_AGENT), "install-bundle", str(bundle), "--data-dir",
                           str(agent.data_dir), "--json"], env=procs.env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "in use" not in done.stdout + done.stderr
    assert "not a readable bundle" in json.loads(done.stdout)["error"]
