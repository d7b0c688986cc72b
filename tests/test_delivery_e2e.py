"""Delivery end to end: a real controller and real agent daemons in this process, over real mTLS,
with a real tiny variant. An assignment goes live and is served over HTTP; a variant that fails
the on-device gate, a byte flipped on the controller's disk, a full disk, a tampered, replayed,
expired or foreign manifest all leave the old model serving with a clear reason; a rollback
goes back to the previous slot. (Killed processes: test_delivery_processes.py.)"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import variants
from click.testing import CliRunner
from inproc import RunningAgent, RunningController

from agent.cli import main as agent_cli
from agent.delivery.manifest import Manifest, sign, verify
from agent.delivery.phases import DeploymentPhase
from agent.delivery.phases import to_proto as phase_to_proto
from controller.cli import views
from controller.pki import load_or_create_signing_key
from protos import admin_pb2, delivery_pb2

N_GOLDEN = 8


@pytest.fixture(scope="session")
def golden(tiny: variants.TinyVariants) -> list[dict[str, str]]:
    """Held-out prompts with the int4 variant's own greedy answers, judged as the gate judges."""
    return variants.golden_rows(tiny.int4, tiny.test_rows, N_GOLDEN)


def _url(agent: RunningAgent) -> str:
    return json.loads((agent.data_dir / "serving.json").read_text())["url"]


