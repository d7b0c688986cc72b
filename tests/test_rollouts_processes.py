"""The rollout fault table (issue 6) with real processes: a `slmops controller start` process
(SIGKILLed with a real signal where the fault says so), `slmops-agent run` processes serving the
tiny int4 variant, and the rollout driven through the real `slmops rollout` CLI.

| fault                                  | expected                                              |
| the canary's variant fails its gate    | halt after wave 1; canary never switched; others      |
|                                        | untouched                                             |
| serving p95 above the limit in a bake  | halt; wave 1 and wave 2 devices back on their         |
|                                        | previous model; wave 3 untouched                      |
| controller SIGKILLed between waves     | resumes at the right wave; no device gets the new     |
|                                        | release twice; no wave skipped                        |
| 1 of 10 devices offline throughout     | counted by the offline policy after the timeout, with |
|                                        | the reason; converges when it comes back              |
| pause mid-wave                         | the update in flight finishes; nothing new starts     |
|                                        | until resume                                          |
| rollback of a finished rollout         | every device back on its previous model               |
| a device SIGKILLed mid-download, then  | its update is called off too; started again, it runs  |
| the rollout rolled back                | the pre-rollout model, never the rolled-back one      |

Every claim about a device is checked against the device's own deployment report (as the
controller stored it) or its serving endpoint; the in-process versions of these faults are in
tests/test_rollouts_engine.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import variants
from procs import ProcessHarness
from rollout_procs import (
    FINAL,
    SETTLE_S,
    V1,
    V2,
    Hammer,
    actions,
    ask,
    by_name,
    controller_flags,
    serving_url,
    start_fleet,
)

pytestmark = pytest.mark.integration
NAMES = ("edge-1", "edge-2", "edge-3")  # planned in name order: edge-1 is the canary
MAX_P95_MS = 500.0  # the tiny model's gate answers take ~25 ms; a hammered server's, ~0.5-2 s


@pytest.fixture(scope="session")
def golden(tiny: variants.TinyVariants) -> list[dict[str, str]]:
    """Held-out prompts with the int4 variant's own greedy answers: a gate the variant passes."""
    return variants.golden_rows(tiny.int4, tiny.test_rows, 4)


def test_a_canary_failing_the_on_device_gate_halts_after_wave_1(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, NAMES)
    wrong = [{"prompt": row["prompt"], "answer": "no such answer"} for row in golden]
    assert fleet.register(tiny.int4, wrong) == V2
    created = fleet.create("--waves", "1,50%,100%", "--bake", "1s", "--min-device-accuracy", "0.9")
    assert [w["size"] for w in created["waves"]] == [1, 1, 1]

    done = fleet.until_final(created["id"])
    assert done["state"] == "rolled_back" and done["reason"].startswith("wave 1:"), done["reason"]
    assert actions(done).count("wave_started") == 1 and "halted" in actions(done)
    devices = by_name(done)
    canary = devices["edge-1"]
    assert canary["wave"] == 0 and canary["status"] == "failed"
    assert canary["reason"].startswith("failed: gate:"), canary["reason"]
    [result] = done["gate_results"]
    assert (result["gate"], result["device_name"], result["passed"]) == ("max_failure", "edge-1", False)

    # the canary never switched: its gate failed and support:1 stayed live; the rollback called
    # its update off, so its desired state is support:1 again, under a new release
    assert "called off" in canary["reason"]
    report = fleet.back_on_v1(["edge-1"], ("active",))["edge-1"]
    assert int(report["desired_release"]) > int(canary["release"])
    assert ask(serving_url(fleet.agents["edge-1"])) > 0  # and it still answers
    assert fleet.releases_of("edge-1") == [int(canary["release"])]
    for name in NAMES[1:]:  # the others were never touched
        assert (devices[name]["status"], int(devices[name]["release"])) == ("pending", 0)
        assert fleet.releases_of(name) == []
        report = fleet.deployment(name)
        assert (report["phase"], report["active_model"]) == ("active", V1)
        assert int(report["desired_release"]) == int(report["active_release"]) == fleet.first[name]


