"""Rollout benchmark: a 20 MB variant rolled out to 100 real agents in 3 health-gated waves, and
the time from a failed gate to every changed device being back on its previous model.

Real parts: ``slmops controller start`` as a process (``--rollout-max-in-flight 20``, the issue's
cap and the default; ``--rollout-waves-per-minute 60`` so the wave-start limit never binds; the
rollout engine's default 0.5 s tick), and the agent daemon itself (agent/daemon.py), 25 to a
process (bench/rollout_fleet.py), each with its own data dir, identity (enrolled with a token
from ``slmops token create``), mTLS streams, model slot and HTTP server. The rollouts are made
with ``slmops rollout create`` and followed over the admin gRPC API.

The variants are the tests' tiny Llama (tests/variants.py, built once and cached in ``--work``):
v1 its fp32 build, v2 its int4 build padded with a file of random bytes to 20 MB, v3 v2 plus one
small file. Each is registered for the agents' profile with golden prompts that are the build's
own greedy answers, so the on-device gate passes.

1. setup, not measured: every agent online, v1 assigned to each and active (so a rollback has a
   previous model);
2. ``rollout create support:2 --waves 1,25%,100% --bake 10s --min-device-accuracy 0.9
   --max-error-rate 0.1``: the time of each wave (from the rollout's wave_started,
   bake start, wave_passed and succeeded stamps) and in all; the controller's CPU time and peak
   RSS over it;
3. the same for support:3, with serving traffic sent to the devices of wave 3 (``--fail-wave``)
   once they have switched: one good chat completion and two malformed requests (HTTP 400) each,
   so ``max_error_rate`` fails on the telemetry after the bake, the rollout halts and rolls back
   every device it switched (all of them, with wave 3). Measured: from the ``halted`` stamp to
   the device reports (their controller-side stamps) that show every one back on support:2.

    .venv/bin/python -m bench.rollout [--agents 100] [--quick] [--json] [--work DIR] [--keep]

Progress goes to stderr; the figures to stdout, as tables or (``--json``) a JSON document.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.controller_proc import REPO, BenchError, vm_hwm_bytes
from bench.delivery import say
from bench.delivery_agents import (
    Admin,
    Clock,
    register_version,
    variant_with_extra_file,
    watch_releases,
)
from bench.fleet_scale import machine
from bench.rollout_fleet import FleetProc, agent_lines, log_time
from controller.cli.views import phase_word
from controller.rollouts import states
from protos import rollout_pb2

sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny variants and process harness
import variants
from procs import ProcessHarness

MB = 1e6
MODEL = "support"
LABELS = {"bench": "rollout"}
GOLDEN_N = 4
FINAL = ("succeeded", "halted", "aborted", "rolled_back")


def _state(r: rollout_pb2.Rollout) -> str:
    return states.rollout_state_from_proto(r.rollout_state)


def _status(d: rollout_pb2.RolloutDevice) -> str:
    return states.device_state_from_proto(d.state)
POLL_S = 0.25
GATES = ("--min-device-accuracy", "0.9", "--max-error-rate", "0.1")
TARGET_BACK_S = 30.0


# --- the variants -----------------------------------------------------------------------------

def tiny_builds(work: Path) -> dict[str, Path]:
    """The tests' tiny support model built for fp32 and int4 (tests/variants.py), once."""
    root = work / "tiny"
    built = {p: root / f"variant-{p}" for p in variants.PRECISIONS}
    if all((v / "genai_config.json").is_file() for v in built.values()):
        return built
    import torch

    say(f"training the tests' tiny model and building its variants into {root} (cached)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = variants.train_support_model(root)
    finally:
        torch.set_num_threads(threads)
    for precision, out in built.items():
        variants.build_variant(model, out, precision)
    return built


def golden(work: Path, variant: Path, precision: str) -> list[dict[str, str]]:
    """GOLDEN_N test prompts with ``variant``'s own greedy answers (tests/variants.py), cached."""
    path = work / f"golden-{precision}.json"
    if not path.is_file():
        from controller.pipeline.task import support

        rows = variants.golden_rows(variant, support.generate("test", 10, seed=0), GOLDEN_N)
        path.write_text(json.dumps(rows, indent=2))
    return list(json.loads(path.read_text()))


def padded(variant: Path, dest: Path, total_bytes: int) -> Path:
    """A copy of ``variant`` plus extra-weights.bin of random bytes, ``total_bytes`` in all."""
    if not (dest / "extra-weights.bin").is_file():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(variant, tmp)
        size = sum(f.stat().st_size for f in tmp.iterdir())
        with open(tmp / "extra-weights.bin", "wb") as f:
            left = max(0, total_bytes - size)
            while left:
                f.write(os.urandom(min(left, 1 << 20)))
                left -= min(left, 1 << 20)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


# --- measuring --------------------------------------------------------------------------------

class Meter:
    """CPU time and RSS of the controller (sampled every 0.2 s), CPU time of the agent processes,
    and how busy the whole machine was, between start() and stop()."""

    def __init__(self, controller_pid: int, fleet_pids: list[int]) -> None:
        self.ctl = psutil.Process(controller_pid)
        self.fleet = [psutil.Process(pid) for pid in fleet_pids]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_peak = 0

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss_peak = max(self.rss_peak, self.ctl.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def start(self) -> None:
        self.t0, self.rss0 = time.monotonic(), self.ctl.memory_info().rss
        self.bench0 = time.process_time()
        self.ctl0, self.fleet0 = self._cpu(self.ctl), sum(self._cpu(p) for p in self.fleet)
        self.sys0 = psutil.cpu_times()
        self.rss_peak = self.rss0
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        wall = time.monotonic() - self.t0
        ctl_cpu = self._cpu(self.ctl) - self.ctl0
        fleet_cpu = sum(self._cpu(p) for p in self.fleet) - self.fleet0
        s0, s1 = self.sys0, psutil.cpu_times()
        idle = (s1.idle + getattr(s1, "iowait", 0.0)) - (s0.idle + getattr(s0, "iowait", 0.0))
        busy = sum(s1) - sum(s0) - idle
        bench_cpu = time.process_time() - self.bench0
        rss_end = self.ctl.memory_info().rss
        self.rss_peak = max(self.rss_peak, rss_end)
        return {"wall_s": round(wall, 2), "controller_cpu_s": round(ctl_cpu, 2),
                "controller_cpu_percent": round(100 * ctl_cpu / wall, 1),
                "controller_rss_start_mb": round(self.rss0 / MB, 1),
                "controller_rss_peak_mb": round(self.rss_peak / MB, 1),
                "controller_rss_end_mb": round(rss_end / MB, 1),
                "controller_vm_hwm_mb": round(vm_hwm_bytes(self.ctl.pid) / MB, 1),
                "agents_cpu_s": round(fleet_cpu, 2),
                "bench_cpu_s": round(bench_cpu, 2), "machine_busy_cpu_s": round(busy, 2),
                "others_cpu_s": round(max(0.0, busy - ctl_cpu - fleet_cpu - bench_cpu), 2)}


def events(rollout: rollout_pb2.Rollout, *actions: str) -> list[rollout_pb2.RolloutEvent]:
    return [e for e in rollout.events if e.action in actions]


def wave_figures(rollout: rollout_pb2.Rollout, bakes: dict[int, int], variant_bytes: int
                 ) -> list[dict[str, Any]]:
    """Per wave, from the rollout's stamps: started (s after created), update (wave_started ->
    bake started: every device of the wave settled), bake (-> wave_passed / succeeded / halted),
    the wave in all, and the MB it delivered per second of its update."""
    created = events(rollout, "created")[0].at_ms
    starts = events(rollout, "wave_started")
    ends = events(rollout, "wave_passed", "succeeded", "halted")
    out = []
    for i, start in enumerate(starts):
        size = rollout.waves[i].size
        end = ends[i].at_ms if i < len(ends) else None
        bake = bakes.get(i)
        update_s = (bake - start.at_ms) / 1000 if bake else None
        out.append({"wave": i + 1, "devices": size, "started_s": round((start.at_ms - created) / 1000, 2),
                    "update_s": round(update_s, 2) if update_s is not None else None,
                    "bake_s": round((end - bake) / 1000, 2) if end and bake else None,
                    "wave_s": round((end - start.at_ms) / 1000, 2) if end else None,
                    "end": ends[i].action if i < len(ends) else None,
                    "mb_s": round(size * variant_bytes / MB / update_s, 1) if update_s else None})
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "p90": round(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)], 2), "max": round(ordered[-1], 2)}


