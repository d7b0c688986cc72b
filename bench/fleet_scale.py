"""Fleet scale: one controller, N simulated agents streaming telemetry over mutual TLS.

For each N: a fresh controller process (``slmops controller start``), a token, N devices
enrolled through the real Enroll RPC (each with its own EC P-256 key and certificate), then
one load process (bench/sim_agents.py) holding N real mTLS streams, one sample of 20 values
per agent per second. Measured over a steady window after every agent has its Welcome:
samples and values acknowledged per second, acknowledgement latency, the controller's RSS
and CPU, the load process's CPU. Then the agents stop, the controller stops, and its SQLite
database is counted per device: every acknowledged sample must be stored.

    .venv/bin/python -m bench.fleet_scale --agents 100,500,1000 --duration 60

Targets (2-core machine): 1000 agents held, 1 sample/agent/s, p99 ack < 1 s, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.enroll import EnrollmentError, enroll
from bench.controller_proc import REPO, BenchError, ControllerProcess, vm_hwm_bytes
from protos import common_pb2

MB = 1024 * 1024
RATE_TOLERANCE = 0.98  # samples/s >= 98 % of N counts as "1 sample per agent per second"
P99_TARGET_MS = 1000.0


def say(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def enroll_devices(ctl: ControllerProcess, n: int, threads: int) -> tuple[list[dict], float]:
    """N devices through the real Enroll RPC; returns [{name, identity}] and the seconds."""
    assert ctl.endpoints is not None
    token = ctl.create_token(n)
    hardware = common_pb2.Hardware(arch="x86_64", cpu_model="bench simulated device",
                                   logical_cores=4, physical_cores=4, memory_total_bytes=4 << 30)

    def one(i: int) -> dict:
        name = f"sim-{i:05d}"
        for attempt in range(5):
            try:
                identity = enroll(enroll_address=ctl.endpoints.enroll,
                                  controller=ctl.endpoints.listen,
                                  token=token, name=name, labels={"bench": "fleet_scale"},
                                  hardware=hardware, timeout_s=30)
                return {"name": name, "identity": asdict(identity)}
            except EnrollmentError as e:
                if not e.retryable or attempt == 4:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    start = time.monotonic()
    out: list[dict] = []
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        for done, future in enumerate(as_completed(futures), 1):
            out.append(future.result())
            if done % max(1, n // 5) == 0 or done == n:
                say(f"  enrolled {done}/{n} ({done / (time.monotonic() - start):.0f}/s)")
    out.sort(key=lambda e: e["name"])
    return out, time.monotonic() - start


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def run_one(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    say(f"N={n}: starting the controller")
    work.mkdir(parents=True, exist_ok=True)
    profile = (work / f"profile-{n}") if args.profile else None
    ctl = ControllerProcess(work, profile_to=profile, profile_mode=args.profile or "timing",
                            cpu=0 if args.pin else None)
    loader: subprocess.Popen[str] | None = None
    result: dict[str, Any] = {"agents": n}
    try:
        endpoints = ctl.start()
        say(f"  controller pid {ctl.proc.pid} on {endpoints.listen}, "
            f"enrollment on {endpoints.enroll}")
        entries, enroll_s = enroll_devices(ctl, n, args.enroll_threads)
        result.update(enrolled=len(entries), enroll_s=round(enroll_s, 2),
                      enroll_per_s=round(len(entries) / enroll_s, 1))
        ids_path = work / f"identities-{n}.json"
        fd = os.open(ids_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # device keys
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)

        cmd = [sys.executable, "-m", "bench.sim_agents", "--identities", str(ids_path),
               "--duration", str(args.duration), "--ramp-rate", str(args.ramp_rate),
               "--settle", str(args.settle)]
        loader_log = open(work / f"loader-{n}.log", "w")  # closed below
        loader = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=loader_log,
                                  stdin=subprocess.DEVNULL, text=True)
        loader_ps = psutil.Process(loader.pid)
        if args.pin:
            loader_ps.cpu_affinity([1])
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_reader, args=(loader.stdout, lines), daemon=True).start()
        say(f"  load process pid {loader.pid}: {n} streams, ramp {args.ramp_rate:.0f}/s")

        # bounded: ramp + connect timeout + settle + window + stop, plus slack
        deadline = time.monotonic() + n / args.ramp_rate + 60 + args.settle + args.duration + 90
        marks: dict[str, Any] = {}
        last_print = 0.0
        final: dict[str, Any] | None = None
        while final is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"the load process did not finish in time (N={n}); "
                                 f"see {work / f'loader-{n}.log'}") from None
            if line is None:
                raise BenchError(f"the load process exited with {loader.wait()} before its "
                                 f"result; see {work / f'loader-{n}.log'}")
            event = json.loads(line)
            kind = event["event"]
            if kind == "progress" and time.monotonic() - last_print >= args.progress_every:
                last_print = time.monotonic()
                extra = (f", window {event['elapsed']:.0f}/{args.duration:.0f} s, "
                         f"p99 {event['p99_ms']} ms" if event["phase"] == "steady" else "")
                say(f"  [{event['phase']}] t={event['t']:.0f}s connected "
                    f"{event['connected']}/{event['total']}, acked {event['acked']}, "
                    f"pending {event['pending']}{extra}")
            elif kind == "steady_start":
                marks["t0"], marks["stamp0"] = time.monotonic(), time.time()
                marks["ctl_cpu0"] = ctl.cpu_seconds()
                t = loader_ps.cpu_times()
                marks["loader_cpu0"] = t.user + t.system
                marks["established"] = ctl.established()
                marks["ctl_threads"] = ctl.threads()
                marks["ctl_tcpu0"] = ctl.thread_cpu()
                say(f"  all streams up ({event['connected']}/{n}, "
                    f"{marks['established']} TCP connections on the mTLS port); "
                    f"steady window of {args.duration:.0f} s starts")
            elif kind == "steady_end":
                wall = time.monotonic() - marks["t0"]
                marks["stamp1"] = time.time()
                t = loader_ps.cpu_times()
                marks.update(
                    wall=wall, ctl_cpu_pct=100 * (ctl.cpu_seconds() - marks["ctl_cpu0"]) / wall,
                    loader_cpu_pct=100 * (t.user + t.system - marks["loader_cpu0"]) / wall,
                    ctl_threads_pct=thread_percent(marks["ctl_tcpu0"], ctl.thread_cpu(), wall),
                    ctl_rss_end=ctl.rss(), loader_rss=loader_ps.memory_info().rss,
                    loader_hwm=vm_hwm_bytes(loader.pid))
                say("  window done; stopping the agents (they drain what is pending)")
            elif kind == "result":
                final = event
        loader.wait(30)
        loader_log.close()
        marks["ctl_hwm"] = ctl.vm_hwm()
        marks["ctl_rss_peak"] = ctl.rss_peak
        say(f"  agents stopped; stopping the controller: {ctl.stop()}")
        return summarize(result, final, marks, ctl, profile)
    finally:
        if loader is not None and loader.poll() is None:
            loader.kill()
            loader.wait(10)
        ctl.stop()


def thread_percent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                   wall: float) -> dict[str, float]:
    """CPU % per thread name over the window (threads of one name summed; the main thread is
    the event loop, "ingest_0" the SQLite writer, the rest gRPC's)."""
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        out[name] = out.get(name, 0.0) + 100 * used / wall
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.5}