def test_serving_latency_over_the_limit_in_a_bake_rolls_back_waves_1_and_2(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, NAMES)
    for name in NAMES:  # the limit must be above what the on-device gate measures (or wave 1 fails)
        gate_p95 = fleet.deployment(name)["detail"]["p95_ms"]
        assert gate_p95 < MAX_P95_MS, f"{name}: on-device gate p95 {gate_p95} ms; is the host swamped?"
    fleet.register(tiny.int4, golden)
    created = fleet.create("--waves", "1,1,100%", "--bake", "3s", "--max-p95-ms", f"{MAX_P95_MS:g}")
    rollout_id = created["id"]

    # Wave 1 bakes without serving traffic: the canary is judged on its gate's p95, and passes.
    # From then on the canary and wave 2's device (updating, then switched) get more requests
    # than they can answer at once, for as long as the rollout runs: wave 2's bake, which starts
    # once its device switched, sees serving p95s far over the limit on both.
    fleet.until(rollout_id, lambda r: r["state"] != "running" or r["current_wave"] == 1, "wave 1 to pass")
    with Hammer([serving_url(fleet.agents[n]) for n in ("edge-1", "edge-2")]) as hammer:
        done = fleet.until_final(rollout_id)
    assert hammer.ok > 0, f"no request was answered ({hammer.errors} failed)"

    assert done["state"] == "rolled_back", done["reason"]
    assert done["reason"].startswith("wave 2: max_p95_ms failed on"), done["reason"]
    assert actions(done).count("wave_passed") == 1 and actions(done).count("wave_started") == 2
    failed = [g for g in done["gate_results"] if not g["passed"]]
    # both are hammered; the gate fails on at least one of them (which one crosses the limit
    # first depends on the scheduler), and both are rolled back below
    assert failed and {g["device_name"] for g in failed} <= {"edge-1", "edge-2"}
    assert all(g["gate"] == "max_p95_ms" and g["value"] > MAX_P95_MS for g in failed), failed
    devices = by_name(done)
    assert devices["edge-2"]["figures"]["p95_basis"] == "serving telemetry"
    assert devices["edge-2"]["figures"]["requests"] > 0

    switched = ("edge-1", "edge-2")
    reports = fleet.back_on_v1(switched)
    for name in switched:  # back on support:1, by the devices' own reports
        assert devices[name]["status"] == "rolled_back" and reports[name]["active_model"] == V1
        assert len(fleet.releases_of(name)) == 1
    assert (devices["edge-3"]["status"], int(devices["edge-3"]["release"])) == ("pending", 0)
    assert fleet.releases_of("edge-3") == []  # untouched: still on its first release
    untouched = reports["edge-3"]
    assert (untouched["phase"], untouched["active_model"], int(untouched["desired_release"])) == \
        ("active", V1, fleet.first["edge-3"])


def test_a_controller_killed_between_waves_resumes_at_the_right_wave(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    # waves start at most every 7.5 s: after the canary's wave passes, the rollout sits between
    # waves for a few seconds, and the controller is killed there
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, NAMES,
                        controller_extra=controller_flags(waves_per_minute=8))
    fleet.register(tiny.int4, golden)
    created = fleet.create("--waves", "1,50%,100%", "--bake", "1s")
    rollout_id = created["id"]
    fleet.until(rollout_id, lambda r: r["state"] != "running" or "wave_passed" in actions(r),
                "wave 1 to pass")
    fleet.kill_controller()  # SIGKILL
    killed_at_ms = int(time.time() * 1000)
    left = fleet.stored_rollout(rollout_id)
    assert (left["state"], left["current_wave"], left["wave_started_ms"]) == ("running", 1, 0), \
        f"not killed between waves: {left}"

    fleet.restart_controller()
    done = fleet.until_final(rollout_id)
    assert done["state"] == "succeeded", done["reason"]
    started = [e for e in done["events"] if e["action"] == "wave_started"]
    assert [e["detail"].split(":")[0] for e in started] == ["wave 1 of 3", "wave 2 of 3", "wave 3 of 3"]
    assert int(started[0]["at_ms"]) < killed_at_ms < int(started[1]["at_ms"])  # resumed at wave 2
    assert actions(done).count("wave_passed") == 2 and actions(done)[-1] == "succeeded"
    for name, d in by_name(done).items():  # each device got support:2 once
        assert d["status"] == "active"
        assert fleet.releases_of(name) == [int(d["release"])]
    for report in fleet.reports({n: int(d["release"]) for n, d in by_name(done).items()}).values():
        assert (report["active_model"], report["previous_model"]) == (V2, V1)  # and runs it