def device_phases(lines: dict[str, list[tuple[float, str]]], names: list[str], model: str,
                  since: float) -> dict[str, Any]:
    """Per device, from its agent's log lines after ``since``: from the desired state naming
    ``model`` to "release N: active"; the biggest file's download (its "fetching blob" line to
    the next one: the agent fetches one file at a time); and the rest (the small files,
    verification, staging, the on-device gate, the switch)."""
    to_active, big, rest = [], [], []
    for name in names:
        mine = [(t, m) for t, m in lines.get(name, []) if t >= since]
        recv = next((t for t, m in mine if m.startswith("desired state") and f"model {model}," in m), None)
        if recv is None:
            continue
        after = [(t, m) for t, m in mine if t >= recv]
        active = next((t for t, m in after if re.match(r"release \d+: active$", m)), None)
        fetches = [(t, m) for t, m in after if m.startswith("fetching blob")]
        start = next((i for i, (_, m) in enumerate(fetches) if "(extra-weights.bin)" in m), None)
        if active is not None:
            to_active.append(active - recv)
        if start is not None and start + 1 < len(fetches):
            end = fetches[start + 1][0]
            big.append(end - fetches[start][0])
            if active is not None:
                rest.append(active - end)
    return {"assigned_to_active_s": _stats(to_active), "big_file_download_s": _stats(big),
            "after_big_file_s": _stats(rest)}