def summarize(result: dict[str, Any], final: dict[str, Any], marks: dict[str, Any],
              ctl: ControllerProcess, profile: Path | None) -> dict[str, Any]:
    n = result["agents"]
    agents = final["agents"]
    stored = ctl.stored_per_device({a["device_id"]: a["acked"] for a in agents})
    sent = sum(a["sent"] for a in agents)
    acked = sum(a["acked"] for a in agents)
    stored_total = sum(total for total, _ in stored.values())
    stored_acked = sum(upto for _, upto in stored.values())
    connected = sum(1 for a in agents
                    if a["welcomed"] and a["disconnects"] == 0 and a["connected_at_end"])
    window_s = final["window_s"]
    samples_per_s = sum(a["acked_window"] for a in agents) / window_s
    lat = final["batch_latency_ms"]
    lost = acked - stored_acked
    result.update(
        welcomed=sum(a["welcomed"] for a in agents), connected=connected,
        disconnects=sum(a["disconnects"] for a in agents),
        tcp_established=marks.get("established"), ramp_s=final["ramp_s"],
        window_s=window_s, samples_per_s=round(samples_per_s, 1),
        values_per_s=round(samples_per_s * final["values_per_sample"], 1),
        values_per_sample=final["values_per_sample"],
        ack_latency_ms=lat, sample_age_ms=final["sample_age_ms"],
        controller={"rss_peak_mb": round(marks["ctl_rss_peak"] / MB, 1),
                    "rss_end_mb": round(marks["ctl_rss_end"] / MB, 1),
                    "vm_hwm_mb": round(marks["ctl_hwm"] / MB, 1),
                    "cpu_percent": round(marks["ctl_cpu_pct"], 1),
                    "threads": marks.get("ctl_threads"),
                    "cpu_percent_by_thread": marks["ctl_threads_pct"]},
        loader={"cpu_percent": round(marks["loader_cpu_pct"], 1),
                "cpu_percent_self": round(100 * final["cpu_window_s"] / window_s, 1),
                "rss_mb": round(marks["loader_rss"] / MB, 1),
                "vm_hwm_mb": round(marks["loader_hwm"] / MB, 1),
                "loop_lag_ms": final["loop_lag_ms"]},
        samples={"generated": sum(a["generated"] for a in agents), "sent": sent,
                 "acked": acked, "stored": stored_total, "lost": lost,
                 "sent_unacked": sent - acked, "stored_beyond_ack": stored_total - stored_acked,
                 "devices_with_loss": sum(1 for a in agents
                                          if a["acked"] > stored[a["device_id"]][1])},
        stop_unfinished=final["stop_unfinished"],
        errors=sorted({a["last_error"] for a in agents if a["last_error"]})[:5],
    )
    result["targets"] = {
        "held": connected == n,
        "rate": samples_per_s >= RATE_TOLERANCE * n,
        "p99_under_1s": lat.get("p99", float("inf")) < P99_TARGET_MS,
        "lost_zero": lost == 0,
    }
    result["targets"]["all"] = all(result["targets"].values())
    if profile is not None and Path(f"{profile}.timing.json").exists():
        result["controller_timing"] = timing_summary(Path(f"{profile}.timing.json"),
                                                     marks["stamp0"], marks["stamp1"])
    elif profile is not None:
        result["profile"] = f"{profile}.txt"
    return result


