"""The controller delivers only bytes that match the sha256 the registry recorded at build time:
a damaged file in the registry or in the blob store refuses the release, naming the file and
the repair, and `slmops models verify` reports it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import variants
from inproc import RunningController
from test_delivery_controller import PROFILE, Device, _assign, _error, _register, _variant_entry

from protos import pipeline_pb2, pipeline_pb2_grpc

SLMOPS = Path(sys.executable).parent / "slmops"


def _flip_byte(path: Path, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


def _largest(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _verify(ctl: RunningController) -> pipeline_pb2.VerifyModelsResponse:
    stub = pipeline_pb2_grpc.PipelineServiceStub(ctl.channel(ctl.config.admin_cert_pem,
                                                             ctl.config.admin_key_pem))
    return stub.VerifyModels(pipeline_pb2.VerifyModelsRequest(), timeout=60)


def _cli_verify(ctl: RunningController) -> tuple[int, dict]:
    done = subprocess.run([str(SLMOPS), "models", "verify", "--json"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "SLMOPS_CONFIG": ctl.endpoints.config_path})
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def tiny_model(ctl: RunningController, tiny: variants.TinyVariants, tmp_path: Path) -> tuple[str, Path]:
    """tiny:1 with the tiny fp32 variant registered for the test devices' profile; the ref and
    the registry's copy of the variant."""
    ref = _register(ctl, tmp_path, "tiny", [_variant_entry(tiny.fp32, precision="fp32")])
    variant = ctl.controller.registry.variant(ref, PROFILE)
    return ref, ctl.controller.registry.variant_path(variant)


def test_flipped_byte_in_the_registry_copy_refuses_the_assign_and_models_verify_reports_it(
        ctl: RunningController, tiny_model: tuple[str, Path]) -> None:
    ref, registry_copy = tiny_model
    device = Device(ctl, "edge-1")
    damaged = _largest(registry_copy)
    _flip_byte(damaged)
    error = _error(lambda: _assign(ctl, device.identity.device_id, ref))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert damaged.name in error.details() and "damaged" in error.details()
    assert f"slmops build {ref} --profiles {PROFILE}" in error.details()
    report = _verify(ctl)
    assert [(d.kind, d.path, d.problem) for d in report.damaged] == [("variant", str(damaged), "sha256")]
    assert report.damaged[0].repair == f"slmops build {ref} --profiles {PROFILE}"
    code, data = _cli_verify(ctl)
    assert code == 1 and data["ok"] is False
    assert [d["path"] for d in data["damaged"]] == [str(damaged)]


def test_flipped_byte_in_a_blob_refuses_the_next_assign_and_models_verify_reports_it(
        ctl: RunningController, tiny_model: tuple[str, Path]) -> None:
    ref, registry_copy = tiny_model
    device = Device(ctl, "edge-1")
    _assign(ctl, device.identity.device_id, ref)
    manifest = device.manifest(device.desired())
    largest = _largest(registry_copy)
    entry = next(f for f in manifest.files if f.path == largest.relative_to(registry_copy).as_posix())
    blob = ctl.controller.releases._blobs.path(entry.sha256)
    assert not os.path.samefile(blob, largest)  # a copy, not a second name for the same inode
    code, data = _cli_verify(ctl)
    assert (code, data["ok"], data["blobs"]) == (0, True, len({f.sha256 for f in manifest.files}))
    _flip_byte(blob)
    assert largest.read_bytes() != blob.read_bytes()  # the registry's copy is untouched
    error = _error(lambda: _assign(ctl, device.identity.device_id, ref))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(blob) in error.details() and f"rm {blob}" in error.details()
    report = _verify(ctl)
    assert [(d.kind, d.path, d.problem) for d in report.damaged] == [("blob", str(blob), "sha256")]
    code, data = _cli_verify(ctl)
    assert code == 1 and data["damaged"][0]["path"] == str(blob)
    blob.unlink()  # the repair the message names
    _assign(ctl, device.identity.device_id, ref)
    assert _cli_verify(ctl)[0] == 0


def test_a_variant_registered_before_per_file_hashes_is_recovered_only_if_it_matches_its_digest(
        ctl: RunningController, tiny_model: tuple[str, Path]) -> None:
    ref, registry_copy = tiny_model
    device = Device(ctl, "edge-1")
    db = ctl.controller.settings.data_dir / "fleet.db"

    def forget_files() -> None:  # as a registry made before the variant_files table
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM variant_files")

    forget_files()
    _assign(ctl, device.identity.device_id, ref)  # recovered: the files match the digest
    forget_files()
    _flip_byte(_largest(registry_copy))
    error = _error(lambda: _assign(ctl, device.identity.device_id, ref))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no longer match the digest recorded" in error.details()
    assert f"slmops build {ref} --profiles {PROFILE}" in error.details()
    assert [d.problem for d in _verify(ctl).damaged] == ["unrecorded"]


def test_controller_start_logs_a_variant_file_whose_size_changed(
        tmp_path: Path, tiny: variants.TinyVariants, caplog: pytest.LogCaptureFixture) -> None:
    first = RunningController(tmp_path / "ctl")
    try:
        ref = _register(first, tmp_path, "tiny", [_variant_entry(tiny.fp32, precision="fp32")])
        registry = first.controller.registry
        damaged = _largest(registry.variant_path(registry.variant(ref, PROFILE)))
    finally:
        first.stop()
    with open(damaged, "ab") as f:
        f.write(b"\0")  # a stray write past the end
    caplog.set_level("WARNING", logger="controller.delivery.integrity")
    second = RunningController(tmp_path / "ctl")
    try:
        deadline = time.monotonic() + 30
        while str(damaged) not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"damaged model file: {damaged}" in caplog.text
        assert f"slmops build {ref} --profiles {PROFILE}" in caplog.text
    finally:
        second.stop()