def rollback_stages(ctl_log: Path, lines: dict[str, list[tuple[float, str]]], rollout_id: str,
                    halted_ms: int, targets: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """Seconds from the halted stamp (the start of the engine step that judged the gates) to: the
    controller's "halted" log line (the gates judged), each agent's desired state naming its
    previous model (the rollback pushed), and its "release N: rolled_back" (switched back)."""
    halted = halted_ms / 1000
    logged = None
    pattern = re.compile(rf"^(\S+ \S+) WARNING \S+ rollout {re.escape(rollout_id)} halted")
    for line in ctl_log.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if m:
            logged = log_time(m[1])
    since = logged if logged is not None else halted
    pushed, switched = [], []
    for name, (release, model) in targets.items():
        mine = [(t, m) for t, m in lines.get(name, []) if t >= since]
        got = next((t for t, m in mine if m.startswith("desired state") and f"model {model}," in m), None)
        back = next((t for t, m in mine if m == f"release {release}: rolled_back"), None)
        if got is not None:
            pushed.append(got - halted)
        if back is not None:
            switched.append(back - halted)
    return {"gates_judged_s": round(logged - halted, 2) if logged is not None else None,
            "pushed_s": {**_stats(pushed), "first": round(min(pushed), 2) if pushed else None},
            "switched_s": {**_stats(switched), "first": round(min(switched), 2) if switched else None}}


# --- the bench --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args, self.run_dir = args, run_dir
        self.harness = ProcessHarness(run_dir)
        self.fleets: list[FleetProc] = []
        self.admin: Admin | None = None
        self.names: list[str] = []
        self.results: dict[str, Any] = {}
        self.profile = ""

    # setup
    def start(self) -> None:
        a = self.args
        ctl = self.harness.start_controller(offline_after="15s", extra=(
            "--rollout-max-in-flight", str(a.max_in_flight),
            "--rollout-waves-per-minute", f"{a.waves_per_minute:g}", "--rollout-tick", a.tick))
        self.ctl = ctl
        say(f"controller up on {ctl.address} (pid {ctl.proc.pid}; log {ctl.proc.err_path})")
        token = str(self.harness.create_token(uses=a.agents + 5)["token"])
        self.names = [f"edge-{i:03d}" for i in range(1, a.agents + 1)]
        per = math.ceil(a.agents / a.processes)
        groups = [self.names[i:i + per] for i in range(0, a.agents, per)]
        t0 = time.monotonic()
        for i, group in enumerate(groups, 1):
            fleet = FleetProc(f"fleet-{i}", group, self.run_dir / "agents", self.harness.log_dir)
            fleet.start(ctl.address, ctl.info["enroll"], token, LABELS, a.telemetry_interval)
            self.fleets.append(fleet)
        say(f"started {a.agents} agents in {len(groups)} processes ({per} a process at most)")
        self.admin = Admin(Path(ctl.info["config"]))
        self.wait_online(180 + 2 * a.agents)
        self.results["setup"] = {"online_s": round(time.monotonic() - t0, 1)}
        assert self.admin is not None
        devices = self.admin.devices()
        profiles = {devices[n].profile for n in self.names}
        if len(profiles) != 1:
            raise BenchError(f"the agents report {len(profiles)} profiles ({sorted(profiles)}); expected one")
        self.profile = profiles.pop()
        say(f"{a.agents} agents online after {self.results['setup']['online_s']} s, profile {self.profile}")

    def wait_online(self, timeout_s: float) -> None:
        assert self.admin is not None
        deadline, last = time.monotonic() + timeout_s, 0.0
        while True:
            self.check_fleets()
            devices = self.admin.devices()
            ready = sum(1 for n in self.names if n in devices and devices[n].status == "online"
                        and devices[n].profile)
            if ready == len(self.names):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{ready} of {len(self.names)} agents online after {timeout_s:.0f} s; "
                                 f"see {self.harness.log_dir}")
            if time.monotonic() - last > 5:
                last = time.monotonic()
                say(f"  {ready}/{len(self.names)} online")
            time.sleep(0.5)

    def check_fleets(self) -> None:
        for fleet in self.fleets:
            exited = fleet.exited_agents()
            if not fleet.running or exited:
                why = f"agents stopped: {'; '.join(exited[:3])}" if exited else "exited"
                raise BenchError(f"{fleet.name}: {why}\n{fleet.tail()}")

    def prepare_versions(self, builds: dict[str, Path]) -> None:
        a, work = self.args, self.args.work
        g32, g4 = golden(work, builds["fp32"], "fp32"), golden(work, builds["int4"], "int4")
        v2 = padded(builds["int4"], work / f"variant-int4-{a.size_mb:g}mb", int(a.size_mb * MB))
        v3 = variant_with_extra_file(v2, work / f"variant-int4-{a.size_mb:g}mb-plus-note")
        data_dir = self.ctl.data_dir
        refs = {}
        for key, variant, precision, rows in (("v1", builds["fp32"], "fp32", g32), ("v2", v2, "int4", g4),
                                              ("v3", v3, "int4", g4)):
            ref, size = register_version(data_dir, self.run_dir / key, variant, self.profile, rows,
                                             name=MODEL, precision=precision)
            refs[key] = {"ref": ref, "bytes": size, "files": len(list(variant.iterdir()))}
        self.results["versions"] = refs
        say("registered " + ", ".join(f"{r['ref']} ({r['bytes'] / MB:.2f} MB)" for r in refs.values()))

    def setup_v1(self) -> None:
        assert self.admin is not None
        admin, ref = self.admin, self.results["versions"]["v1"]["ref"]
        t0 = Clock()
        with ThreadPoolExecutor(max_workers=8) as pool:
            releases = dict(zip(self.names, pool.map(lambda n: admin.assign(n, ref), self.names),
                                strict=True))
        watch_releases(admin, releases, t0, 300 + 3 * len(self.names), say)
        self.results["setup"]["v1_active_s"] = round(t0.since(), 1)
        say(f"setup: {ref} active on all {len(self.names)} devices after {t0.since():.1f} s")

    # the rollouts
    def create(self, ref: str) -> str:
        a = self.args
        selector = [f for k, v in LABELS.items() for f in ("-l", f"{k}={v}")]
        made = self.harness.cli("rollout", "create", ref, *selector, "--waves", a.waves,
                                "--bake", f"{a.bake:g}s", *GATES)
        rollout_id = str(made.get("id") or made.get("rollout", {}).get("id"))
        say(f"rollout {rollout_id}: {ref}, waves {a.waves}, bake {a.bake:g} s")
        return rollout_id

    def get(self, rollout_id: str) -> rollout_pb2.Rollout:
        assert self.admin is not None
        return self.admin.stub.GetRollout(rollout_pb2.GetRolloutRequest(id=rollout_id), timeout=30).rollout

    def follow(self, rollout_id: str, on_poll: Any = None) -> tuple[rollout_pb2.Rollout, dict[int, int]]:
        """Poll the rollout until it ends; it, and wave -> bake_started_ms as seen while polling."""
        bakes: dict[int, int] = {}
        deadline = time.monotonic() + 600 + 6 * len(self.names)
        last, state = 0.0, ""
        while True:
            self.check_fleets()
            r = self.get(rollout_id)
            if r.bake_started_ms and r.current_wave not in bakes:
                bakes[r.current_wave] = r.bake_started_ms
                say(f"  wave {r.current_wave + 1}: every device settled, baking "
                    f"({(r.bake_started_ms - r.created_at_ms) / 1000:.1f} s after created)")
            if on_poll is not None:
                on_poll(r)
            # A halt with auto-rollback writes "halted", then rolls back device by device, then
            # writes its "rolled_back" event: done once that is there.
            if _state(r) in FINAL and not (r.auto_rollback and events(r, "halted")
                                         and not events(r, "rolled_back")):
                return r, bakes
            if time.monotonic() - last > 5 or _state(r) != state:
                last, state = time.monotonic(), _state(r)
                w = r.waves[r.current_wave]
                say(f"  {state}, wave {r.current_wave + 1}/{len(r.waves)} "
                    f"{states.wave_state_from_proto(w.wave_state)}: "
                    f"{w.active} active, {w.failed} failed, {w.pending} pending of {w.size}")
            if time.monotonic() > deadline:
                raise BenchError(f"rollout {rollout_id} still {_state(r)} after the timeout")
            time.sleep(POLL_S)

    def meter(self) -> Meter:
        return Meter(self.ctl.proc.pid, [f.popen.pid for f in self.fleets if f.popen is not None])

    def rollout_v2(self) -> None:
        versions = self.results["versions"]
        meter = self.meter()
        meter.start()
        rollout_id = self.create(versions["v2"]["ref"])
        r, bakes = self.follow(rollout_id)
        usage = meter.stop()
        if _state(r) != "succeeded":
            raise BenchError(f"rollout {rollout_id} ended {_state(r)}: {r.reason}")
        waves = wave_figures(r, bakes, versions["v2"]["bytes"])
        total = (r.finished_at_ms - r.created_at_ms) / 1000
        not_on_v2 = [n for n, d in self.admin.devices().items()
                     if n in self.names and d.deployment.active_model != versions["v2"]["ref"]]
        if not_on_v2:
            raise BenchError(f"after the rollout, {len(not_on_v2)} devices are not on v2: {not_on_v2[:5]}")
        phases = device_phases(self.agent_lines(), self.names, r.model, r.created_at_ms / 1000)
        self.results["rollout"] = {"id": rollout_id, "model": r.model, "state": _state(r),
                                   "waves": waves, "total_s": round(total, 2), "devices": phases,
                                   "usage": usage}
        say(f"rollout {rollout_id} succeeded in {total:.1f} s: " + "; ".join(
            f"wave {w['wave']} ({w['devices']}) {w['wave_s']} s" for w in waves))

    def rollout_v3_fails(self) -> None:
        a, versions = self.args, self.results["versions"]
        meter = self.meter()
        meter.start()
        rollout_id = self.create(versions["v3"]["ref"])
        sent: dict[str, Any] = {}

        def traffic(r: rollout_pb2.Rollout) -> None:
            if sent or r.current_wave != a.fail_wave - 1 or not r.bake_started_ms:
                return
            names = [d.device_name for d in r.devices if d.wave == a.fail_wave - 1 and _status(d) == "active"]
            sent.update(self.bad_traffic(names))
            sent["after_bake_start_s"] = round(time.time() - r.bake_started_ms / 1000, 2)
            say(f"  sent wave {a.fail_wave}'s {len(names)} devices {sent['requests']} requests, "
                f"{sent['errors']} of them malformed, {sent['after_bake_start_s']} s into the bake")

        r, bakes = self.follow(rollout_id, traffic)
        if not events(r, "halted"):
            raise BenchError(f"rollout {rollout_id} ended {_state(r)} without a halt; the failing "
                             "traffic did not fail the gate (see the rollout's gate results)")
        halted = events(r, "halted")[0]
        issued = events(r, "rolled_back")
        # A rollback is a new release naming the previous model: each device's desired one now.
        assert self.admin is not None
        desired = self.admin.devices()
        targets = {d.device_name: (desired[d.device_name].deployment.desired_release, d.previous_model)
                   for d in r.devices if _status(d) == "rolled_back"}
        back = self.wait_back(r, targets, halted.at_ms)
        usage = meter.stop()
        time.sleep(0.5)  # the last log lines
        stages = rollback_stages(self.ctl.proc.err_path, self.agent_lines(), rollout_id, halted.at_ms,
                                 targets)
        self.results["failure"] = {
            "id": rollout_id, "model": r.model, "state": _state(r), "fail_wave": a.fail_wave,
            "reason": r.reason, "traffic": sent, "waves": wave_figures(r, bakes, 0),
            "halted_after_created_s": round((halted.at_ms - r.created_at_ms) / 1000, 2),
            "rollback_detail": issued[0].detail[:300] if issued else "", **back, "stages": stages,
            "usage": usage,
            "target_s": TARGET_BACK_S, "target_met": back["all_back_s"] < TARGET_BACK_S}
        f = self.results["failure"]
        say(f"halted {f['halted_after_created_s']} s after created ({r.reason[:120]}); "
            f"{f['devices']} devices back on their previous model {f['all_back_s']} s after the halt "
            f"(first {f['first_back_s']} s, median {f['median_back_s']} s)")

    def bad_traffic(self, names: list[str]) -> dict[str, Any]:
        """One good chat completion and two malformed bodies (HTTP 400) to each device's HTTP
        server: the serving errors the max_error_rate gate is judged on."""
        good = json.dumps({"model": MODEL, "max_tokens": 8,
                           "messages": [{"role": "user", "content": "Are you open on Sunday?"}]}).encode()
        counts = {"requests": 0, "ok": 0, "errors": 0, "unexpected": []}
        lock = threading.Lock()

        def one(url: str, body: bytes) -> None:
            request = urllib.request.Request(url + "/v1/chat/completions", body,
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    kind = "ok"
            except urllib.error.HTTPError as e:
                kind = "errors" if e.code == 400 else f"HTTP {e.code}"
            except OSError as e:
                kind = f"{type(e).__name__}: {e}"
            with lock:
                counts["requests"] += 1
                if kind in ("ok", "errors"):
                    counts[kind] += 1
                else:
                    counts["unexpected"].append(kind)

        urls = [json.loads((self.run_dir / "agents" / name / "serving.json").read_text())["url"]
                for name in names]
        # the malformed ones first: they are quick, and they are what must reach the telemetry
        jobs = [(url, body) for body in (b"{not json", b"[1, 2]", good) for url in urls]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda job: one(*job), jobs))
        counts["unexpected"] = sorted(set(counts["unexpected"]))[:5]
        return counts

    def agent_lines(self) -> dict[str, list[tuple[float, str]]]:
        return agent_lines([f.err_path for f in self.fleets])

    def wait_back(self, r: rollout_pb2.Rollout, targets: dict[str, tuple[int, str]],
                  halted_ms: int) -> dict[str, Any]:
        """Poll the fleet until every device the rollout rolled back (name -> its rollback
        instruction's release and the previous model) reports that release active; seconds from
        the halt to each report (the controller's stamp of it)."""
        assert self.admin is not None
        kept = [f"{d.device_name}: {_status(d)} {d.reason}" for d in r.devices
                if _status(d) not in ("rolled_back", "pending", "skipped", "failed")]
        if not targets:
            raise BenchError(f"rollout {r.id} rolled no device back; devices: {kept[:5]}")
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while len(seen) < len(targets):
            devices, now_ms = self.admin.devices(), time.time() * 1000
            for name, (release, model) in targets.items():
                d = devices[name].deployment
                phase = phase_word(d.deployment_phase, bool(d.updated_at_ms))
                if name not in seen and d.active_release == release and d.desired_release == release \
                        and phase in ("rolled_back", "active"):
                    if d.active_model != model:
                        raise BenchError(f"{name} is back on release {release} but reports "
                                         f"{d.active_model}, not {model}")
                    seen[name] = (min(now_ms, d.updated_at_ms or now_ms) - halted_ms) / 1000
                elif d.desired_release == release and phase in ("failed", "refused"):
                    raise BenchError(f"{name}: rollback to release {release} {phase}: {d.reason}")
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(seen)} of {len(targets)} devices back after 300 s")
            time.sleep(0.1)
        seen_all_s = (time.time() * 1000 - halted_ms) / 1000
        times = sorted(seen.values())
        return {"devices": len(targets), "previous_model": sorted({m for _, m in targets.values()}),
                "not_rolled_back": kept[:10], "first_back_s": round(times[0], 2),
                "median_back_s": round(statistics.median(times), 2), "all_back_s": round(times[-1], 2),
                "all_back_seen_by_poll_s": round(seen_all_s, 2)}

    def close(self) -> None:
        for fleet in self.fleets:  # SIGTERM to all first, then wait for each
            fleet.terminate()
        for fleet in self.fleets:
            say(f"{fleet.name}: {fleet.wait(30)}")
        for proc in self.harness.procs:
            if proc.running:
                proc.signal(signal.SIGTERM)
                try:
                    proc.popen.wait(20)
                    say(f"controller: exit {proc.popen.returncode}")
                except Exception:  # noqa: BLE001 - killed below
                    pass
        self.harness.cleanup()  # SIGKILL for anything still running
        if self.admin is not None:
            self.admin.close()