@pytest.fixture
def agents(ctl: RunningController, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    started: list[RunningAgent] = []

    def start(name: str, **settings: Any) -> RunningAgent:
        agent = RunningAgent(ctl, tmp_path / name, name, serve_port=0, **settings)
        started.append(agent)
        _wait_for(lambda: _device(ctl, name).status == "online", f"{name} to come online")
        return agent

    yield start
    for agent in started:
        agent.stop()


def _device(ctl: RunningController, name: str) -> admin_pb2.Device:
    try:
        return ctl.admin.GetDevice(admin_pb2.GetDeviceRequest(id=name), timeout=5).device
    except grpc.RpcError:
        return admin_pb2.Device()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _register(ctl: RunningController, root: Path, name: str, variant: Path, profile: str,
              golden: list[dict[str, str]], correct: int | None = None) -> str:
    """A model version whose variant for ``profile`` is a copy of ``variant``, passed, with
    ``golden`` as the gate's prompts; returns NAME:VERSION."""
    model = root / f"{name}-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"name": name}))
    registry = ctl.controller.registry
    (record,) = registry.register([{"name": name, "kind": "base", "path": str(model)}])
    copy = variants.copy_variant(variant, root / f"{name}-{record.version}-variant")
    registry.add_variants(record.ref, [{
        "profile": profile, "precision": "int4", "provider": "cpu", "runtime": "onnxruntime-genai",
        "status": "passed", "reason": "", "path": str(copy),
        "metrics": {"exact_match": 0.5, "exact_match_delta": 0.0, "tokens_per_s": 100.0,
                    "golden": {"rows": golden, "correct": len(golden) if correct is None else correct}},
        "build": {"gates": {"max_accuracy_drop": 2.0, "min_tokens_per_s": 1.0,
                            "max_memory_bytes": 8 * 2**30}}}])
    return record.ref


def _assign(ctl: RunningController, device: str, model: str) -> int:
    return ctl.admin.AssignModel(admin_pb2.AssignModelRequest(id=device, model=model), timeout=30).release


def _phase(ctl: RunningController, device: str, release: int, *phases: str) -> admin_pb2.Deployment:
    """Wait until the device reports ``release`` in one of ``phases``; its deployment."""
    found: list[admin_pb2.Deployment] = []

    def reached() -> bool:
        deployment = _device(ctl, device).deployment
        found[:] = [deployment]
        phase = views.phase_word(deployment.deployment_phase, bool(deployment.updated_at_ms))
        return deployment.desired_release == release and phase in phases and (
            phase not in ("active", "rolled_back") or deployment.active_release == release)

    try:
        _wait_for(reached, f"{device} to report release {release} {'/'.join(phases)}")
    except AssertionError:
        raise AssertionError(f"last deployment report: {found[0] if found else None}") from None
    return found[0]


def _ask(agent: RunningAgent, model: str) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Are you open on Sunday?"}],
                       "max_tokens": 8}).encode()
    request = urllib.request.Request(_url(agent) + "/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def live(ctl: RunningController, agents, tiny, golden, tmp_path: Path):
    """edge-1 running support:1 (release r1), served over HTTP."""
    agent = agents("edge-1")
    profile = _device(ctl, "edge-1").profile
    ref = _register(ctl, tmp_path, "support", tiny.int4, profile, golden)
    release = _assign(ctl, "edge-1", ref)
    _phase(ctl, "edge-1", release, "active")
    return agent, profile, release


def test_an_assigned_model_goes_live_and_is_served(ctl: RunningController, live) -> None:
    agent, profile, release = live
    deployment = _device(ctl, "edge-1").deployment
    assert (deployment.active_model, deployment.active_release) == ("support:1", release)
    assert deployment.desired_model == "support:1" and deployment.desired_variant == profile
    gate = json.loads(deployment.detail_json)
    assert gate["correct"] == gate["n"] == N_GOLDEN and gate["accuracy"] == 1.0
    answer = _ask(agent, "support")
    assert answer["model"] == "support" and answer["usage"]["completion_tokens"] > 0
    staged = agent.data_dir / "models" / f"r{release}"
    assert (staged / "genai_config.json").is_file()
    assert json.loads((agent.data_dir / "models" / "slots.json").read_text())["active"] == release
    status = CliRunner().invoke(agent_cli, ["status", "--data-dir", str(agent.data_dir), "--json"])
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert (shown["active_release"], shown["active_model"], shown["latest_phase"]) == (
        release, "support:1", "active")


def test_a_variant_that_fails_the_gate_is_not_switched_to(ctl: RunningController, live, tiny,
                                                          golden, tmp_path: Path) -> None:
    agent, profile, first = live
    wrong = [{"prompt": row["prompt"], "answer": "no such answer"} for row in golden]
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, wrong)
    release = _assign(ctl, "edge-1", ref)
    deployment = _phase(ctl, "edge-1", release, "failed")
    assert deployment.reason.startswith("gate:") and f"0/{N_GOLDEN}" in deployment.reason
    assert json.loads(deployment.detail_json)["accuracy"] == 0.0
    assert deployment.active_release == first and deployment.active_model == "support:1"
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0  # the old one still serves


def test_rollback_returns_to_the_previous_release_without_a_download(
        ctl: RunningController, live, tiny, golden, tmp_path: Path) -> None:
    agent, profile, first = live
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    second = _assign(ctl, "edge-1", ref)
    deployment = _phase(ctl, "edge-1", second, "active")
    assert (deployment.previous_model, deployment.previous_release) == ("support:1", first)
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0

    response = ctl.admin.RollbackDevice(admin_pb2.RollbackDeviceRequest(id="edge-1"), timeout=30)
    back = response.release
    assert back > second  # a rollback is a new release naming the older model
    deployment = _phase(ctl, "edge-1", back, "rolled_back")
    assert deployment.active_model == "support:1"
    assert (deployment.previous_model, deployment.previous_release) == ("support:2", second)
    assert agent.agent.slot.current.engine.info.path == agent.data_dir / "models" / f"r{back}"
    assert not [s for s in agent.agent.updater.history if s.release == back
                and s.deployment_phase == phase_to_proto("downloading")]
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0


