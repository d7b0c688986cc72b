"""The controller's side of model delivery, with a real controller in this process and real mTLS
channels: assignment signs a manifest into the device's desired state, FetchBlob serves only the
blobs issued to a device and resumes from an offset, excess downloads are refused with
RESOURCE_EXHAUSTED, deployment reports reach GetDevice, a rollback is a new release naming the previous model,
bundles are signed tars. Variants here are small directories of real files registered in the
controller's real registry; nothing is built (the build itself is tested in test_build_variants).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from inproc import RunningController

from agent.delivery.manifest import Manifest, ManifestRefused, verify
from agent.delivery.phases import to_proto as phase_to_proto
from agent.identity import Identity
from controller.build.check import GOLDEN_ROWS, metrics_from
from controller.delivery.blobs import BlobStore
from controller.pipeline.evaluate.rows import parse_rows
from controller.registry.variant_files import VariantFile
from controller.store import open_store, sqlite_url
from controller.validation import Invalid
from protos import admin_pb2, delivery_pb2, delivery_pb2_grpc, fleet_pb2

PROFILE = "cpu-x86-avx2-int8"  # what inproc.HARDWARE (x86_64, AVX2) matches
MIB = 1 << 20
GOLDEN = [{"prompt": f"where is order {i}?", "answer": f"order {i} ships today"} for i in range(10)]


# --- helpers ---------------------------------------------------------------------------------

def _variant_dir(root: Path, weights: bytes, tokenizer: bytes = b'{"vocab": 400}') -> Path:
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(weights)
    (root / "tokenizer.json").write_bytes(tokenizer)
    (root / "genai_config.json").write_text(json.dumps({"model": {"type": "llama"}}))
    return root


def _variant_entry(path: Path, profile: str = PROFILE, precision: str = "int8", status: str = "passed",
                   correct: int = 9) -> dict:
    return {"profile": profile, "precision": precision, "provider": "cpu", "runtime": "onnxruntime-genai",
            "status": status, "reason": "" if status == "passed" else "exact match dropped 9 points",
            "path": str(path),
            "metrics": {"exact_match": 0.9, "exact_match_delta": -0.5, "tokens_per_s": 123.0,
                        "golden": {"rows": GOLDEN, "correct": correct}},
            "build": {"gates": {"max_accuracy_drop": 1.0, "min_tokens_per_s": 8.0,
                                "max_memory_bytes": 4 * 2**30}}}


def _register(ctl: RunningController, root: Path, name: str, variants: list[dict]) -> str:
    """A model version (a directory of files) with the given variants; returns NAME:VERSION."""
    model = root / f"{name}-model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"name": name}))
    registry = ctl.controller.registry
    (record,) = registry.register([{"name": name, "kind": "base", "path": str(model),
                                    "lineage": {"recipe": "test"}}])
    registry.add_variants(record.ref, variants)
    return record.ref


class Device:
    """An enrolled device with a live stream (hello sent, welcome and first desired state read)."""

    def __init__(self, ctl: RunningController, name: str) -> None:
        self.identity: Identity = ctl.enroll(name)
        self.stream = ctl.stream(self.identity)
        self.stream.hello()
        self.first_state = self.stream.recv_kind("desired_state")
        self.blobs = delivery_pb2_grpc.DeliveryServiceStub(ctl.device_channel(self.identity))

    def desired(self) -> fleet_pb2.DesiredState:
        return self.stream.recv_kind("desired_state")

    def manifest(self, state: fleet_pb2.DesiredState) -> Manifest:
        return verify(state.manifest.manifest_json, state.manifest.signature,
                      self.identity.manifest_public_key)

    def fetch(self, sha: str, offset: int = 0) -> list[delivery_pb2.BlobChunk]:
        return list(self.blobs.FetchBlob(delivery_pb2.FetchBlobRequest(sha256=sha, offset=offset),
                                         timeout=30))

    def report(self, **fields: object) -> None:
        if "phase" in fields:  # by its word, as the agent's DeploymentPhase
            fields["deployment_phase"] = phase_to_proto(str(fields.pop("phase")))
        self.stream.send(fleet_pb2.ConnectRequest(deployment=delivery_pb2.DeploymentStatus(
            timestamp_ms=int(time.time() * 1000), **fields)))


def _assign(ctl: RunningController, device: str, model: str) -> admin_pb2.AssignModelResponse:
    return ctl.admin.AssignModel(admin_pb2.AssignModelRequest(id=device, model=model), timeout=30)


def _device(ctl: RunningController, name: str) -> admin_pb2.Device:
    return ctl.admin.GetDevice(admin_pb2.GetDeviceRequest(id=name), timeout=10).device


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__next__"):
            list(result)  # type: ignore[call-overload]  # a stream fails as it is read
    return info.value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model(ctl: RunningController, tmp_path: Path) -> tuple[str, Path]:
    """support:1 with a passed variant for the test devices' profile and one for cpu-fp32."""
    int8 = _variant_dir(tmp_path / "int8", os.urandom(2 * MIB + 12345))
    fp32 = _variant_dir(tmp_path / "fp32", os.urandom(3000))
    ref = _register(ctl, tmp_path, "support", [_variant_entry(int8),
                                               _variant_entry(fp32, "cpu-fp32", "fp32")])
    return ref, ctl.controller.registry.variant_path(ctl.controller.registry.variant(ref, PROFILE))