# --- report -----------------------------------------------------------------------------------

def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    s, r = doc["settings"], doc["results"]
    lines = [f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']['nproc']} CPUs ({doc['machine']['cpu_model']}), "
             f"{doc['machine']['memory_gib']} GiB, shared with other work; {doc['machine']['date']}.", "",
             f"Settings: {s['agents']} agents in {s['processes']} processes; waves `{s['waves']}`, bake "
             f"{s['bake_s']:g} s, gates `{' '.join(GATES)}`; controller `--rollout-max-in-flight "
             f"{s['max_in_flight']} --rollout-waves-per-minute {s['waves_per_minute']:g} --rollout-tick "
             f"{s['tick']}`, at most 8 downloads served at once (default); agents' telemetry every "
             f"{s['telemetry_interval_s']:g} s.", ""]
    v = r.get("versions", {})
    if v:
        lines += ["Versions: " + ", ".join(f"{x['ref']} {x['bytes'] / MB:.2f} MB ({x['files']} files)"
                                           for x in v.values()), ""]
    if "rollout" in r:
        x, u = r["rollout"], r["rollout"]["usage"]
        lines += [f"Rollout {x['id']} of {x['model']}:", "",
                  "| wave | devices | started at s | update s | bake s | wave s | MB/s in the update |",
                  "|---|---|---|---|---|---|---|"]
        for w in x["waves"]:
            lines.append(f"| {w['wave']} | {w['devices']} | {_s(w['started_s'])} | {_s(w['update_s'])} | "
                         f"{_s(w['bake_s'])} | {_s(w['wave_s'])} | {w['mb_s'] or '-'} |")
        lines += [f"| **all** | {sum(w['devices'] for w in x['waves'])} | | "
                  f"{_s(sum(w['update_s'] or 0 for w in x['waves']))} | "
                  f"{_s(sum(w['bake_s'] or 0 for w in x['waves']))} | **{x['total_s']:.2f}** | |", ""]
        d = x.get("devices", {})
        if d:
            lines += [
                "Update = wave_started to the bake's start (every device of the wave settled, seen at "
                "the next engine tick); bake = to wave_passed/succeeded. Per device, from the agents' "
                "logs (median / p90 / max s, all devices): desired state to active "
                f"{_mm(d['assigned_to_active_s'])}; the 20 MB file's download "
                f"{_mm(d['big_file_download_s'])}; after it (the small files, verification, staging, "
                f"the on-device gate, the switch) {_mm(d['after_big_file_s'])}.", ""]
        lines += [_usage_head("over the rollout"),
                  _usage_row(f"{u['wall_s']:.1f} s", u)]
    if "failure" in r:
        f, u, st = r["failure"], r["failure"]["usage"], r["failure"]["stages"]
        reason = f["reason"] if len(f["reason"]) <= 160 else f["reason"][:160] + "…"
        lines += ["", f"Failing rollout {f['id']} of {f['model']}: {reason}", "",
                  "| halted after created s | devices rolled back | gates judged s | rollback pushed "
                  "first / last s | switched back first / last s | reported back first / median s | "
                  f"**all back s** | target < {f['target_s']:g} s |", "|---|---|---|---|---|---|---|---|",
                  f"| {_s(f['halted_after_created_s'])} | {f['devices']} | {_s(st['gates_judged_s'])} | "
                  f"{_s(st['pushed_s'].get('first'))} / {_s(st['pushed_s'].get('max'))} | "
                  f"{_s(st['switched_s'].get('first'))} / {_s(st['switched_s'].get('max'))} | "
                  f"{_s(f['first_back_s'])} / {_s(f['median_back_s'])} | **{_s(f['all_back_s'])}** | "
                  f"{'met' if f['target_met'] else 'MISSED'} |", "",
                  "Seconds from the `halted` stamp (the start of the engine step that judged the gates); "
                  "judged = the controller's log line; pushed = the agent logged the desired state naming "
                  "its previous model; switched = the agent logged `rolled_back`; reported = the "
                  "controller's stamp of that report (all back: the last of them; the bench's poll saw it at "
                  f"{_s(f['all_back_seen_by_poll_s'])} s). Traffic sent to wave {f['fail_wave']}: "
                  f"{f['traffic'].get('requests', 0)} requests, {f['traffic'].get('errors', 0)} malformed, "
                  f"done {f['traffic'].get('after_bake_start_s', '-')} s into the bake.", "",
                  _usage_head("over the failing rollout"),
                  _usage_row(f"{u['wall_s']:.1f} s", u)]
    if "error" in doc:
        lines += ["", f"**The run stopped early:** {doc['error']}"]
    return "\n".join(lines) + "\n"


