"""Delivery benchmark: a ~50 MB variant delivered to real agents by a real controller, on loopback.

Real processes throughout: ``slmops controller start`` and ``slmops-agent run`` processes (each
with its own data dir and log file), enrolled with a token from ``slmops token create``. The
variant is a Llama from config (hidden 384, 8 layers, random weights; its cpu-fp32 build is
about 53 MB) built once with the controller's builder and cached under ``--work``; each version
is registered as a passed variant for the profile the agents match, with golden prompts that are
the variant's own greedy answers, so the on-device gate passes. It measures:

1. delivery to 1 agent and to N fresh agents (nothing cached): from the assignment until each
   device reports past downloading (verifying/staging/gating/active) and until it is active;
   aggregate MB/s = N x variant bytes / time to the last device downloaded;
2. raw gRPC streaming: FetchBlob of the biggest blob read to the end and thrown away, with a
   device's identity, best of 3 (the ceiling the delivery is compared with);
3. bytes re-sent after an agent is SIGKILLed mid-file and restarted (fresh agents capped at
   2 MB/s, killed at 1 byte, 10 MB and 25 MB of the file, and one uncapped): per file, what the
   controller served it (its "served blob" log lines) minus the file's size;
4. bytes moved for a new version whose files are the same but for slmops-variant.json, against
   the full variant (LoRA adapter variants are not built by this project yet);
5. serving through a switch: chat completions back to back (max_tokens 8) while a new release
   downloads, gates and goes live, until 2 s after: failures and the longest gap.

    .venv/bin/python -m bench.delivery [--agents 20] [--out bench/out] [--work DIR] [--keep]

Progress goes to stderr; the report is printed and written to OUT/delivery.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.controller_proc import REPO, BenchError, ControllerProcess
from bench.delivery_agents import (
    MODEL_NAME,
    Admin,
    AgentProc,
    Clock,
    raw_fetch,
    register_version,
    served_ranges,
    socket_figures,
    variant_with_extra_file,
    watch_releases,
)
from bench.fleet_scale import machine
from controller.cli.views import phase_word

SIZE_50MB = {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "num_kv_heads": 2,
             "intermediate_size": 1024, "max_position_embeddings": 512}
GOLDEN_N = 4
MB = 1e6  # MB/s as --max-download-rate counts it
# (--max-download-rate MB/s, 0 = none; kill once this many bytes of the biggest file are on disk)
CUT_TRIALS = ((2.0, 1), (2.0, 10_000_000), (2.0, 25_000_000), (0.0, 10_000_000))
ONLINE_TIMEOUT_S, ONE_TIMEOUT_S, FLEET_TIMEOUT_S = 180.0, 180.0, 420.0


def say(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the variant ------------------------------------------------------------------------------

def build_variant(work: Path) -> tuple[Path, list[dict[str, str]]]:
    """The cpu-fp32 variant of the ~50 MB Llama and its golden rows, built once into ``work``."""
    variant, golden_file = work / "variant-cpu-fp32", work / "golden.json"
    if not (variant / "genai_config.json").is_file():
        from controller.build.builder import build_variant as build
        from controller.build.profiles import builtin_profiles
        from controller.pipeline.chat import prompt_text
        from controller.pipeline.modelkit.llama import build_model
        from controller.pipeline.modelkit.tokenizer import train_tokenizer
        from controller.pipeline.task.support import ALL_INTENTS, generate

        say("building the ~50 MB Llama (tokenizer, model from config, cpu-fp32 variant); cached in "
            f"{work}")
        rows = generate("train", 3000, seed=0, intents=ALL_INTENTS)
        train_tokenizer([prompt_text(r["prompt"]) + r["answer"] for r in rows], work / "tokenizer", 2048)
        build_model(SIZE_50MB, work / "tokenizer", work / "model", seed=0)
        build(work / "model", builtin_profiles().get("cpu-fp32"), variant, scratch=work / "scratch")
        shutil.rmtree(work / "scratch", ignore_errors=True)
        golden_file.unlink(missing_ok=True)
    if not golden_file.is_file():
        golden_file.write_text(json.dumps(golden_rows(variant), indent=2))
    return variant, json.loads(golden_file.read_text())


def build_lora_variants(work: Path) -> list[tuple[Path, list[dict[str, str]]]]:
    """Two LoRA adapters of the ~50 MB Llama (r 16 on every attention and MLP projection, random
    non-zero weights), each built for cpu-fp32 as the base's graph plus its adapter file; with
    their golden rows. Built once into ``work``."""
    out = []
    for seed in (1, 2):
        variant, golden_file = work / f"lora-variant-{seed}", work / f"lora-golden-{seed}.json"
        if not (variant / "adapter.onnx_adapter").is_file():
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            from controller.build.builder import build_variant as build
            from controller.build.profiles import builtin_profiles

            say(f"building LoRA adapter {seed} of the ~50 MB Llama as a base + adapter variant")
            torch.manual_seed(seed)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(work / "model"), LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
            for name, tensor in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(tensor, std=0.02)
            model.save_pretrained(work / f"lora-adapter-{seed}")
            build(work / f"lora-adapter-{seed}", builtin_profiles().get("cpu-fp32"), variant,
                  scratch=work / f"lora-scratch-{seed}", base_dir=work / "model")
            shutil.rmtree(work / f"lora-scratch-{seed}", ignore_errors=True)
            golden_file.unlink(missing_ok=True)
        if not golden_file.is_file():
            golden_file.write_text(json.dumps(golden_rows(variant), indent=2))
        out.append((variant, json.loads(golden_file.read_text())))
    return out


def golden_rows(variant: Path) -> list[dict[str, str]]:
    """GOLDEN_N support-task prompts with the variant's own greedy answers, answered as the
    on-device gate answers them (agent/delivery/gate.py)."""
    from agent.chat_format import clean_answer
    from agent.engine import Engine
    from agent.engine.answer import greedy_answer
    from controller.pipeline.task import support

    engine = Engine.load(variant)
    try:
        return [{"prompt": row["prompt"],
                 "answer": clean_answer(greedy_answer(engine, row["prompt"], 64).text)}
                for row in support.generate("test", GOLDEN_N, seed=0)]
    finally:
        engine.close()


def manifest_files(agent: AgentProc, release: int) -> list[dict[str, Any]]:
    """The files (path, size, sha256) of the manifest the agent staged ``release`` from."""
    data = json.loads((agent.data_dir / "models" / f"r{release}.manifest.json").read_text())
    return list(data["files"])


# --- the measurements -------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path, variant: Path,
                 golden: list[dict[str, str]]) -> None:
        self.args, self.run_dir, self.variant, self.golden = args, run_dir, variant, golden
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ctl = ControllerProcess(run_dir)
        self.agents: dict[str, AgentProc] = {}
        self.admin: Admin | None = None
        self.token = ""
        self.profile = ""
        self.results: dict[str, Any] = {}
        self.files: list[dict[str, Any]] = []

    def start_controller(self) -> None:
        endpoints = self.ctl.start()
        say(f"controller up on {endpoints.listen} (log {self.ctl.log_path})")
        self.admin = Admin(Path(endpoints.config))
        self.token = self.ctl.create_token(self.args.agents + len(CUT_TRIALS) + 3)  # + solo, a margin

    def new_agent(self, name: str, extra: tuple[str, ...] = ()) -> AgentProc:
        agent = AgentProc(name, self.run_dir / "agents" / name, self.log_dir, extra)
        self.agents[name] = agent
        assert self.ctl.endpoints is not None
        agent.start(self.ctl.endpoints.listen, self.ctl.endpoints.enroll, self.token)
        return agent

    def register(self, variant: Path) -> tuple[str, int]:
        return register_version(self.ctl.data_dir, self.run_dir, variant, self.profile, self.golden)

    def ctl_log(self) -> str:
        return self.ctl.log_path.read_text(errors="replace")

    # 1. one agent
    def one_agent(self) -> None:
        assert self.admin is not None
        solo = self.new_agent("solo")
        self.admin.wait_online(["solo"], ONLINE_TIMEOUT_S, self.agents)
        self.profile = str(self.admin.cli("devices", "show", "solo")["profile"])
        ref, size = self.register(self.variant)
        self.results["variant"] = {"ref": ref, "bytes": size, "profile": self.profile}
        say(f"solo is online, profile {self.profile}; registered {ref} ({size / MB:.1f} MB)")
        t0 = Clock()
        release = self.admin.assign("solo", ref)
        marks = watch_releases(self.admin, {"solo": release}, t0, ONE_TIMEOUT_S, say)["solo"]
        self.files = manifest_files(solo, release)  # the variant's files, as delivered
        self.results["one"] = self._delivery_figures(1, size, [marks], release, len(self.files))
        r = self.results["one"]
        say(f"1 agent: downloaded in {r['download_s']:.2f} s ({r['mb_s']:.1f} MB/s), active after "
            f"{r['active_s']:.2f} s")

    @staticmethod
    def _delivery_figures(n: int, size: int, marks: list[dict[str, Any]], release: int | None,
                          files: int) -> dict[str, Any]:
        download = max(m["downloaded_s"] for m in marks)
        active = max(m["active_s"] for m in marks)
        return {"agents": n, "bytes_each": size, "files": files, "release": release,
                "download_s": round(download, 3), "active_s": round(active, 3),
                "mb_s": round(n * size / download / MB, 2),
                "download_s_median": round(statistics.median(m["downloaded_s"] for m in marks), 3),
                "active_s_median": round(statistics.median(m["active_s"] for m in marks), 3),
                "download_s_first": round(min(m["downloaded_s"] for m in marks), 3)}

    # 2. raw gRPC streaming
    def raw_stream(self) -> None:
        solo = self.agents["solo"]
        big = max(self.files, key=lambda f: f["size"])
        runs = raw_fetch(solo.identity(), big["sha256"], repeats=3)
        if any(n != big["size"] for n, _ in runs):
            raise BenchError(f"a raw FetchBlob read returned {[n for n, _ in runs]} bytes, not {big['size']}")
        rates = [n / s / MB for n, s in runs]
        self.results["raw"] = {"blob": big["path"], "bytes": big["size"],
                               "mb_s_runs": [round(r, 1) for r in rates], "mb_s": round(max(rates), 1)}
        say(f"raw FetchBlob of {big['path']} ({big['size'] / MB:.1f} MB): "
            f"{', '.join(f'{r:.0f}' for r in rates)} MB/s; best {max(rates):.0f} MB/s")

    # 4. an update that shares every file but slmops-variant.json
    def update_bytes(self) -> None:
        assert self.admin is not None
        solo = self.agents["solo"]
        ref, size = self.register(self.variant)
        device_id = solo.identity().device_id
        log_at, agent_at = len(self.ctl_log()), len(solo.stderr())
        release = self.admin.assign("solo", ref)
        detail: dict[str, Any] = {}
        deadline = time.monotonic() + ONE_TIMEOUT_S
        while True:  # fast: the downloading report with bytes_to_fetch is soon replaced
            d = self.admin.device("solo").deployment
            phase = phase_word(d.deployment_phase, bool(d.updated_at_ms))
            working = d.desired_release == release
            if working and phase == "downloading" and "bytes_to_fetch" in d.detail_json:
                detail = json.loads(d.detail_json)
            if d.active_release == release:
                break
            if d.desired_release == release and phase in ("failed", "refused"):
                raise BenchError(f"solo: release {release} {phase}: {d.reason}")
            if time.monotonic() > deadline:
                raise BenchError(f"solo: release {release} not active after {ONE_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        shown = self.admin.cli("devices", "show", "solo")["deployment"]
        time.sleep(0.3)  # the controller logs a stream when it ends
        served = served_ranges(self.ctl_log()[log_at:], device_id)
        moved = sum(end - start for ranges in served.values() for start, end in ranges)
        fetched = solo.fetches(agent_at)
        self.results["update"] = {
            "ref": ref, "release": release, "full_bytes": size, "bytes_moved": moved,
            "files_moved": sorted(p for _, p, _, _ in fetched),
            "agent_bytes_to_fetch_log": sum(n - start for _, _, start, n in fetched),
            "bytes_to_fetch_detail": detail.get("bytes_to_fetch"),
            "detail_seen": bool(detail), "detail_after": shown.get("detail", {}),
            "percent": round(100 * moved / size, 4)}
        r = self.results["update"]
        say(f"update {ref}: {moved} bytes moved of {size} ({r['percent']:.3f} %), files "
            f"{r['files_moved']}; bytes_to_fetch from devices show: "
            f"{r['bytes_to_fetch_detail'] if detail else '(the report was replaced before a poll saw it)'}")

    # 4b. a LoRA update on a base the device has
    def lora_update(self, loras: list[tuple[Path, list[dict[str, str]]]]) -> None:
        assert self.admin is not None
        solo = self.agents["solo"]
        device_id = solo.identity().device_id
        refs = []
        for i, (variant, golden) in enumerate(loras):
            ref, size = register_version(self.ctl.data_dir, self.run_dir / f"lora-{i}", variant,
                                         self.profile, golden)
            log_at, agent_at = len(self.ctl_log()), len(solo.stderr())
            release = self.admin.assign("solo", ref)
            watch_releases(self.admin, {"solo": release}, Clock(), ONE_TIMEOUT_S, say)
            time.sleep(0.3)  # the controller logs a stream when it ends
            served = served_ranges(self.ctl_log()[log_at:], device_id)
            moved = sum(end - start for ranges in served.values() for start, end in ranges)
            refs.append({"ref": ref, "release": release, "variant_bytes": size, "bytes_moved": moved,
                         "files_moved": sorted(p for _, p, _, _ in solo.fetches(agent_at)),
                         "adapter_bytes": (variant / "adapter.onnx_adapter").stat().st_size})
        first, update = refs
        self.results["lora"] = {"first": first, "update": update,
                                "percent": round(100 * update["bytes_moved"] / update["variant_bytes"], 3)}
        say(f"LoRA update {update['ref']}: {update['bytes_moved']} bytes moved of {update['variant_bytes']} "
            f"({self.results['lora']['percent']:.2f} %), files {update['files_moved']}")

    # 5. serving through a switch
    def switch_under_load(self) -> None:
        assert self.admin is not None
        solo = self.agents["solo"]
        ref, _ = self.register(variant_with_extra_file(self.variant, self.run_dir / "variant-plus-note"))
        load = Load(solo.serving_url())
        load.start()
        time.sleep(1.0)
        t0 = Clock()
        release = self.admin.assign("solo", ref)
        marks = watch_releases(self.admin, {"solo": release}, t0, ONE_TIMEOUT_S, say)["solo"]
        time.sleep(2.0)
        load.stop()
        self.results["switch"] = {"ref": ref, "release": release, **load.summary(),
                                  "switch_active_s": round(marks["active_s"], 3)}
        r = self.results["switch"]
        say(f"switch to {ref} under load: {r['requests']} requests, {r['failed']} failed, longest gap "
            f"between successes {r['longest_gap_ms']:.0f} ms (p50 request {r['p50_ms']:.0f} ms)")

    # 3. killed mid-download
    def killed_mid_download(self) -> None:
        """One fresh agent per trial of CUT_TRIALS (a rate cap, a kill point), each killed there
        and restarted; the target is judged on the worst."""
        from controller.services.delivery import CHUNK_BYTES

        trials = [self._cut_trial(f"cut-{i}", cap, at_least)
                  for i, (cap, at_least) in enumerate(CUT_TRIALS, 1)]
        self.results["cut"] = {
            "method": "controller log: the INFO line 'served blob SHA to DEVICE: bytes START..END' "
                      "at the end of each FetchBlob stream",
            "chunk_bytes": CHUNK_BYTES, "trials": trials,
            "max_resent": max(t["max_resent"] for t in trials)}

    def _cut_trial(self, name: str, cap_mb_s: float, at_least: int) -> dict[str, Any]:
        assert self.admin is not None
        cut = self.new_agent(name, ("--max-download-rate", f"{cap_mb_s:g}") if cap_mb_s else ())
        self.admin.wait_online([name], ONLINE_TIMEOUT_S, self.agents)
        device_id = cut.identity().device_id
        big = max(self.files, key=lambda f: f["size"])
        assert cut.popen is not None and self.ctl.endpoints is not None
        pid, port = cut.popen.pid, int(self.ctl.endpoints.listen.rsplit(":", 1)[1])
        t0 = Clock()
        release = self.admin.assign(name, self.results["variant"]["ref"])
        part = cut.data_dir / "blobs" / f"{big['sha256']}.part"
        deadline = time.monotonic() + ONE_TIMEOUT_S
        while not (f"fetching blob {big['sha256']}" in cut.stderr() and part.is_file()
                   and part.stat().st_size >= at_least):
            if time.monotonic() > deadline or not cut.running or part.with_suffix("").is_file():
                raise BenchError(f"{name} was not seen with {at_least} bytes of {big['path']} partly "
                                 f"downloaded; see {cut.err_path}")
            time.sleep(0.005)
        sockets = socket_figures(pid, port)
        cut.kill()
        at_kill = part.stat().st_size
        blobs_on_disk = sum(p.stat().st_size for p in (cut.data_dir / "blobs").iterdir())
        complete = {p.name for p in (cut.data_dir / "blobs").iterdir() if len(p.name) == 64}
        say(f"{name}: SIGKILLed {t0.since():.1f} s after the assignment with {at_kill} bytes of "
            f"{big['path']} on disk ({len(complete)} files complete); restarting it with no cap")
        cut.start(extra=())
        watch_releases(self.admin, {name: release}, t0, ONE_TIMEOUT_S, say)
        time.sleep(0.3)  # the controller logs a stream when it ends
        served = served_ranges(self.ctl_log(), device_id)
        resumed = {sha: start for sha, _, start, _ in cut.fetches()}
        files = []
        for f in self.files:
            ranges = served.get(f["sha256"], [])
            # The chunk that completes a file may go uncounted (the agent cancels the call once
            # it has the file, before the controller's generator is resumed): it did arrive.
            tail = max(0, f["size"] - max((end for _, end in ranges), default=0))
            sent = sum(end - start for start, end in ranges) + tail
            files.append({"path": f["path"], "size": f["size"], "sent": sent, "resent": sent - f["size"],
                          "ranges": ranges, "uncounted_tail": tail,
                          "complete_at_kill": f["sha256"] in complete,
                          "fetched_after_restart_from": resumed.get(f["sha256"])})
        cut.stop()
        big_ranges = served.get(big["sha256"], [])
        trial = {
            "agent": name, "release": release, "file": big["path"], "file_bytes": big["size"],
            "rate_cap_mb_s": cap_mb_s, "kill_at_least": at_least, "on_disk_at_kill": at_kill,
            "resumed_from": resumed.get(big["sha256"]),
            "counted_before_kill": big_ranges[0][1] if big_ranges else None,
            **sockets, "blob_bytes_on_disk_at_kill": blobs_on_disk,
            "files_complete_at_kill": len(complete),
            "complete_files_fetched_again": sum(1 for f in files if f["complete_at_kill"]
                                                and f["fetched_after_restart_from"] is not None),
            "max_resent": max(f["resent"] for f in files), "total_resent": sum(f["resent"] for f in files),
            # what crossed the wire to the agent and never reached its disk (an upper bound: it
            # includes TLS framing and the fleet stream's few KB)
            "lost_on_wire": max(0, sockets.get("agent_bytes_received", 0) - blobs_on_disk),
            "files": files}
        say(f"{name}: resumed {big['path']} from byte {trial['resumed_from']}; the controller had counted "
            f"{trial['counted_before_kill']} bytes of it sent before the kill; re-sent "
            f"{trial['total_resent']} bytes in all, at most {trial['max_resent']} for one file")
        return trial

    # 1b. N fresh agents
    def fleet(self) -> None:
        assert self.admin is not None
        n = self.args.agents
        names = [f"fleet-{i:02d}" for i in range(1, n + 1)]
        say(f"starting {n} fresh agents in parallel")
        started = time.monotonic()
        for name in names:
            self.new_agent(name)
        self.admin.wait_online(names, ONLINE_TIMEOUT_S + 4 * n, self.agents)
        ref, size = self.results["variant"]["ref"], self.results["variant"]["bytes"]
        say(f"{n} agents online after {time.monotonic() - started:.1f} s; assigning {ref}")
        admin = self.admin
        t0 = Clock()
        with ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
            releases = dict(zip(names, pool.map(lambda name: admin.assign(name, ref), names), strict=True))
        assigned_s = t0.since()
        marks = watch_releases(self.admin, releases, t0, FLEET_TIMEOUT_S, say)
        files = len(manifest_files(self.agents[names[0]], releases[names[0]]))
        self.results["fleet"] = {**self._delivery_figures(n, size, list(marks.values()), None, files),
                                 "assign_s": round(assigned_s, 3)}
        r = self.results["fleet"]
        say(f"{n} agents: last downloaded after {r['download_s']:.2f} s ({r['mb_s']:.1f} MB/s aggregate), "
            f"last active after {r['active_s']:.2f} s")

    def stop(self, names: list[str] | None = None) -> None:
        chosen = [a for n, a in self.agents.items() if names is None or n in names]
        for agent in chosen:  # SIGTERM to all first, then wait for each
            if agent.running and agent.popen is not None:
                agent.popen.terminate()
        for agent in chosen:
            agent.stop(10)

    def close(self) -> None:
        self.stop()
        if self.admin is not None:
            self.admin.close()
        say(f"controller: {self.ctl.stop()}")


class Load:
    """Chat completions (max_tokens 8) back to back from a thread until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url + "/v1/chat/completions"
        self.ok: list[tuple[float, float]] = []  # (start, end) monotonic
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.ended = 0.0

    def _run(self) -> None:
        body = json.dumps({"model": MODEL_NAME, "max_tokens": 8,
                           "messages": [{"role": "user", "content": "Are you open on Sunday?"}]}).encode()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    json.loads(response.read())
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                self.ok.append((t, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - every failure counts, with its reason
                self.errors.append(f"{type(e).__name__}: {e}"[:200])

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.ended = time.monotonic()

    def summary(self) -> dict[str, Any]:
        ends = [self.started] + [end for _, end in self.ok]
        gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
        latencies = sorted(end - start for start, end in self.ok)
        return {"window_s": round(self.ended - self.started, 2), "requests": len(self.ok) + len(self.errors),
                "failed": len(self.errors), "errors": sorted(set(self.errors))[:5],
                "longest_gap_ms": round(1000 * max(gaps[1:] or gaps or [0.0]), 1),
                "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else 0.0,
                "max_ms": round(1000 * latencies[-1], 1) if latencies else 0.0}


# --- report -----------------------------------------------------------------------------------

def targets(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "cut" in r:
        out["resent_at_most_one_chunk_per_file"] = all(
            t["lost_on_wire"] <= r["cut"]["chunk_bytes"] for t in r["cut"]["trials"])
    if "switch" in r:
        out["zero_failed_requests"] = r["switch"]["failed"] == 0
    out["lora_update_at_most_10_percent"] = r["lora"]["percent"] <= 10 if "lora" in r else None
    return out


def markdown(result: dict[str, Any]) -> str:
    m, r, t = result["machine"], result["results"], result["targets"]
    v = r.get("variant", {})
    lines = [f"# Delivery: {m['date']}", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB; Python {m['python']}, "
             f"grpcio {m['grpcio']}. Loopback; every controller and agent a real process.", "",
             f"Command: `{result['command']}`", ""]
    if v:
        lines += [f"Variant: Llama from config ({', '.join(f'{k} {x}' for k, x in SIZE_50MB.items())}; "
                  f"random weights), built with the cpu-fp32 profile: {v['bytes'] / MB:.1f} MB, "
                  f"registered as {MODEL_NAME} for the agents' profile `{v['profile']}`.", ""]
    rows = [x for x in (r.get("one"), r.get("fleet")) if x]
    if rows:
        raw = r.get("raw", {}).get("mb_s")
        lines += ["## Delivery of the full variant", "",
                  "Seconds from the assignment (the N agents are assigned back to back, 8 calls at a "
                  "time); downloaded = the first report past downloading (verifying, staging, gating or "
                  "active), active = switched after the on-device gate; each the time the controller "
                  "stored that report (the fleet polled with ListDevices every 0.2 s). MB/s = agents x "
                  "bytes / time to the last device downloaded. The controller serves at most 8 downloads "
                  "at once (its default); the other agents are answered RESOURCE_EXHAUSTED and retry "
                  "with jittered backoff. With N agents the time to active is mostly their on-device "
                  "gates, all at once on 2 cores.", "",
                  "| agents | last downloaded s | last active s | median downloaded / active s | "
                  "aggregate MB/s | % of raw gRPC |", "|---|---|---|---|---|---|"]
        for x in rows:
            share = f"{100 * x['mb_s'] / raw:.0f} %" if raw else "-"
            lines.append(f"| {x['agents']} | {x['download_s']:.2f} | {x['active_s']:.2f} | "
                         f"{x['download_s_median']:.2f} / {x['active_s_median']:.2f} | {x['mb_s']:.1f} | "
                         f"{share} |")
        lines.append("")
    if "raw" in r:
        x = r["raw"]
        lines += [f"Raw gRPC streaming (FetchBlob of {x['blob']}, {x['bytes'] / MB:.1f} MB, read and "
                  f"thrown away by a grpc.aio client with a device's identity): {x['mb_s_runs']} MB/s, "
                  f"best **{x['mb_s']:.0f} MB/s**.", ""]
    if "cut" in r:
        x = r["cut"]
        lines += ["## Agent SIGKILLed mid-download", "",
                  "A fresh agent per trial (with or without a rate cap), SIGKILLed once its log showed it "
                  "fetching the biggest file and at least the given bytes of it were on disk, then "
                  "restarted with the same data dir (without a cap). Re-sent = what the controller sent "
                  "for a file in all its streams minus the file's size. Method: "
                  f"{x['method']}; the kernel's figures for the agent's connections (`ss -tni`) were "
                  "taken just before the kill.", "",
                  "| trial | cap MB/s | killed with bytes on disk | resumed from | controller counted sent "
                  "before the kill | agent's sockets had received / blob bytes on its disk / kernel "
                  "queues (agent Recv-Q + controller Send-Q) | re-sent, biggest file | re-sent, other "
                  "files | complete files fetched again | lost on the wire |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for trial in x["trials"]:
            big = next(f for f in trial["files"] if f["path"] == trial["file"])
            others = sum(f["resent"] for f in trial["files"] if f["path"] != trial["file"])
            lines.append(f"| {trial['agent']} | {trial['rate_cap_mb_s'] or 'none'} | "
                         f"{trial['on_disk_at_kill']} of "
                         f"{trial['file_bytes']} ({trial['file']}) | {trial['resumed_from']} | "
                         f"{trial['counted_before_kill']} | "
                         f"{trial['agent_bytes_received']} / {trial['blob_bytes_on_disk_at_kill']} / "
                         f"{trial['agent_recv_q']} + {trial['controller_send_q']} | {big['resent']} "
                         f"({big['resent'] / x['chunk_bytes']:.2f} chunks) | {others} | "
                         f"{trial['complete_files_fetched_again']} of {trial['files_complete_at_kill']} | "
                         f"{trial['lost_on_wire']} ({trial['lost_on_wire'] / x['chunk_bytes']:.2f} chunks) |")
        lines += ["", "Two figures per trial. *Re-sent* counts what the controller handed gRPC for a file "
                  "beyond its size (a chunk is counted when handed over, so one still in the "
                  "controller's send buffer at the cut counts though it never left). *Lost on the "
                  "wire* is what the agent's sockets received (`ss -tni` bytes_received, TLS framing "
                  "and the fleet stream included) minus the blob bytes on its disk at the kill: what "
                  "crossed the network and was thrown away. The target is judged on the latter. The "
                  "agent's delivery channel keeps HTTP/2's receive window at 256 KiB (no BDP "
                  "probing): with gRPC's growing windows, 2-15 MiB per file were lost this way.", ""]
    if "update" in r:
        x = r["update"]
        seen = (f"{x['bytes_to_fetch_detail']} (the agent's downloading report, via the admin API)"
                if x["detail_seen"] else "not caught: the downloading report was replaced within "
                                         "milliseconds; the agent's log says")
        lines += ["## Update bytes", "",
                  f"A new version ({x['ref']}) whose variant has the same files but slmops-variant.json: "
                  f"**{x['bytes_moved']} bytes** moved (the controller's served-blob lines) against "
                  f"{x['full_bytes']} for the full variant, {x['percent']:.3f} %; files fetched: "
                  f"{', '.join(x['files_moved'])}. bytes_to_fetch: {seen} "
                  f"{x['agent_bytes_to_fetch_log']} bytes.", "",
                  ""]
    if "lora" in r:
        x = r["lora"]
        lines += ["## A LoRA update on a base the device has", "",
                  "Two LoRA adapters of the same Llama (r 16 on q/k/v/o/gate/up/down, random weights), "
                  "each built for cpu-fp32 as the base's graph with LoRA inputs plus "
                  "adapter.onnx_adapter, delivered one after the other to the same agent "
                  "(the controller's served-blob lines):", "",
                  "| release | variant bytes | bytes moved | files fetched |", "|---|---|---|---|",
                  *[f"| {v['ref']} (r{v['release']}) | {v['variant_bytes']} | {v['bytes_moved']} | "
                    f"{', '.join(v['files_moved'])} |" for v in (x["first"], x["update"])], "",
                  f"The update moved **{x['percent']:.2f} %** of its variant: its adapter file "
                  f"({x['update']['adapter_bytes']} bytes) and slmops-variant.json. The first adapter "
                  "moved the whole variant: the device ran the plain model before, whose graph has no "
                  "LoRA inputs.", ""]
    if "switch" in r:
        x = r["switch"]
        lines += ["## Serving through a switch", "",
                  f"Chat completions (max_tokens 8) back to back to the agent's HTTP endpoint for "
                  f"{x['window_s']:.1f} s: from 1 s before assigning {x['ref']} (a new release: one more "
                  f"small file, downloaded, staged and gated) until 2 s after it was active "
                  f"({x['switch_active_s']:.1f} s after the assignment). {x['requests']} requests, "
                  f"**{x['failed']} failed**; longest gap between two successful responses "
                  f"{x['longest_gap_ms']:.0f} ms; request p50 {x['p50_ms']:.0f} ms, max {x['max_ms']:.0f} ms."
                  + (f" Errors: {x['errors']}" if x["errors"] else ""), ""]

    def mark(key: str) -> str:
        return "not measured" if t.get(key) is None else ("met" if t[key] else "MISSED")

    lines += ["## Targets", "", "| target | result |", "|---|---|",
              f"| bytes re-sent after a kill mid-download <= one chunk (1 MiB) per file | "
              f"{mark('resent_at_most_one_chunk_per_file')} |",
              f"| 0 failed requests through a switch | {mark('zero_failed_requests')} |",
              f"| LoRA-only update <= 10 % of the full variant | {mark('lora_update_at_most_10_percent')} |"]
    if "error" in result:
        lines += ["", f"**The run stopped early:** {result['error']}"]
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=20, help="agents in the fleet delivery")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where delivery.md/.json go")
    p.add_argument("--work", type=Path, default=Path("/tmp/slmops-bench-delivery"),
                   help="the built variant is cached here; each run's processes get a dir inside")
    p.add_argument("--keep", action="store_true", help="keep the run's dir (data dirs, logs)")
    args = p.parse_args()
    if args.agents < 1:
        p.error("--agents: at least 1")
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops every process too, as Ctrl-C does
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.delivery", *sys.argv[1:]])
    started = time.monotonic()
    variant, golden = build_variant(args.work)
    loras = build_lora_variants(args.work)
    say(f"variant {variant}: {sum(f.stat().st_size for f in variant.iterdir()) / MB:.1f} MB; "
        f"golden: {len(golden)} prompts")
    run_dir = args.work / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    bench = Bench(args, run_dir, variant, golden)
    result: dict[str, Any] = {"machine": machine(), "command": command, "results": bench.results}
    keep = args.keep
    try:
        bench.start_controller()
        bench.one_agent()
        bench.raw_stream()
        bench.update_bytes()
        bench.lora_update(loras)
        bench.switch_under_load()
        bench.stop(["solo"])
        bench.killed_mid_download()
        bench.fleet()
    except BenchError as e:
        say(f"error: {e}")
        result["error"] = str(e)
        keep = True
    except Exception as e:  # noqa: BLE001 - reported, the processes stopped, the traceback kept
        say(f"error: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        result["error"] = f"{type(e).__name__}: {e}"
        keep = True
    except KeyboardInterrupt:
        say("interrupted; stopping every process")
        result["error"] = "interrupted"
        keep = True
    finally:
        bench.close()
        result["targets"] = targets(bench.results)
        result["seconds"] = round(time.monotonic() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        text = markdown(result)
        (args.out / "delivery.md").write_text(text)
        (args.out / "delivery.json").write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {args.out / 'delivery.md'} and delivery.json ({result['seconds']:.0f} s in all)")
        if keep:
            say(f"kept {run_dir} (logs in {run_dir / 'logs'})")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(text)
    if "error" in result:
        sys.exit(1)


if __name__ == "__main__":
    main()