# --- assignment --------------------------------------------------------------------------------

def test_assign_puts_a_manifest_signed_for_the_device_profile_into_its_desired_state(
        ctl: RunningController, model: tuple[str, Path]) -> None:
    ref, variant_dir = model
    device = Device(ctl, "edge-1")
    assert not device.first_state.HasField("manifest") and device.first_state.profile == PROFILE

    response = _assign(ctl, "edge-1", ref)
    state = device.desired()
    manifest = device.manifest(state)

    assert state.model == ref and state.profile == PROFILE
    assert manifest.release == response.release > 0
    assert (manifest.ref, manifest.profile, manifest.precision) == (ref, PROFILE, "int8")
    on_disk = {p.relative_to(variant_dir).as_posix(): p.read_bytes()
               for p in variant_dir.rglob("*") if p.is_file()}
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        path: (len(data), _sha(data)) for path, data in on_disk.items()}
    assert "slmops-variant.json" in on_disk  # every file of the variant dir travels
    assert manifest.requires == {"arch": ["x86_64", "amd64"], "isa_flags": ["avx2"], "accelerator": "",
                                 "min_memory_bytes": 0}
    gate = manifest.gate
    assert gate.golden == tuple((r["prompt"], r["answer"]) for r in GOLDEN)
    assert gate.min_accuracy == pytest.approx(0.9 - 0.1)  # 9 of 10, less one prompt (> 1 point)
    assert (gate.min_tokens_per_s, gate.max_memory_bytes, gate.max_new_tokens) == (8.0, 4 * 2**30, 64)
    assert manifest.metrics["exact_match"] == 0.9 and manifest.lineage["recipe"] == "test"
    assert manifest.expires_at_ms - manifest.issued_at_ms == 7 * 24 * 3600 * 1000

    shown = response.device.deployment
    assert (shown.desired_model, shown.desired_release, shown.desired_variant) == (
        ref, manifest.release, PROFILE)
    assert state.generation == response.device.desired_generation > device.first_state.generation
    blobs = ctl.controller.settings.data_dir / "blobs" / "sha256"
    for entry in manifest.files:
        assert (blobs / entry.sha256[:2] / entry.sha256).read_bytes() == on_disk[entry.path]


def test_a_device_gets_the_variant_of_its_effective_profile(ctl: RunningController,
                                                             model: tuple[str, Path]) -> None:
    ref, _ = model
    device = Device(ctl, "edge-1")
    ctl.admin.SetDeviceProfile(admin_pb2.SetDeviceProfileRequest(id="edge-1", profile="cpu-fp32"),
                               timeout=10)
    assert device.desired().profile == "cpu-fp32"  # an online device hears its new profile at once
    _assign(ctl, "edge-1", ref)
    manifest = device.manifest(device.desired())
    assert (manifest.profile, manifest.precision, manifest.requires["arch"]) == ("cpu-fp32", "fp32", [])