def _mm(x: dict[str, Any]) -> str:
    return f"{x['median']:.2f} / {x['p90']:.2f} / {x['max']:.2f}" if x.get("n") else "-"


def _usage_head(label: str) -> str:
    return (f"| {label} | controller CPU s | controller CPU % of a core | controller RSS start / peak / "
            "end MB | controller VmHWM MB | agents' CPU s | bench CPU s | other work's CPU s |\n"
            "|---|---|---|---|---|---|---|---|")


def _usage_row(label: str, u: dict[str, Any]) -> str:
    return (f"| {label} | {u['controller_cpu_s']:.1f} | {u['controller_cpu_percent']:.0f} | "
            f"{u['controller_rss_start_mb']:.0f} / {u['controller_rss_peak_mb']:.0f} / "
            f"{u['controller_rss_end_mb']:.0f} | {u['controller_vm_hwm_mb']:.0f} | "
            f"{u['agents_cpu_s']:.1f} | {u['bench_cpu_s']:.1f} | {u['others_cpu_s']:.1f} |")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=None, help="agents (default 100; --quick: 10)")
    p.add_argument("--processes", type=int, default=None, help="agent processes (default 4; --quick: 2)")
    p.add_argument("--bake", type=float, default=None, help="bake per wave, s (default 10; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 10 agents, 2 s bake")
    p.add_argument("--waves", default="1,25%,100%", help="the waves (the first is the canary)")
    p.add_argument("--fail-wave", type=int, default=3, help="the wave whose devices get failing traffic")
    p.add_argument("--size-mb", type=float, default=20.0, help="the rolled-out variant's size, MB")
    p.add_argument("--max-in-flight", type=int, default=20, help="--rollout-max-in-flight")
    p.add_argument("--waves-per-minute", type=float, default=60.0, help="--rollout-waves-per-minute")
    p.add_argument("--tick", default="500ms", help="--rollout-tick")
    p.add_argument("--telemetry-interval", type=float, default=None,
                   help="agents' telemetry interval, s (default 1; --quick: 0.5)")
    p.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    p.add_argument("--work", type=Path, default=Path("/tmp/slmops-bench-rollout"),
                   help="the variants are cached here; each run's processes get a dir inside")
    p.add_argument("--keep", action="store_true", help="keep the run's dir (data dirs, logs)")
    args = p.parse_args()
    quick = args.quick
    args.agents = args.agents or (10 if quick else 100)
    args.processes = min(args.agents, args.processes or (2 if quick else 4))
    args.bake = args.bake if args.bake is not None else (2.0 if quick else 10.0)
    args.telemetry_interval = args.telemetry_interval or (0.5 if quick else 1.0)
    if args.agents < 2:
        p.error("--agents: at least 2")
    if args.processes < 1:
        p.error("--processes: at least 1")
    if args.bake < 0:
        p.error("--bake: not negative")
    from controller.rollouts.plan import wave_sizes
    n_waves = len(wave_sizes(args.waves, args.agents))
    if not 1 <= args.fail_wave <= n_waves:
        p.error(f"--fail-wave: {args.fail_wave}; the waves {args.waves} make {n_waves} for "
                f"{args.agents} agents")
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops every process too, as Ctrl-C does
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.rollout", *sys.argv[1:]])
    started = time.monotonic()
    run_dir = args.work / f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    bench = Bench(args, run_dir)
    doc: dict[str, Any] = {
        "machine": machine(), "command": command,
        "settings": {"agents": args.agents, "processes": args.processes, "waves": args.waves,
                     "bake_s": args.bake, "fail_wave": args.fail_wave, "size_mb": args.size_mb,
                     "max_in_flight": args.max_in_flight, "waves_per_minute": args.waves_per_minute,
                     "tick": args.tick, "max_downloads": 8,
                     "telemetry_interval_s": args.telemetry_interval},
        "results": bench.results}
    keep = args.keep
    try:
        builds = tiny_builds(args.work)
        bench.start()
        bench.prepare_versions(builds)
        bench.setup_v1()
        bench.rollout_v2()
        bench.rollout_v3_fails()
    except (BenchError, AssertionError) as e:
        say(f"error: {e}")
        doc["error"] = str(e)[:2000]
        keep = True
    except Exception as e:  # noqa: BLE001 - reported, the processes stopped, the traceback kept
        say(f"error: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        doc["error"] = f"{type(e).__name__}: {e}"
        keep = True
    except KeyboardInterrupt:
        say("interrupted; stopping every process")
        doc["error"] = "interrupted"
        keep = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
        doc["seconds"] = round(time.monotonic() - started, 1)
        say(f"done in {doc['seconds']:.0f} s")
        if keep:
            say(f"kept {run_dir} (logs in {run_dir / 'logs'})")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(doc, indent=2) if args.json else markdown(doc))
    if "error" in doc:
        sys.exit(1)


if __name__ == "__main__":
    main()