def test_a_called_off_update_that_finished_meanwhile_is_undone(
        ctl: RunningController, live, tiny, golden, tmp_path: Path) -> None:
    """A rollout calls off an update the controller last saw downloading; the device finished
    it meanwhile. The call-off still reaches the device: it goes back to the release it ran
    instead of refusing an older release as a rollback attack. Sent to a device that never
    switched, the same call-off leaves it where it is."""
    agent, profile, first = live
    updater = agent.agent.updater
    seen_downloading = ctl.controller.store.get_device(_device(ctl, "edge-1").id)
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    second = _assign(ctl, "edge-1", ref)
    _phase(ctl, "edge-1", second, "active")

    call_off = ctl.controller.releases.stay(seen_downloading, int(time.time() * 1000),
                                            calling_off=second)
    assert call_off.release > second and call_off.ref == "support:1"
    signed = delivery_pb2.SignedManifest(manifest_json=call_off.manifest_json,
                                         signature=call_off.signature)
    agent.call(lambda: updater.on_desired(profile, signed))
    _wait_for(lambda: updater.slots.active().release == call_off.release and updater.last is not None
              and updater.last.deployment_phase == phase_to_proto("rolled_back"),
              "edge-1 back on support:1", 30)
    assert updater.slots.active().model == "support:1"
    assert agent.agent.slot.current.engine.info.path == agent.data_dir / "models" / f"r{call_off.release}"

    again = ctl.controller.releases.stay(seen_downloading, int(time.time() * 1000) + 1,
                                         calling_off=second)  # now it runs those files: it stays
    signed = delivery_pb2.SignedManifest(manifest_json=again.manifest_json, signature=again.signature)
    agent.call(lambda: updater.on_desired(profile, signed))
    _wait_for(lambda: updater.last is not None and updater.last.release == again.release
              and updater.last.deployment_phase == phase_to_proto("active"), "a stay", 30)
    assert (updater.slots.active().release, updater.slots.active().model) == (again.release, "support:1")
    assert updater.slots.previous().release == second  # the stay replaced the active release only
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0


def _blob(ctl: RunningController, device: str, release: int, path: str) -> Path:
    """The controller's stored blob of ``path`` in ``release`` (what the device downloads)."""
    record = ctl.controller.store.get_release(release, _device(ctl, device).id)
    assert record is not None
    sha = next(f["sha256"] for f in json.loads(record.manifest_json)["files"] if f["path"] == path)
    return ctl.controller.settings.data_dir / "blobs" / "sha256" / sha[:2] / sha


def test_a_byte_flipped_on_the_controller_is_caught_and_nothing_is_staged(
        ctl: RunningController, agents, tiny, golden, tmp_path: Path) -> None:
    agent = agents("edge-1")
    profile = _device(ctl, "edge-1").profile
    ref = _register(ctl, tmp_path, "support", tiny.int4, profile, golden)
    release = _assign(ctl, "edge-1", ref)  # the controller checks its files now
    with open(_blob(ctl, "edge-1", release, "model.onnx"), "r+b") as f:  # damaged after signing
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    deployment = _phase(ctl, "edge-1", release, "failed")
    assert "hash mismatch" in deployment.reason
    assert not (agent.data_dir / "models" / f"r{release}").exists()
    assert deployment.active_release == 0


def test_download_progress_never_passes_the_total_while_a_blob_is_fetched_again(
        ctl: RunningController, agents, tiny, golden, tmp_path: Path) -> None:
    """A blob whose hash does not match is dropped and fetched again (three times in all): the
    progress reported meanwhile counts what is on disk, never more than the release's size."""
    agent = agents("edge-1", download_bytes_per_s=4e6)
    padded = variants.copy_variant(tiny.int4, tmp_path / "padded")
    (padded / "extra-weights.bin").write_bytes(os.urandom(3 * 2**20))
    ref = _register(ctl, tmp_path, "support", padded, _device(ctl, "edge-1").profile, golden)
    release = _assign(ctl, "edge-1", ref)  # the controller checks its files now
    with open(_blob(ctl, "edge-1", release, "extra-weights.bin"), "r+b") as f:
        f.seek(2**20)
        byte = f.read(1)
        f.seek(2**20)
        f.write(bytes([byte[0] ^ 0xFF]))  # damaged after signing: only the device can tell
    assert "hash mismatch" in _phase(ctl, "edge-1", release, "failed").reason
    reports = [s for s in agent.call(lambda: list(agent.agent.updater.history))
               if s.release == release and s.deployment_phase == phase_to_proto(DeploymentPhase.DOWNLOADING)
               and s.bytes_total]
    assert len(reports) >= 2, reports  # it took seconds: progress was reported on the way
    over = [(s.bytes_done, s.bytes_total) for s in reports if s.bytes_done > s.bytes_total]
    assert not over, f"progress past the total: {over}"