def test_a_label_change_keeps_the_manifest_in_the_desired_state(ctl: RunningController,
                                                                model: tuple[str, Path]) -> None:
    device = Device(ctl, "edge-1")
    release = _assign(ctl, "edge-1", model[0]).release
    assigned = device.desired()
    ctl.admin.UpdateDeviceLabels(admin_pb2.UpdateDeviceLabelsRequest(id="edge-1", set={"site": "b"}),
                                 timeout=10)
    state = device.desired()
    assert state.labels["site"] == "b" and state.manifest == assigned.manifest
    assert device.manifest(state).release == release


def test_a_device_that_connects_later_finds_its_manifest_in_the_first_desired_state(
        ctl: RunningController, model: tuple[str, Path]) -> None:
    first = Device(ctl, "edge-1")
    release = _assign(ctl, "edge-1", model[0]).release
    first.stream.close()
    again = ctl.stream(first.identity)
    again.hello()
    state = again.recv_kind("desired_state")
    assert first.manifest(state).release == release


def test_release_numbers_strictly_increase_and_are_never_reused(
        ctl: RunningController, model: tuple[str, Path], tmp_path: Path) -> None:
    ref, _ = model
    devices = [Device(ctl, "edge-1"), Device(ctl, "edge-2")]
    numbers = [_assign(ctl, name, ref).release for name in ("edge-1", "edge-2", "edge-1")]
    numbers.append(_release_of_bundle(ctl, ref, PROFILE))
    with sqlite3.connect(ctl.controller.settings.data_dir / "fleet.db") as db:
        db.execute("DELETE FROM releases")
    numbers.append(_assign(ctl, "edge-2", ref).release)
    assert numbers == sorted(set(numbers)), numbers
    assert devices[1].manifest(devices[1].desired()).release == numbers[1]


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "ref", "code", "says"), [
    ("edge-1", "", grpc.StatusCode.INVALID_ARGUMENT, "model: give the model"),
    ("edge-1", "Not A Name", grpc.StatusCode.INVALID_ARGUMENT, "is not a valid model name"),
    ("edge-1", "nosuch:1", grpc.StatusCode.NOT_FOUND, "no model named 'nosuch'"),
    ("edge-1", "support:9", grpc.StatusCode.NOT_FOUND, "has no version 9"),
    ("edge-1", "fp32only:1", grpc.StatusCode.FAILED_PRECONDITION,
     f"`slmops build fp32only:1 --profiles {PROFILE}`"),
    ("edge-1", "failing:1", grpc.StatusCode.FAILED_PRECONDITION, "failed its gates (exact match dropped"),
    ("nosuch", "support:1", grpc.StatusCode.NOT_FOUND, "no device with id or name 'nosuch'"),
])
def test_bad_assignments_are_refused_saying_what_to_do(
        ctl: RunningController, model: tuple[str, Path], tmp_path: Path, device: str, ref: str,
        code: grpc.StatusCode, says: str) -> None:
    _register(ctl, tmp_path, "fp32only", [_variant_entry(_variant_dir(tmp_path / "o", b"w"), "cpu-fp32",
                                                         "fp32")])
    _register(ctl, tmp_path, "failing", [_variant_entry(_variant_dir(tmp_path / "f", b"w"),
                                                        status="failed")])
    Device(ctl, "edge-1")
    error = _error(lambda: _assign(ctl, device, ref))
    assert error.code() == code and says in error.details(), error.details()
    if device == "edge-1":
        assert _device(ctl, "edge-1").deployment.desired_release == 0


