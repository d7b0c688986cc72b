"""Delivery faults with real processes killed by real signals: an agent SIGKILLed mid-download
resumes at its offset without fetching finished files again; an agent SIGKILLed around the
switch comes back with exactly the old or the new release; a controller that dies mid-download
leaves the agent serving, and the download finishes once it is back.

The variant is the tests' tiny int4 variant plus two 3 MB files of random bytes (standing in for
bigger weights, so a download capped at 1 MB/s lasts long enough to be cut). The gate's golden
prompts are the variant's own answers, so it passes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import variants
from procs import Agent, ProcessHarness, wait_until

from controller.registry import ModelRegistry
from controller.store import sqlite_url

pytestmark = pytest.mark.integration
PAD_BYTES = 3 * 2**20
AGENT_FLAGS = ("--serve", "127.0.0.1:0", "--grpc-listen", "", "--max-download-rate", "1")


@pytest.fixture(scope="session")
def golden(tiny: variants.TinyVariants) -> list[dict[str, str]]:
    """Held-out prompts with the int4 variant's own greedy answers, judged as the gate judges."""
    return variants.golden_rows(tiny.int4, tiny.test_rows, 4)


def _register(data_dir: Path, root: Path, variant: Path, profile: str, golden: list[dict[str, str]],
              pad: bool) -> str:
    """A version of "support" in the controller's registry (its SQLite file, shared with the
    running controller), its variant for ``profile`` a copy of ``variant``."""
    copy = variants.copy_variant(variant, root / f"variant-{len(list(root.glob('variant-*')))}")
    if pad:
        for i in range(2):
            (copy / f"extra-weights-{i}.bin").write_bytes(os.urandom(PAD_BYTES))
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    registry = ModelRegistry(sqlite_url(data_dir / "fleet.db"), data_dir / "models")
    try:
        (record,) = registry.register([{"name": "support", "kind": "base", "path": str(model)}])
        registry.add_variants(record.ref, [{
            "profile": profile, "precision": "int4", "provider": "cpu", "runtime": "onnxruntime-genai",
            "status": "passed", "reason": "", "path": str(copy),
            "metrics": {"exact_match": 0.5, "golden": {"rows": golden, "correct": len(golden)}},
            "build": {"gates": {"max_accuracy_drop": 2.0, "min_tokens_per_s": 1.0,
                                "max_memory_bytes": 8 * 2**30}}}])
        return record.ref
    finally:
        registry.close()


def _deployment(procs: ProcessHarness) -> dict[str, Any]:
    return procs.cli("devices", "show", "edge-1")["deployment"]


def _wait_phase(procs: ProcessHarness, release: int, phase: str, timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        d = _deployment(procs)
        ok = d["desired_release"] == release and d["phase"] == phase and (
            phase != "active" or d["active_release"] == release)
        return d if ok else None
    return procs.wait_until(reached, timeout, f"release {release} to be {phase}")


def _assign(procs: ProcessHarness, ref: str) -> int:
    return int(procs.cli("devices", "assign", "edge-1", ref)["release"])


def _start(procs: ProcessHarness, tmp_path: Path, token: str | None = None,
           data_dir: Path | None = None) -> Agent:
    return procs.start_agent("edge-1", data_dir, token=token, extra=AGENT_FLAGS)


def _fleet(procs: ProcessHarness, tmp_path: Path, tiny, golden, *, first_pad: bool = False):
    """A controller and edge-1 running release 1; (controller, agent, profile, release)."""
    controller = procs.start_controller()
    agent = _start(procs, tmp_path, token=procs.create_token()["token"])
    profile = procs.wait_until(lambda: _deployment_profile(procs), 30, "edge-1 to come online")
    release = _assign(procs, _register(controller.data_dir, tmp_path / "reg", tiny.int4, profile, golden,
                                       first_pad))
    _wait_phase(procs, release, "active")
    return controller, agent, profile, release


def _deployment_profile(procs: ProcessHarness) -> str | None:
    devices = procs.devices()
    return devices[0]["profile"] if devices and devices[0]["status"] == "online" else None


def _ask(agent: Agent) -> int:
    """One chat completion through the agent's endpoint. A restarted agent may report its
    release active a moment before its HTTP server is up (serving.json is written then)."""
    serving = agent.data_dir / "serving.json"
    wait_until(serving.is_file, 30, f"{serving} (the agent serving)")
    url = json.loads(serving.read_text())["url"]
    body = json.dumps({"model": "support", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "Are you open on Sunday?"}]}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read())["usage"]["completion_tokens"])