def test_a_full_disk_fails_with_the_numbers(ctl: RunningController, agents, tiny, golden,
                                            tmp_path: Path) -> None:
    agent = agents("edge-1", keep_free_bytes=2**62)  # no disk has that much to spare
    ref = _register(ctl, tmp_path, "support", tiny.int4, _device(ctl, "edge-1").profile, golden)
    release = _assign(ctl, "edge-1", ref)
    deployment = _phase(ctl, "edge-1", release, "failed")
    assert deployment.reason.startswith("insufficient storage: need ")
    assert " free on " in deployment.reason
    assert not any((agent.data_dir / "blobs").iterdir())


# --- manifests the agent must refuse ------------------------------------------------------------

def _signed(ctl: RunningController, manifest: Manifest) -> delivery_pb2.SignedManifest:
    key = load_or_create_signing_key(ctl.controller.settings.data_dir / "pki" / "manifest-signing.key")
    body, signature = sign(manifest, key)
    return delivery_pb2.SignedManifest(manifest_json=body, signature=signature)


def _refusal(agent: RunningAgent, profile: str, signed: delivery_pb2.SignedManifest) -> str:
    updater = agent.agent.updater
    agent.call(lambda: updater.on_desired(profile, signed))
    _wait_for(lambda: updater.last is not None
              and updater.last.deployment_phase == phase_to_proto("refused"), "a refusal", 10)
    return updater.last.reason


def test_refused_manifests_leave_the_live_model_alone(ctl: RunningController, live) -> None:
    agent, profile, release = live
    updater = agent.agent.updater
    active = updater.slots.active()
    current = verify(active.manifest_json, active.signature, agent.agent.updater._public_key)
    blobs_before = sorted(p.name for p in (agent.data_dir / "blobs").iterdir())

    tampered = bytearray(active.manifest_json)
    tampered[tampered.index(b'"version":1') + 10] = ord("7")
    reason = _refusal(agent, profile, delivery_pb2.SignedManifest(manifest_json=bytes(tampered),
                                                                  signature=active.signature))
    assert reason.startswith("bad signature")

    older = replace(current, release=release - 1 if release > 1 else 0)
    assert _refusal(agent, profile, _signed(ctl, older)).startswith("rollback attack")

    expired = replace(current, release=release + 100, expires_at_ms=int(time.time() * 1000) - 1)
    assert _refusal(agent, profile, _signed(ctl, expired)).startswith("expired")

    foreign = replace(current, release=release + 101, profile="some-other-profile")
    assert _refusal(agent, profile, _signed(ctl, foreign)).startswith("wrong profile")

    assert updater.slots.active().release == release
    assert sorted(p.name for p in (agent.data_dir / "blobs").iterdir()) == blobs_before  # nothing fetched
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0


def test_a_new_version_with_the_same_weights_moves_only_the_bytes_that_differ(
        ctl: RunningController, live, tiny, golden, tmp_path: Path) -> None:
    agent, profile, first = live
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    second = _assign(ctl, "edge-1", ref)
    deployment = _phase(ctl, "edge-1", second, "active")
    assert deployment.active_model == "support:2"
    full, update = [json.loads(s) for s in _downloading_details(agent)]
    assert full["missing"] == full["files"] and full["bytes_to_fetch"] > 100_000
    # Only slmops-variant.json, which names the version, differs: a few KB.
    assert update["missing"] == 1 and 0 < update["bytes_to_fetch"] < 0.05 * full["bytes_to_fetch"]