def test_rollback_without_a_previous_model_is_refused(ctl: RunningController,
                                                      model: tuple[str, Path]) -> None:
    Device(ctl, "edge-1")
    error = _error(lambda: ctl.admin.RollbackDevice(admin_pb2.RollbackDeviceRequest(id="edge-1"),
                                                    timeout=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no previous model" in error.details() and "slmops devices assign edge-1" in error.details()


# --- FetchBlob -------------------------------------------------------------------------------

def test_fetch_blob_streams_mebibyte_chunks_and_resumes_from_an_offset(
        ctl: RunningController, model: tuple[str, Path]) -> None:
    ref, variant_dir = model
    device = Device(ctl, "edge-1")
    _assign(ctl, "edge-1", ref)
    weights = (variant_dir / "model.onnx").read_bytes()
    sha = _sha(weights)

    chunks = device.fetch(sha)
    assert [c.offset for c in chunks] == [0, MIB, 2 * MIB]
    assert all(c.size == len(weights) for c in chunks) and max(len(c.data) for c in chunks) == MIB
    assert b"".join(c.data for c in chunks) == weights

    resumed = device.fetch(sha, offset=MIB + 7)
    assert resumed[0].offset == MIB + 7 and b"".join(c.data for c in resumed) == weights[MIB + 7:]
    assert device.fetch(sha, offset=len(weights))[0].data == b""

    error = _error(lambda: device.fetch(sha, offset=len(weights) + 1))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE and "past the end" in error.details()


def test_a_damaged_blob_is_served_as_stored_for_the_agent_to_catch(
        ctl: RunningController, model: tuple[str, Path]) -> None:
    device = Device(ctl, "edge-1")
    _assign(ctl, "edge-1", model[0])
    entry = next(f for f in device.manifest(device.desired()).files if f.path == "tokenizer.json")
    blob = ctl.controller.settings.data_dir / "blobs" / "sha256" / entry.sha256[:2] / entry.sha256
    damaged = bytearray(blob.read_bytes())
    damaged[3] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    assert b"".join(c.data for c in device.fetch(entry.sha256)) == bytes(damaged)


def test_only_blobs_issued_to_the_device_are_served(ctl: RunningController,
                                                    model: tuple[str, Path]) -> None:
    ref, variant_dir = model
    owner, other = Device(ctl, "edge-1"), Device(ctl, "edge-2")
    _assign(ctl, "edge-1", ref)
    sha = _sha((variant_dir / "model.onnx").read_bytes())
    for who, asked, code in [
        (other, sha, grpc.StatusCode.NOT_FOUND),  # stored, but issued to edge-1 only
        (owner, "0" * 64, grpc.StatusCode.NOT_FOUND),
        (owner, "../../pki/ca.key", grpc.StatusCode.INVALID_ARGUMENT),
        (owner, sha.upper(), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        error = _error(lambda who=who, asked=asked: who.fetch(asked))
        assert error.code() == code, (asked, error.details())
    admin_stub = delivery_pb2_grpc.DeliveryServiceStub(ctl.channel(ctl.config.admin_cert_pem,
                                                                   ctl.config.admin_key_pem))
    error = _error(lambda: admin_stub.FetchBlob(delivery_pb2.FetchBlobRequest(sha256=sha), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_downloads_beyond_the_limit_get_resource_exhausted_and_a_retry_succeeds(tmp_path: Path) -> None:
    ctl = RunningController(tmp_path / "ctl", max_concurrent_downloads=1)
    try:
        big = os.urandom(48 * MIB)  # far more than the stream's flow-control window
        ref = _register(ctl, tmp_path, "big", [_variant_entry(_variant_dir(tmp_path / "v", big))])
        device = Device(ctl, "edge-1")
        _assign(ctl, "edge-1", ref)
        request = delivery_pb2.FetchBlobRequest(sha256=_sha(big))
        first = device.blobs.FetchBlob(request, timeout=60)
        assert next(first).offset == 0  # this download holds the only slot while it is read

        error = _error(lambda: device.fetch(_sha(big)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in error.details()

        first.cancel()
        deadline = time.monotonic() + 20
        while True:  # as the agent does: retry until the slot is free again
            try:
                assert b"".join(c.data for c in device.fetch(_sha(big), offset=47 * MIB)) == big[47 * MIB:]
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        ctl.stop()


# --- deployment reports and rollback -----------------------------------------------------------

def test_a_deployment_report_shows_in_get_device_and_a_bad_one_is_ignored(
        ctl: RunningController, model: tuple[str, Path]) -> None:
    device = Device(ctl, "edge-1")
    release = _assign(ctl, "edge-1", model[0]).release
    device.report(release=release, model=model[0], phase="downloading", bytes_done=1000,
                  bytes_total=4000, bytes_per_s=500.0, detail_json='{"missing": 2}')
    _wait_for(lambda: _device(ctl, "edge-1").deployment.deployment_phase == phase_to_proto("downloading"),
              "the report")
    shown = _device(ctl, "edge-1").deployment
    assert (shown.bytes_done, shown.bytes_total, shown.bytes_per_s) == (1000, 4000, 500.0)
    assert json.loads(shown.detail_json) == {"missing": 2} and shown.updated_at_ms > 0

    for bad in ({"deployment_phase": 0}, {"phase": "failed", "reason": "x" * 100_000},
                {"phase": "failed", "detail_json": "[1, 2]"}, {"phase": "active", "bytes_per_s": -1.0}):
        device.report(release=release, **bad)
    device.stream.send(fleet_pb2.ConnectRequest(telemetry=fleet_pb2.TelemetryBatch(batch_id=7)))
    assert device.stream.recv_kind("telemetry_ack").batch_id == 7  # the stream goes on
    assert _device(ctl, "edge-1").deployment.deployment_phase == phase_to_proto("downloading")

    device.report(release=release, model=model[0], phase="failed",
                  reason="insufficient storage: need 4000 bytes, 10 free")
    _wait_for(lambda: _device(ctl, "edge-1").deployment.deployment_phase == phase_to_proto("failed"),
              "the failure")
    assert _device(ctl, "edge-1").deployment.reason.startswith("insufficient storage")


def test_rollback_is_a_new_higher_release_naming_the_previous_model_and_its_files(
        ctl: RunningController, model: tuple[str, Path], tmp_path: Path) -> None:
    ref, _ = model
    device = Device(ctl, "edge-1")
    old = _assign(ctl, "edge-1", ref).release
    original = device.manifest(device.desired())
    newer_ref = _register(ctl, tmp_path, "support", [_variant_entry(_variant_dir(tmp_path / "v2", b"v2"))])
    new = _assign(ctl, "edge-1", newer_ref).release
    device.desired()
    assert new > old
    device.report(release=new, model=newer_ref, phase="active", active_model=newer_ref,
                  active_release=new, previous_model=ref, previous_release=old)
    _wait_for(lambda: _device(ctl, "edge-1").deployment.previous_release == old, "the report")

    response = ctl.admin.RollbackDevice(admin_pb2.RollbackDeviceRequest(id="edge-1"), timeout=10)
    instruction = device.manifest(device.desired())

    assert response.release == instruction.release > new  # release numbers only grow
    assert instruction.rollback and instruction.rollback_from == new and not instruction.downgrade
    assert (instruction.ref, instruction.files) == (original.ref, original.files)
    assert instruction.issued_at_ms >= original.issued_at_ms
    assert response.device.deployment.desired_release == instruction.release
    assert response.device.deployment.desired_model == ref
    # The plain old manifest is no rollback instruction, and its number is below the highest
    # one the device accepted: an agent refuses it as a replay.
    assert not original.rollback and original.release < new


# --- bundles -----------------------------------------------------------------------------------

def _bundle(ctl: RunningController, ref: str, profile: str) -> bytes:
    chunks = ctl.admin.ExportBundle(admin_pb2.ExportBundleRequest(model=ref, profile=profile), timeout=60)
    return b"".join(c.data for c in chunks)


def _release_of_bundle(ctl: RunningController, ref: str, profile: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(_bundle(ctl, ref, profile))) as tar:
        return json.loads(tar.extractfile("manifest.json").read())["release"]


def test_export_bundle_streams_a_signed_tar_with_every_blob(ctl: RunningController,
                                                            model: tuple[str, Path]) -> None:
    ref, variant_dir = model
    data = _bundle(ctl, ref, PROFILE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    public = Device(ctl, "edge-1").identity.manifest_public_key  # as the agents pinned it
    manifest = verify(members["manifest.json"], members["manifest.sig"], public)
    assert (manifest.ref, manifest.profile) == (ref, PROFILE)
    assert list(members)[:2] == ["manifest.json", "manifest.sig"]
    assert {name for name in members if name.startswith("blobs/")} == {
        f"blobs/{f.sha256}" for f in manifest.files}
    for entry in manifest.files:
        assert members[f"blobs/{entry.sha256}"] == (variant_dir / entry.path).read_bytes()
    with pytest.raises(ManifestRefused, match="bad signature"):
        verify(members["manifest.json"].replace(b"int8", b"fp32"), members["manifest.sig"], public)


@pytest.mark.parametrize(("ref", "profile", "code", "says"), [
    ("support:1", "nosuch", grpc.StatusCode.INVALID_ARGUMENT, "profile: unknown device profile 'nosuch'"),
    ("support:1", "", grpc.StatusCode.INVALID_ARGUMENT, "profile: name the device profile"),
    ("support:1", "cuda-int4", grpc.StatusCode.FAILED_PRECONDITION, "--profiles cuda-int4"),
    ("", PROFILE, grpc.StatusCode.INVALID_ARGUMENT, "model:"),
])
def test_bad_bundle_requests_are_refused_naming_the_field(
        ctl: RunningController, model: tuple[str, Path], ref: str, profile: str, code: grpc.StatusCode,
        says: str) -> None:
    error = _error(lambda: _bundle(ctl, ref, profile))
    assert error.code() == code and says in error.details(), error.details()


# --- the parts on their own ----------------------------------------------------------------------

def test_blob_store_names_files_by_sha256_only_and_stores_each_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    shared = b'{"vocab": 400}'

    def recorded(directory: Path) -> list[VariantFile]:
        return [VariantFile(p.name, p.stat().st_size, _sha(p.read_bytes()))
                for p in sorted(directory.iterdir())]

    a = _variant_dir(tmp_path / "a", b"weights-a", shared)
    first = store.ingest(a, recorded(a), "variant a")
    b = _variant_dir(tmp_path / "b", b"weights-b", shared)
    second = store.ingest(b, recorded(b), "variant b")
    assert store.ingest(a, recorded(a), "variant a") == first  # idempotent
    assert [f.path for f in first] == ["genai_config.json", "model.onnx", "tokenizer.json"]
    tokenizer = {f.sha256 for f in first + second if f.path == "tokenizer.json"}
    assert tokenizer == {_sha(shared)}
    stored = sorted(p for p in (tmp_path / "blobs" / "sha256").rglob("*") if p.is_file())
    assert len(stored) == 4 and all(p.name == _sha(p.read_bytes()) for p in stored)  # 2 shared
    # a copy, never a second name for the registry's file
    assert all(os.stat(p).st_nlink == 1 for p in stored)
    assert store.has(_sha(shared)) and store.size(_sha(shared)) == len(shared)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, ""):
        with pytest.raises(Invalid, match="sha256"):
            store.path(bad)


def test_many_assignments_of_one_variant_at_once_all_get_its_blobs(tmp_path: Path) -> None:
    """Assignments run in worker threads: eight ingesting the same new variant at once must
    all succeed (each blob copied once), never see another's copy land mid-check as damage."""
    source = _variant_dir(tmp_path / "v", os.urandom(4 * 2**20), b'{"vocab": 400}')
    files = [VariantFile(p.name, p.stat().st_size, _sha(p.read_bytes())) for p in sorted(source.iterdir())]
    for round_ in range(5):
        store = BlobStore(tmp_path / f"blobs-{round_}")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _, s=store: s.ingest(source, files, "variant v"), range(8)))
        assert all(r == results[0] for r in results)
        assert store.count() == len(files)


def test_the_check_records_golden_prompts_and_how_many_were_answered_exactly(tmp_path: Path) -> None:
    rows = [{"intent": "order_status", "prompt": f"p{i}", "answer": f"a{i}"} for i in range(25)]
    answers = [f"A{i} " if i % 2 == 0 else "wrong" for i in range(25)]  # exact match normalizes
    raw = {"answers": answers, "tokens": [3] * 25, "seconds": [0.1] * 25, "first_token_s": [0.01] * 25}
    (tmp_path / "model.onnx").write_bytes(b"w")
    reference = {"answers": answers, "exact_match": 0.5, "task_metric": "exact_match",
                 "task_metric_value": 0.5}
    metrics = metrics_from(raw, tmp_path, parse_rows(rows), reference)
    assert metrics["golden"]["rows"] == [{"prompt": r["prompt"], "answer": r["answer"]}
                                         for r in rows[:GOLDEN_ROWS]]
    assert metrics["golden"]["correct"] == 10 and "exact_match" in metrics and "notes" in metrics


def test_an_older_database_gains_the_delivery_columns_and_tables(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fleet.db")
    open_store(url).close()
    with sqlite3.connect(tmp_path / "fleet.db") as db:  # as a release before delivery made it
        for column in ("desired_release", "desired_profile", "dep_phase", "dep_previous_release"):
            db.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        db.execute("DROP TABLE releases")
    store = open_store(url)
    try:
        assert store.list_devices() == [] and store.next_release() == 1 and store.next_release() == 2
        assert store.desired_manifest("d-000000000000") is None
    finally:
        store.close()