def timing_summary(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """bench/ctl_profile.py's timing records, for the steady window only."""
    records = json.loads(path.read_text())
    wall = t1 - t0
    out: dict[str, Any] = {}
    for kind, rows in records.items():
        rows = [r for r in rows if t0 <= r[0] <= t1]
        if not rows:
            continue
        durations = sorted(r[1] for r in rows)
        entry = {"calls": len(rows), "busy_pct": round(100 * sum(durations) / wall, 1),
                 "cpu_pct": round(100 * sum(r[2] for r in rows) / wall, 1),
                 "p50_ms": round(durations[len(durations) // 2] * 1000, 2),
                 "p99_ms": round(durations[int(len(durations) * 0.99)] * 1000, 2),
                 "max_ms": round(durations[-1] * 1000, 2)}
        if kind == "ingest":
            entry.update(items_per_call=round(sum(r[3] for r in rows) / len(rows), 1),
                         samples_per_call=round(sum(r[4] for r in rows) / len(rows), 1),
                         values_per_s=round(sum(r[5] for r in rows) / wall),
                         cpu_us_per_value=round(1e6 * sum(r[2] for r in rows)
                                                / max(1, sum(r[5] for r in rows)), 1),
                         wall_us_per_value=round(1e6 * sum(durations)
                                                 / max(1, sum(r[5] for r in rows)), 1))
        if kind == "submit_wait":
            entry["queue_len_mean"] = round(sum(r[3] for r in rows) / len(rows), 1)
        out[kind] = entry
    return out


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    import grpc
    return {"nproc": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "grpcio": grpc.__version__,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(results: list[dict[str, Any]], facts: dict[str, Any], command: str) -> str:
    rows = ["| N | connected | samples/s | values/s | p50 ack ms | p99 ack ms | ctl RSS peak/end "
            "MB (VmHWM) | ctl CPU % | loader CPU % | lost (sent-unacked) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, lat, s = r["controller"], r["ack_latency_ms"], r["samples"]
        rows.append(
            f"| {r['agents']} | {r['connected']}/{r['agents']} | {r['samples_per_s']:.0f} | "
            f"{r['values_per_s']:.0f} | {lat.get('p50', '-')} | {lat.get('p99', '-')} | "
            f"{c['rss_peak_mb']:.0f}/{c['rss_end_mb']:.0f} ({c['vm_hwm_mb']:.0f}) | "
            f"{c['cpu_percent']:.0f} | {r['loader']['cpu_percent']:.0f} | "
            f"{s['lost']} ({s['sent_unacked']}) |")
    extra = ["", "| N | enroll/s | ramp s | TCP conns | sample age p50/p99 ms | loader loop lag "
             "p99 ms | acked / stored samples | targets (held, rate, p99<1s, 0 lost) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, age = r["targets"], r["sample_age_ms"]
        marks = " ".join("yes" if t[k] else "NO" for k in ("held", "rate", "p99_under_1s",
                                                            "lost_zero"))
        extra.append(
            f"| {r['agents']} | {r['enroll_per_s']} | {r['ramp_s']} | {r['tcp_established']} | "
            f"{age.get('p50', '-')}/{age.get('p99', '-')} | "
            f"{r['loader']['loop_lag_ms'].get('p99', '-')} | "
            f"{r['samples']['acked']} / {r['samples']['stored']} | {marks} |")
    head = [f"# Fleet scale: {facts['date']}", "",
            f"Machine: {facts['nproc']} CPUs ({facts['cpu_model']}), {facts['memory_gib']} GiB; "
            f"Python {facts['python']}, grpcio {facts['grpcio']}.", "",
            f"Command: `{command}`", "",
            "One sample = 20 values; CPU % is per core (100 % = one core), over the steady "
            "window; latency is a batch's write to its TelemetryAck, measured in the load "
            "process; lost = acknowledged but not in the controller's SQLite.", ""]
    return "\n".join(head + rows + extra) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", default="100,500,1000", help="comma-separated N values")
    p.add_argument("--duration", type=float, default=60.0, help="steady seconds per N")
    p.add_argument("--ramp-rate", type=float, default=100.0, help="new streams a second")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between ramp and window")
    p.add_argument("--enroll-threads", type=int, default=8)
    p.add_argument("--pin", action="store_true",
                   help="pin the controller to CPU 0 and the load process to CPU 1")
    p.add_argument("--profile", nargs="?", const="timing", choices=("timing", "cprofile"),
                   help="instrument the controller (bench/ctl_profile.py): timing (default) "
                        "or cprofile; implies --keep")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (DBs, logs)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                   help="where fleet_scale.md/.json go")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between lines")
    args = p.parse_args()
    try:
        sizes = [int(x) for x in args.agents.split(",") if x.strip()]
    except ValueError:
        p.error(f"--agents: {args.agents!r} is not a comma-separated list of integers")
    if not sizes or min(sizes) < 1:
        p.error(f"--agents: {args.agents!r} needs positive counts")
    if args.duration <= 0 or args.ramp_rate <= 0:
        p.error("--duration and --ramp-rate must be > 0")
    if args.pin and (os.cpu_count() or 1) < 2:
        p.error("--pin needs 2 CPUs")
    keep = args.keep or args.profile
    command = "python -m bench.fleet_scale " + " ".join(sys.argv[1:])
    facts = machine()
    work = Path(tempfile.mkdtemp(prefix="slmops-fleet-"))
    say(f"work dir {work}{' (kept)' if keep else ''}; {facts['nproc']} CPUs, "
        f"{facts['cpu_model']}")
    results = []
    try:
        for n in sizes:
            results.append(run_one(n, args, work / f"n{n}"))
            r = results[-1]
            say(f"N={n}: {r['connected']}/{n} held, {r['samples_per_s']:.0f} samples/s, "
                f"p99 {r['ack_latency_ms'].get('p99')} ms, ctl CPU "
                f"{r['controller']['cpu_percent']:.0f} %, lost {r['samples']['lost']}; "
                f"targets " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                        for k, v in r["targets"].items() if k != "all"))
    except BenchError as e:
        say(f"error: {e}")
        keep = True
        sys.exit(1)
    except KeyboardInterrupt:
        say("interrupted; processes stopped")
        sys.exit(130)
    finally:
        if results:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "fleet_scale.md").write_text(markdown(results, facts, command))
            (args.out / "fleet_scale.json").write_text(json.dumps(
                {"machine": facts, "command": command, "results": results}, indent=2) + "\n")
            say(f"wrote {args.out / 'fleet_scale.md'} and fleet_scale.json")
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"machine": facts, "command": command, "results": results}, indent=2))
    else:
        print(markdown(results, facts, command))


if __name__ == "__main__":
    main()