def _downloading_details(agent: RunningAgent) -> list[str]:
    log = agent.agent.updater.history
    return [s.detail_json for s in log
            if s.deployment_phase == phase_to_proto("downloading") and s.detail_json != "{}"]


@pytest.fixture(scope="module")
def lora_variants(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters of the tiny model, each built (cpu-fp32) as the base graph + its file."""
    from test_build_adapters import _adapter

    from controller.build.builder import build_variant
    from controller.build.profiles import builtin_profiles

    root = tmp_path_factory.mktemp("lora")
    built = []
    for seed in (1, 2):
        adapter = _adapter(tiny.model_dir, root / f"adapter-{seed}", seed)
        built.append(build_variant(adapter, builtin_profiles().get("cpu-fp32"), root / f"variant-{seed}",
                                   scratch=root / f"scratch-{seed}", base_dir=tiny.model_dir).dir)
    return built


def test_a_lora_update_on_a_base_the_device_has_ships_only_the_adapter(
        ctl: RunningController, agents, tiny, lora_variants: list[Path], tmp_path: Path) -> None:
    agent = agents("edge-1")
    profile = _device(ctl, "edge-1").profile
    releases = []
    for i, variant in enumerate(lora_variants):
        golden = variants.golden_rows(variant, tiny.test_rows, 4)
        ref = _register(ctl, tmp_path / f"v{i}", "support-cs", variant, profile, golden)
        releases.append(_assign(ctl, "edge-1", ref))
        assert _phase(ctl, "edge-1", releases[-1], "active").active_model == ref
    full, update = [json.loads(s) for s in _downloading_details(agent)]
    assert update["missing"] == 2  # the adapter file and slmops-variant.json, which names the version
    assert 0 < update["bytes_to_fetch"] <= 0.1 * full["bytes_to_fetch"]
    assert _ask(agent, "support-cs")["usage"]["completion_tokens"] > 0


def _bundle(ctl: RunningController, ref: str, profile: str, out: Path) -> Path:
    chunks = ctl.admin.ExportBundle(admin_pb2.ExportBundleRequest(model=ref, profile=profile), timeout=60)
    out.write_bytes(b"".join(c.data for c in chunks))
    return out


def test_install_bundle_takes_the_network_path_s_checks_on_a_stopped_agent(
        ctl: RunningController, agents, tiny, golden, tmp_path: Path) -> None:
    agent = agents("edge-1")
    profile = _device(ctl, "edge-1").profile
    _wait_for(lambda: (agent.data_dir / "profile.json").is_file(), "the agent to note its profile")
    agent.stop()
    ref = _register(ctl, tmp_path, "support", tiny.int4, profile, golden)

    def install(bundle: Path) -> tuple[int, dict]:
        result = CliRunner().invoke(agent_cli, ["install-bundle", str(bundle), "--data-dir",
                                                str(agent.data_dir), "--json"])
        return result.exit_code, json.loads(result.output)

    good = _bundle(ctl, ref, profile, tmp_path / "good.bundle")
    tampered = tmp_path / "tampered.bundle"
    data = bytearray(good.read_bytes())
    data[data.index(b'"version":1') + 10] = ord("7")  # inside manifest.json, the first member
    tampered.write_bytes(bytes(data))
    code, shown = install(tampered)
    assert code == 4 and "bad signature" in shown["error"]
    assert not (agent.data_dir / "models" / "slots.json").exists()

    code, shown = install(good)
    assert code == 0, shown
    assert (shown["phase"], shown["active_model"]) == ("active", "support:1")
    slots = json.loads((agent.data_dir / "models" / "slots.json").read_text())
    assert (agent.data_dir / "models" / f"r{slots['active']}" / "genai_config.json").is_file()


def _install(agent: RunningAgent, bundle: Path) -> tuple[int, dict[str, Any]]:
    """`slmops-agent install-bundle BUNDLE --data-dir ... --json` on the (stopped) agent."""
    result = CliRunner().invoke(agent_cli, ["install-bundle", str(bundle), "--data-dir",
                                            str(agent.data_dir), "--json"])
    return result.exit_code, json.loads(result.output)


def _active_on_disk(agent: RunningAgent) -> int:
    return int(json.loads((agent.data_dir / "models" / "slots.json").read_text())["active"])


def test_a_bundle_exported_before_a_rollback_can_not_undo_it(
        ctl: RunningController, agents, live, tiny, golden, tmp_path: Path) -> None:
    """support:2 exported as a bundle, assigned, rolled back: the bundle, installed after the
    rollback, is refused (its release is below the rollback's), also after the agent restarted,
    and the controller's own desired state still holds."""
    agent, profile, first = live
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    early = _bundle(ctl, ref, profile, tmp_path / "support-2.bundle")
    second = _assign(ctl, "edge-1", ref)
    _phase(ctl, "edge-1", second, "active")
    back = ctl.admin.RollbackDevice(admin_pb2.RollbackDeviceRequest(id="edge-1"), timeout=30).release
    _phase(ctl, "edge-1", back, "rolled_back")
    agent.stop()

    code, shown = _install(agent, early)
    assert code == 4 and shown["phase"] == "refused", shown
    assert shown["reason"].startswith("rollback attack") and f"release {back}" in shown["reason"]
    assert _active_on_disk(agent) == back
    accepted = json.loads((agent.data_dir / "accepted.json").read_text())
    assert accepted["release"] == back

    again = agents("edge-1")  # the same data dir: it comes back on the rollback's release
    deployment = _phase(ctl, "edge-1", back, "rolled_back", "active")
    assert deployment.active_model == "support:1" and deployment.reason == ""
    assert _ask(again, "support")["usage"]["completion_tokens"] > 0


def test_an_older_version_exported_after_a_newer_one_was_assigned_is_refused_as_a_downgrade(
        ctl: RunningController, live, tiny, golden, tmp_path: Path) -> None:
    """The device runs support:2; a bundle of support:1 exported afterwards (a higher release)
    is refused unless exported with --allow-downgrade; an operator's explicit assignment of
    support:1 is taken."""
    agent, profile, first = live
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    second = _assign(ctl, "edge-1", ref)
    _phase(ctl, "edge-1", second, "active")
    old = _bundle(ctl, "support:1", profile, tmp_path / "support-1.bundle")
    agent.stop()

    code, shown = _install(agent, old)
    assert code == 4 and shown["phase"] == "refused", shown
    assert shown["reason"].startswith("downgrade:") and "support:2" in shown["reason"]
    assert _active_on_disk(agent) == second

    chunks = ctl.admin.ExportBundle(admin_pb2.ExportBundleRequest(
        model="support:1", profile=profile, allow_downgrade=True), timeout=60)
    wanted = tmp_path / "support-1-downgrade.bundle"
    wanted.write_bytes(b"".join(c.data for c in chunks))
    code, shown = _install(agent, wanted)
    assert code == 0 and (shown["phase"], shown["active_model"]) == ("active", "support:1"), shown


def test_an_operators_explicit_assignment_of_an_older_version_is_installed(
        ctl: RunningController, live, tiny, golden, tmp_path: Path) -> None:
    agent, profile, first = live
    ref = _register(ctl, tmp_path / "v2", "support", tiny.int4, profile, golden)
    _phase(ctl, "edge-1", _assign(ctl, "edge-1", ref), "active")
    older = _assign(ctl, "edge-1", "support:1")
    deployment = _phase(ctl, "edge-1", older, "active")
    assert (deployment.active_model, deployment.previous_model) == ("support:1", "support:2")
    assert _ask(agent, "support")["usage"]["completion_tokens"] > 0