def _blobs(agent: Agent) -> tuple[dict[str, int], dict[str, int]]:
    """(complete blobs -> inode, partial blobs -> bytes on disk)."""
    complete, partial = {}, {}
    for path in (agent.data_dir / "blobs").iterdir():
        if path.suffix == ".part":
            partial[path.stem] = path.stat().st_size
        elif re.fullmatch(r"[0-9a-f]{64}", path.name):
            complete[path.name] = path.stat().st_ino
    return complete, partial


def _fetch_log(agent: Agent) -> list[tuple[str, int]]:
    """(sha, bytes already on disk) for every fetch the agent logged."""
    return [(m.group(1), int(m.group(2))) for m in
            re.finditer(r"fetching blob ([0-9a-f]{64}) \(\S+\) from byte (\d+)", agent.proc.stderr())]


def test_agent_killed_mid_download_resumes_at_its_offset(procs: ProcessHarness, tmp_path: Path,
                                                         tiny, golden) -> None:
    controller, agent, profile, _ = _fleet(procs, tmp_path, tiny, golden)
    before = set(_blobs(agent)[0])
    release = _assign(procs, _register(controller.data_dir, tmp_path / "reg", tiny.int4, profile, golden,
                                       pad=True))

    def one_done_one_partial() -> bool:
        complete, partial = _blobs(agent)
        return bool(set(complete) - before) and any(partial.values())

    procs.wait_until(one_done_one_partial, 60, "one extra file downloaded and the next one started")
    agent.proc.signal(signal.SIGKILL)
    agent.proc.wait(10)
    complete, partial = _blobs(agent)
    [(cut_sha, cut_at)] = partial.items()

    agent = _start(procs, tmp_path, data_dir=agent.data_dir)
    deployment = _wait_phase(procs, release, "active")
    assert deployment["active_model"] == "support:2"
    fetched = dict(_fetch_log(agent))
    assert fetched[cut_sha] == cut_at  # the cut file resumes from where it was cut
    assert not set(fetched) & set(complete)  # finished files are not fetched again
    assert all(offset == 0 for sha, offset in fetched.items() if sha != cut_sha)  # the rest: not begun
    after, _ = _blobs(agent)
    assert all(after[sha] == inode for sha, inode in complete.items())  # finished files untouched
    assert _ask(agent) > 0


def test_agent_killed_around_the_switch_comes_back_on_one_release(procs: ProcessHarness, tmp_path: Path,
                                                                  tiny, golden) -> None:
    controller, agent, profile, first = _fleet(procs, tmp_path, tiny, golden)
    second = _assign(procs, _register(controller.data_dir, tmp_path / "reg", tiny.int4, profile, golden,
                                      pad=False))
    state = agent.data_dir / "deploy.json"

    def gating() -> bool:  # deploy.json is replaced atomically: always whole
        current = json.loads(state.read_text()) if state.is_file() else {}
        return current.get("release") == second and current.get("phase") in ("gating", "active")

    procs.wait_until(gating, 60, "the gate to start", interval=0.005)
    agent.proc.signal(signal.SIGKILL)
    agent.proc.wait(10)

    slots = json.loads((agent.data_dir / "models" / "slots.json").read_text())
    assert slots["active"] in (first, second)
    live = agent.data_dir / "models" / f"r{slots['active']}"
    manifest = json.loads((agent.data_dir / "models" / f"r{slots['active']}.manifest.json").read_text())
    for entry in manifest["files"]:  # the live slot is whole: every file as its manifest says
        assert hashlib.sha256((live / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]

    agent = _start(procs, tmp_path, data_dir=agent.data_dir)
    deployment = _wait_phase(procs, second, "active")
    assert deployment["active_release"] == second and deployment["previous_release"] == first
    assert _ask(agent) > 0


def test_controller_gone_mid_download_the_agent_serves_on_and_finishes_later(
        procs: ProcessHarness, tmp_path: Path, tiny, golden) -> None:
    controller, agent, profile, first = _fleet(procs, tmp_path, tiny, golden)
    second = _assign(procs, _register(controller.data_dir, tmp_path / "reg", tiny.int4, profile, golden,
                                      pad=True))
    procs.wait_until(lambda: any(_blobs(agent)[1].values()), 60, "the download to start")
    controller.proc.signal(signal.SIGKILL)
    controller.proc.wait(10)
    assert _ask(agent) > 0  # the old release keeps serving while the controller is away
    procs.wait_until(lambda: "unreachable" in agent.proc.stderr() or "UNAVAILABLE" in agent.proc.stderr(),
                     30, "the agent to notice")
    assert _ask(agent) > 0

    procs.start_controller(data_dir=controller.data_dir, port=controller.port)
    deployment = _wait_phase(procs, second, "active")
    assert (deployment["active_release"], deployment["previous_release"]) == (second, first)
    assert _ask(agent) > 0
