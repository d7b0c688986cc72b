"""The operator's CLI for model delivery, driven as a user runs it (click's runner) against a real
controller in this process over mTLS: `devices assign`, `devices show` / `list` with the phase a
device reports, `devices rollback`, `bundle export`. The model is the session's tiny trained
Llama (tests/variants.py) with its real onnxruntime-genai variant registered in the controller's
registry; devices are enrolled for real and report over their real stream, and in the last test a
real agent downloads, gates and switches to the model while the CLI follows it."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import variants  # tests/variants.py: the session's tiny trained model and its variants
from click.testing import CliRunner, Result
from inproc import DeviceStream, RunningAgent, RunningController

from agent.delivery.manifest import verify
from agent.delivery.phases import to_proto as phase_to_proto
from agent.identity import Identity
from controller.cli.main import cli
from protos import delivery_pb2, fleet_pb2

PROFILE = "cpu-x86-avx2-int8"  # what inproc.HARDWARE (x86_64, AVX2) matches
GOLDEN_ROWS = 3
DEPLOYMENT_KEYS = {"desired_model", "desired_release", "desired_variant", "active_model",
                   "active_release", "previous_model", "previous_release", "phase", "reason",
                   "bytes_done", "bytes_total", "bytes_per_s", "detail", "updated_at",
                   "updated_at_ms", "phase_text"}


# --- helpers ---------------------------------------------------------------------------------

def _cli(ctl: RunningController, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, *args], obj={})


def _json(ctl: RunningController, *args: str) -> Any:
    result = _cli(ctl, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _error(ctl: RunningController, *args: str) -> dict:
    result = _cli(ctl, *args, "--json")
    assert result.exit_code != 0, result.output
    return json.loads(result.output)["error"]


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _register(ctl: RunningController, tiny: variants.TinyVariants, variant: Path, profile: str,
              name: str = "tiny-support") -> str:
    """A version of ``name`` (the tiny trained model) with ``variant`` as its passed variant for
    ``profile``; the golden rows make a gate any answer passes (0 of them right at build time)."""
    registry = ctl.controller.registry
    (record,) = registry.register([{"name": name, "kind": "base", "path": str(tiny.model_dir)}])
    golden = [{"prompt": r["prompt"], "answer": r["answer"]} for r in tiny.test_rows[:GOLDEN_ROWS]]
    registry.add_variants(record.ref, [{
        "profile": profile, "precision": "fp32", "provider": "cpu", "runtime": "onnxruntime-genai",
        "status": "passed", "reason": "", "path": str(variant),
        "metrics": {"exact_match": 0.0, "tokens_per_s": 100.0,
                    "golden": {"rows": golden, "correct": 0}},
        "build": {"gates": {"max_accuracy_drop": 100.0, "min_tokens_per_s": 0.0,
                            "max_memory_bytes": 0}},
    }])
    return record.ref


class Device:
    """An enrolled device whose stream the test drives: it reports phases as an agent would."""

    def __init__(self, ctl: RunningController, name: str) -> None:
        self.name = name
        self.identity: Identity = ctl.enroll(name)
        self.stream: DeviceStream = ctl.stream(self.identity)
        self.stream.hello()

    def report(self, **fields: Any) -> None:
        if "phase" in fields:  # by its word, as the agent's DeploymentPhase
            fields["deployment_phase"] = phase_to_proto(str(fields.pop("phase")))
        self.stream.send(fleet_pb2.ConnectRequest(deployment=delivery_pb2.DeploymentStatus(
            timestamp_ms=int(time.time() * 1000), **fields)))


def _deployment(ctl: RunningController, device: str) -> dict:
    return _json(ctl, "devices", "show", device)["deployment"]


@pytest.fixture
def model(ctl: RunningController, tiny: variants.TinyVariants) -> str:
    return _register(ctl, tiny, tiny.fp32, PROFILE)


# --- assign and show -------------------------------------------------------------------------

def test_assign_prints_the_release_and_show_renders_the_desired_release(
        ctl: RunningController, model: str) -> None:
    ctl.enroll("edge-1")
    assigned = _json(ctl, "devices", "assign", "edge-1", model)
    release = assigned["release"]
    assert release > 0 and assigned["model"] == model
    dep = assigned["device"]["deployment"]
    assert set(dep) == DEPLOYMENT_KEYS
    assert (dep["desired_model"], dep["desired_release"], dep["desired_variant"]) == (
        model, release, PROFILE)

    shown = _deployment(ctl, "edge-1")
    assert (shown["desired_model"], shown["desired_release"], shown["active_release"]) == (
        model, release, 0)
    assert shown["phase"] == "" and shown["phase_text"].startswith(f"pending: release {release}")
    text = _cli(ctl, "devices", "show", "edge-1").output
    assert f"desired  {model} r{release} ({PROFILE} variant)" in text
    assert f"pending: release {release} assigned" in text
    assert f"-> r{release} pending" in _cli(ctl, "devices", "list").output

    again = _cli(ctl, "devices", "assign", "edge-1", "tiny-support")  # NAME: its newest version
    assert again.exit_code == 0, again.output
    assert f"assigned {model} ({PROFILE} variant) as release {release + 1}" in again.output
    assert "the agent converges; follow with `slmops devices show edge-1`" in again.output


PHASES = [
    ({"phase": "downloading", "bytes_done": 18_500_000, "bytes_total": 50_000_000,
      "bytes_per_s": 12_300_000.0}, "downloading 37 % (18.5 / 50.0 MB, 12.3 MB/s)"),
    ({"phase": "verifying"}, "verifying"),
    ({"phase": "staging"}, "staging"),
    ({"phase": "gating"}, "gating"),
    ({"phase": "failed", "reason": "gate: 1 of 20 golden prompts answered exactly, need 15"},
     "failed: gate: 1 of 20 golden prompts answered exactly, need 15"),
    ({"phase": "refused", "reason": "bad signature: the manifest is not signed by this device's "
      "controller"}, "refused: bad signature: the manifest is not signed by this device's controller"),
]


@pytest.mark.parametrize(("report", "text"), PHASES, ids=[p[0]["phase"] for p in PHASES])
def test_show_renders_the_phase_the_device_reports(ctl: RunningController, model: str,
                                                   report: dict, text: str) -> None:
    device = Device(ctl, "edge-1")
    release = _json(ctl, "devices", "assign", "edge-1", model)["release"]
    device.report(release=release, model=model, **report)
    dep = _wait_for(lambda: (d := _deployment(ctl, "edge-1"))["phase"] == report["phase"] and d,
                    f"the {report['phase']} report")
    assert dep["phase_text"] == text
    assert all(dep[k] == v for k, v in report.items())
    assert dep["updated_at_ms"] > 0
    assert text in _cli(ctl, "devices", "show", "edge-1").output
    short = text.split(" (")[0] if report["phase"] == "downloading" else report["phase"]
    assert f"- -> r{release} {short}" in _cli(ctl, "devices", "list").output


def test_a_phase_the_controller_does_not_know_shows_as_unknown_with_its_number(
        ctl: RunningController, model: str, caplog: pytest.LogCaptureFixture) -> None:
    # a newer agent's phase: recorded, shown and logged (once), never silently dropped
    device = Device(ctl, "edge-1")
    release = _json(ctl, "devices", "assign", "edge-1", model)["release"]
    with caplog.at_level("WARNING", logger="controller.services.fleet"):
        for _ in range(2):
            device.report(release=release, model=model, deployment_phase=42, reason="warming up")
        dep = _wait_for(lambda: (d := _deployment(ctl, "edge-1"))["phase"] == "unknown" and d,
                        "the unknown phase recorded")
        assert "unknown: unknown phase 42" in _cli(ctl, "devices", "show", "edge-1").output
        device.report(release=release, model=model, phase="verifying")  # the stream goes on
        _wait_for(lambda: _deployment(ctl, "edge-1")["phase"] == "verifying", "the next report")
    assert dep["reason"] == "unknown phase 42 (the agent is newer than this controller): warming up"
    assert dep["phase_text"] == f"unknown: {dep['reason']}"
    warned = [r for r in caplog.records if "unknown phase 42" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]


def test_show_renders_active_and_previous_releases_and_a_rollback(
        ctl: RunningController, model: str) -> None:
    device = Device(ctl, "edge-1")
    first = _json(ctl, "devices", "assign", "edge-1", model)["release"]
    second = _json(ctl, "devices", "assign", "edge-1", model)["release"]
    device.report(release=second, model=model, phase="active", active_model=model,
                  active_release=second, previous_model=model, previous_release=first)
    dep = _wait_for(lambda: (d := _deployment(ctl, "edge-1"))["active_release"] == second and d,
                    "the active report")
    assert (dep["phase_text"], dep["previous_release"]) == ("active", first)
    text = _cli(ctl, "devices", "show", "edge-1").output
    assert f"active  {model} r{second}" in text and f"previous  {model} r{first}" in text

    rolled = _cli(ctl, "devices", "rollback", "edge-1")
    assert rolled.exit_code == 0, rolled.output
    back = _deployment(ctl, "edge-1")["desired_release"]
    assert back > second  # a rollback is a new release naming the older model
    assert f"rolling back to {model} as release {back}" in rolled.output
    assert "follow with `slmops devices show edge-1`" in rolled.output
    device.report(release=back, model=model, phase="rolled_back", active_model=model,
                  active_release=back, previous_model=model, previous_release=second)
    dep = _wait_for(lambda: (d := _deployment(ctl, "edge-1"))["phase"] == "rolled_back" and d,
                    "the rolled_back report")
    assert dep["phase_text"] == "rolled back"
    assert f"{model} r{back} (rolled back)" in _cli(ctl, "devices", "list").output


def test_rollback_without_a_previous_model_gives_a_clear_error(
        ctl: RunningController, model: str) -> None:
    ctl.enroll("edge-1")
    _json(ctl, "devices", "assign", "edge-1", model)
    error = _error(ctl, "devices", "rollback", "edge-1")
    assert error["code"] == "failed_precondition"
    assert "no previous model to go back to" in error["message"]
    assert "slmops devices assign edge-1 NAME:VERSION" in error["message"]
    human = _cli(ctl, "devices", "rollback", "edge-1")
    assert human.exit_code == 1
    said = " ".join(human.output.split())  # the error is wrapped to the terminal's width
    assert said.startswith("error (failed_precondition): ") and "no previous model" in said


@pytest.mark.parametrize(("device", "ref", "code", "says"), [
    ("edge-1", "nobody:1", "not_found", "nobody"),
    ("edge-1", "tiny-support:1", "failed_precondition", "slmops build tiny-support:1 --profiles"),
    ("edge-9", "tiny-support:1", "not_found", "edge-9"),
])
def test_assign_errors_say_what_is_wrong(ctl: RunningController, tiny: variants.TinyVariants,
                                         device: str, ref: str, code: str, says: str) -> None:
    _register(ctl, tiny, tiny.fp32, "cpu-fp32")  # a variant for another profile only
    ctl.enroll("edge-1")
    error = _error(ctl, "devices", "assign", device, ref)
    assert error["code"] == code and says in error["message"], error
    assert _deployment(ctl, "edge-1")["desired_release"] == 0


# --- bundles -----------------------------------------------------------------------------------

def test_bundle_export_writes_a_tar_that_starts_with_the_signed_manifest(
        ctl: RunningController, model: str, tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "tiny.bundle"
    out.parent.mkdir()
    result = _json(ctl, "bundle", "export", model, "--profile", PROFILE, "--out", str(out))
    data = out.read_bytes()
    assert result["path"] == str(out) and result["size_bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert (result["model"], result["profile"]) == (model, PROFILE) and result["release"] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.bundle"]  # no temp file left

    with tarfile.open(out, "r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:2]] == ["manifest.json", "manifest.sig"]
        body = tar.extractfile(members[0]).read()
        signature = tar.extractfile(members[1]).read()
        blobs = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                 for m in members[2:]}
    manifest = verify(body, signature, ctl.enroll("edge-1").manifest_public_key)
    assert (manifest.ref, manifest.profile, manifest.release) == (model, PROFILE, result["release"])
    assert result["files"] == len(manifest.files)
    assert blobs == {f"blobs/{f.sha256}": f.sha256 for f in manifest.files}
    registry = ctl.controller.registry
    stored = registry.variant_path(registry.variant(model, PROFILE))
    assert {f.path for f in manifest.files} == {
        p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}

    human = _cli(ctl, "bundle", "export", model, "--profile", PROFILE, "--out", str(out))
    assert human.exit_code == 0, human.output
    assert f"wrote {out}" in human.output and hashlib.sha256(out.read_bytes()).hexdigest() in human.output
    assert "slmops-agent install-bundle tiny.bundle" in human.output


@pytest.mark.parametrize(("ref", "profile", "code", "says"), [
    ("nobody:1", PROFILE, "not_found", "nobody"),
    ("tiny-support:1", "cpu-fp32", "failed_precondition", "--profiles cpu-fp32"),
    ("tiny-support:1", "gpu-quantum", "invalid_argument", "gpu-quantum"),
])
def test_bundle_export_error_is_clear_and_leaves_no_file(
        ctl: RunningController, model: str, tmp_path: Path, ref: str, profile: str, code: str,
        says: str) -> None:
    out = tmp_path / "out" / "x.bundle"
    out.parent.mkdir()
    error = _error(ctl, "bundle", "export", ref, "--profile", profile, "--out", str(out))
    assert error["code"] == code and says in error["message"], error
    assert list(out.parent.iterdir()) == []


def test_bundle_export_checks_out_before_asking_the_controller(ctl: RunningController,
                                                               tmp_path: Path) -> None:
    error = _error(ctl, "bundle", "export", "nobody:1", "--profile", PROFILE, "--out",
                   str(tmp_path / "missing" / "x.bundle"))
    assert error["code"] == "invalid_argument" and error["message"].startswith("--out: directory")
    error = _error(ctl, "bundle", "export", "nobody:1", "--profile", PROFILE, "--out", str(tmp_path))
    assert error["code"] == "invalid_argument" and "is a directory" in error["message"]


# --- with a real agent -------------------------------------------------------------------------

@pytest.fixture
def agent(ctl: RunningController, tmp_path: Path) -> Iterator[Any]:

    running = RunningAgent(ctl, tmp_path / "edge-1", "edge-1")
    try:
        _wait_for(lambda: '"status": "online"' in _cli(ctl, "devices", "show", "edge-1", "--json").output,
                  "edge-1 to enroll and come online", timeout=60)
        yield running
    finally:
        running.stop()


def test_show_follows_a_real_agent_to_the_assigned_model_and_back(
        ctl: RunningController, tiny: variants.TinyVariants, agent: Any) -> None:
    profile = _json(ctl, "devices", "show", "edge-1")["profile"]  # this machine's hardware
    first = _register(ctl, tiny, tiny.fp32, profile)
    second = _register(ctl, tiny, tiny.int4, profile)

    def settled(release: int, phase: str) -> Callable[[], Any]:
        def check() -> Any:
            dep = _deployment(ctl, "edge-1")
            assert dep["phase"] not in ("failed", "refused"), dep
            return dep["phase"] == phase and dep["active_release"] == release and dep
        return check

    r1 = _json(ctl, "devices", "assign", "edge-1", first)["release"]
    _wait_for(settled(r1, "active"), f"release {r1} active", timeout=180)
    r2 = _json(ctl, "devices", "assign", "edge-1", second)["release"]
    dep = _wait_for(settled(r2, "active"), f"release {r2} active", timeout=180)
    assert (dep["active_model"], dep["previous_model"], dep["previous_release"]) == (second, first, r1)
    text = _cli(ctl, "devices", "show", "edge-1").output
    assert f"active  {second} r{r2}" in text and f"previous  {first} r{r1}" in text
    assert f"{second} r{r2}" in _cli(ctl, "devices", "list").output

    back = _json(ctl, "devices", "rollback", "edge-1")
    assert back["release"] > r2 and back["model"] == first
    dep = _wait_for(settled(back["release"], "rolled_back"), f"the rollback to {first}", timeout=120)
    assert dep["active_model"] == first and dep["phase_text"] == "rolled back"