def test_a_device_offline_throughout_is_counted_by_the_policy_and_converges_on_return(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    names = [f"edge-{i:02d}" for i in range(10)]  # waves 1,50%,100%: edge-00 | 01-04 | 05-09
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, names)
    gone = "edge-03"
    assert fleet.agents[gone].proc.terminate() == 0
    procs.wait_until(lambda: {d["name"]: d["status"] for d in procs.devices()}[gone] == "offline",
                     30, f"{gone} to be offline")
    fleet.register(tiny.int4, golden)
    created = fleet.create("--waves", "1,50%,100%", "--bake", "2s", "--max-failure", "1",
                           "--offline-timeout", "2s", "--offline-policy", "failed")
    rollout_id = created["id"]
    planned = by_name(created)[gone]
    assert (planned["wave"], planned["status"], planned["online"]) == (1, "pending", False)

    counted = fleet.until(rollout_id, lambda r: r["state"] != "running" or
                          by_name(r)[gone]["status"] != "pending", f"{gone} to be counted")
    reason = by_name(counted)[gone]["reason"]
    assert by_name(counted)[gone]["status"] == "failed", reason
    assert reason.startswith("offline: no live stream for") and "offline timeout 2 s" in reason
    assert "policy failed" in reason and int(by_name(counted)[gone]["release"]) == 0

    done = fleet.until_final(rollout_id)
    assert done["state"] == "succeeded", done["reason"]
    devices = by_name(done)
    rest = {n: int(d["release"]) for n, d in devices.items() if n != gone}
    assert {devices[n]["status"] for n in rest} == {"active"}
    reports = fleet.reports(rest)
    assert {reports[n]["active_model"] for n in rest} == {V2}
    # the offline device still runs support:1 by its last report; after the success it is given
    # support:2, to take when it returns
    assert (reports[gone]["active_model"], int(reports[gone]["active_release"])) == (V1, fleet.first[gone])
    left = devices[gone]
    assert left["status"] == "assigned" and "offline during the rollout" in left["reason"]
    assert fleet.releases_of(gone) == [int(left["release"])]

    fleet.start_agent(gone)
    report = fleet.report(gone, int(left["release"]), "active")
    assert (report["active_model"], report["previous_model"]) == (V2, V1)
    assert ask(serving_url(fleet.agents[gone])) > 0


def test_pause_mid_wave_lets_the_update_in_flight_finish_and_starts_nothing_until_resume(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    # one device updated at a time, each download (6 MB of padding) capped at 2 MB/s: wave 2
    # (edge-2, edge-3) is updated one device after the other, and each update lasts seconds
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, NAMES,
                        controller_extra=controller_flags(max_in_flight=1),
                        agent_extra=("--max-download-rate", "2"))
    fleet.register(tiny.int4, golden, pad=True)
    created = fleet.create("--waves", "1,100%", "--bake", "1s")
    rollout_id = created["id"]
    fleet.until(rollout_id, lambda r: r["state"] != "running" or (
        r["current_wave"] == 1 and "assigned" in {d["status"] for d in r["devices"]}),
        "a wave-2 device to be updating")

    paused = procs.cli("rollout", "pause", rollout_id)
    assert paused["state"] == "paused"
    status = {n: d["status"] for n, d in by_name(paused).items()}
    [busy] = [n for n, s in status.items() if s == "assigned"]  # in flight when paused
    [waiting] = [n for n, s in status.items() if s == "pending"]
    release = int(by_name(paused)[busy]["release"])

    fleet.report(busy, release)  # the update in flight finishes, by its own report
    fleet.until(rollout_id, lambda r: by_name(r)[busy]["status"] == "active", f"{busy} to count active")
    time.sleep(2.5)  # longer than the bake, many ticks: nothing may start while paused
    still = fleet.status(rollout_id)
    assert (still["state"], still["current_wave"]) == ("paused", 1)
    assert (by_name(still)[waiting]["status"], int(by_name(still)[waiting]["release"])) == ("pending", 0)
    assert fleet.releases_of(waiting) == []
    report = fleet.deployment(waiting)
    assert (report["active_model"], int(report["desired_release"])) == (V1, fleet.first[waiting])
    again = procs.cli_result("rollout", "pause", rollout_id)
    assert again.returncode != 0 and "paused" in again.stdout + again.stderr

    assert procs.cli("rollout", "resume", rollout_id)["state"] == "running"
    done = fleet.until_final(rollout_id)
    assert done["state"] == "succeeded", done["reason"]
    assert [a for a in actions(done) if a in ("paused", "resumed")] == ["paused", "resumed"]
    assert all(e["actor"] != "system" for e in done["events"] if e["action"] in ("paused", "resumed"))
    for name, d in by_name(done).items():
        assert d["status"] == "active" and fleet.releases_of(name) == [int(d["release"])]
    for report in fleet.reports({n: int(d["release"]) for n, d in by_name(done).items()}).values():
        assert report["active_model"] == V2


def test_rollback_of_a_finished_rollout_returns_every_device_to_its_previous_model(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, NAMES)
    fleet.register(tiny.int4, golden)
    created = fleet.create("--waves", "1,50%,100%", "--bake", "1s")
    done = fleet.until_final(created["id"])
    assert done["state"] == "succeeded", done["reason"]
    for report in fleet.reports({n: int(d["release"]) for n, d in by_name(done).items()}).values():
        assert report["active_model"] == V2

    back = procs.cli("rollout", "rollback", created["id"])
    assert back["state"] == "rolled_back"
    assert {d["status"] for d in back["devices"]} == {"rolled_back"}
    assert actions(back)[-1] == "rolled_back" and back["events"][-1]["actor"] != "system"
    for name in NAMES:  # by their own reports
        assert fleet.back_on_v1(NAMES)[name]["active_model"] == V1
        assert ask(serving_url(fleet.agents[name])) > 0  # and they answer
    again = procs.cli_result("rollout", "rollback", created["id"])
    assert again.returncode != 0 and "rolled_back" in again.stdout + again.stderr
    assert fleet.status(created["id"])["state"] in FINAL


def test_a_device_killed_mid_update_returns_after_the_rollback_to_the_old_model(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    """edge-2 is SIGKILLed while it downloads support:2 (6 MB at 1 MB/s), is counted failed by
    the offline policy, and the rollout halts and rolls back. Started again after the rollback,
    it converges to support:1 like its neighbour, and never installs the rolled-back model."""
    names = ("edge-1", "edge-2")
    fleet = start_fleet(procs, tmp_path, tiny.int4, golden, names,
                        agent_extra=("--max-download-rate", "1"))
    fleet.register(tiny.int4, golden, pad=True)
    created = fleet.create("--waves", "100%", "--bake", "1s", "--offline-timeout", "2s",
                           "--offline-policy", "failed", "--max-failure", "0")
    rollout_id = created["id"]

    def downloading() -> bool:
        d = fleet.deployment("edge-2")
        return d["phase"] == "downloading" and int(d["bytes_done"]) > 0 and \
            int(d["desired_release"]) in fleet.releases_of("edge-2")
    procs.wait_until(downloading, SETTLE_S, "edge-2 to be downloading support:2", interval=0.2)
    fleet.agents["edge-2"].proc.kill()  # SIGKILL mid-download

    done = fleet.until_final(rollout_id)
    assert done["state"] == "rolled_back", done["reason"]
    gone = by_name(done)["edge-2"]
    assert gone["status"] == "rolled_back" and "called off" in gone["reason"], gone["reason"]
    [v2] = fleet.releases_of("edge-2")
    [back] = fleet.rollbacks_of("edge-2")
    assert back > v2 and int(fleet.deployment("edge-2")["desired_release"]) == back
    assert fleet.back_on_v1(["edge-1"])["edge-1"]["active_model"] == V1  # the neighbour

    fleet.start_agent("edge-2")  # the same data dir: it resumes where it was killed
    report = fleet.back_on_v1(["edge-2"], ("active", "rolled_back"))["edge-2"]
    assert report["active_model"] == V1 and int(report["active_release"]) == back
    time.sleep(8)  # longer than the rest of its download would have taken at 1 MB/s
    report = fleet.deployment("edge-2")
    assert (report["active_model"], int(report["active_release"])) == (V1, back), report
    assert ask(serving_url(fleet.agents["edge-2"])) > 0
