"""The agent's storage for model delivery, on real files: the blob cache (resumable, verified,
named by sha256 only), the A/B slots (staged from the cache, one atomic switch that survives
SIGKILL, rollback, garbage collection) and bundle files (signature first, member names never
become paths)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.delivery.blobcache import BlobCache, BlobMismatch
from agent.delivery.bundle import BundleError, read_bundle, write_bundle
from agent.delivery.manifest import FileEntry, Manifest, ManifestRefused, sign
from agent.delivery.slots import Slots, SlotsError

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def variant_files(seed: int) -> dict[str, bytes]:
    """A small variant: two files shared by every seed (tokenizer, a duplicate), one its own."""
    shared = b"tokenizer " * 3000
    return {"tokenizer.json": shared, "extra/tokenizer-copy.json": shared,
            "model.onnx": os.urandom(1024) + bytes([seed]) * 50_000, "genai_config.json": b"{}"}


def make_manifest(contents: dict[str, bytes], release: int, **changes: object) -> Manifest:
    entries = tuple(FileEntry(p, len(d), sha(d)) for p, d in contents.items())
    fields: dict[str, object] = dict(
        release=release, model="support", version=release, profile="cpu-x86", precision="int8",
        runtime="ort-genai", variant="a" * 64, files=entries, issued_at_ms=1,
        expires_at_ms=int(time.time() * 1000) + 3600_000)
    fields.update(changes)
    return Manifest(**fields)


def fill(cache: BlobCache, files: dict[str, bytes]) -> None:
    for data in files.values():
        cache.add_file(sha(data), len(data), io.BytesIO(data))


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- blob cache ---------------------------------------------------------------------------------

def test_blob_is_complete_only_after_its_hash_checks_and_partial_bytes_resume(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    data = os.urandom(300_000)
    digest = sha(data)
    assert cache.append(digest, 0, data[:100_000], len(data)) == 100_000
    assert not cache.has(digest) and cache.partial_size(digest) == 100_000
    with pytest.raises(ValueError, match="offset 5"):
        cache.append(digest, 5, data[5:10], len(data))  # not where the file ends
    # A new cache object (an agent restart) sees the same partial file.
    cache = BlobCache(tmp_path / "blobs")
    assert cache.append(digest, 100_000, data[100_000:] + b"too much", len(data)) == 200_000
    assert cache.finish(digest, len(data)) == tmp_path / "blobs" / digest
    assert cache.has(digest) and cache.partial_size(digest) == 0
    assert cache.path(digest).read_bytes() == data


def test_blob_with_wrong_bytes_is_deleted_and_the_mismatch_named(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    data = b"x" * 1000
    digest = sha(data)
    cache.append(digest, 0, b"y" + data[1:], len(data))
    with pytest.raises(BlobMismatch, match=f"hash mismatch: blob {digest}: expected sha256 {digest}, got "):
        cache.finish(digest, len(data))
    assert not cache.has(digest) and cache.partial_size(digest) == 0
    cache.append(digest, 0, data[:10], len(data))
    with pytest.raises(BlobMismatch, match="10 bytes received, the manifest says 1000"):
        cache.finish(digest, len(data))
    cache.add_file(digest, 1000, io.BytesIO(data + b"junk"))  # a larger source is cut at its size
    assert cache.path(digest).read_bytes() == data
    empty = sha(b"")
    assert cache.finish(empty, 0).read_bytes() == b""


@pytest.mark.parametrize("name", ["../etc", "A" * 64, "a" * 63, "a" * 64 + "/x", "", "a" * 64 + ".part"])
def test_blob_names_are_sha256_only(tmp_path: Path, name: str) -> None:
    cache = BlobCache(tmp_path / "blobs")
    with pytest.raises(ValueError, match="not a sha256"):
        cache.path(name)
    with pytest.raises(ValueError, match="not a sha256"):
        cache.append(name, 0, b"x", 1)


def test_missing_lists_each_absent_blob_once_and_gc_keeps_what_is_named(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    old, new = variant_files(1), variant_files(2)
    fill(cache, old)
    manifest = make_manifest(new, 2)
    missing = cache.missing(manifest.files)
    assert [f.path for f in missing] == ["model.onnx"]  # the tokenizer is shared, stored once
    cache.append(sha(new["model.onnx"]), 0, new["model.onnx"][:10], len(new["model.onnx"]))
    (tmp_path / "blobs" / "notes.txt").write_text("not a blob: left alone")
    keep = {f.sha256 for f in manifest.files}
    freed = cache.gc(keep)
    assert freed == len(old["model.onnx"])  # the .part is kept: its blob is in `keep`
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == sorted(
        {sha(new["tokenizer.json"]), sha(b"{}"), sha(new["model.onnx"]) + ".part", "notes.txt"})
    assert cache.gc(set()) > 0 and sorted(os.listdir(tmp_path / "blobs")) == ["notes.txt"]
    assert cache.free_bytes() > 0


# --- slots ----------------------------------------------------------------------------------------

def stage(slots: Slots, cache: BlobCache, key: ed25519.Ed25519PrivateKey, files: dict[str, bytes],
          release: int) -> Path:
    fill(cache, files)
    manifest = make_manifest(files, release)
    body, sig = sign(manifest, key)
    return slots.stage(manifest, body, sig, cache)


def test_stage_hardlinks_the_cache_into_a_slot_of_its_own(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    files = variant_files(1)
    path = stage(slots, cache, key, files, 3)
    assert path == tmp_path / "models" / "r3"
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == files  # exactly the variant's files: manifest.json/.sig live beside the slot
    assert (path / "model.onnx").stat().st_ino == cache.path(sha(files["model.onnx"])).stat().st_ino
    assert (tmp_path / "models" / "r3.manifest.json").exists()
    assert (tmp_path / "models" / "r3.manifest.sig").stat().st_size == 64
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    # Staging again reuses the slot; a slot whose files were damaged is rebuilt.
    assert stage(slots, cache, key, files, 3) == path
    (path / "genai_config.json").unlink()
    (path / "genai_config.json").write_bytes(b"{damaged}")
    assert stage(slots, cache, key, files, 3) == path
    assert (path / "genai_config.json").read_bytes() == b"{}"


def test_stage_without_the_blobs_fails_and_leaves_nothing(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    files = variant_files(1)
    manifest = make_manifest(files, 4)
    body, sig = sign(manifest, key)
    with pytest.raises(SlotsError, match="not in the blob cache"):
        slots.stage(manifest, body, sig, cache)
    assert not (tmp_path / "models" / "r4").exists()
    assert not [p for p in (tmp_path / "models").iterdir() if p.is_dir()]


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil", "a/../../evil", "a\\b"])
def test_stage_refuses_a_path_outside_the_slot(tmp_path: Path, key, bad: str) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    files = variant_files(1)
    fill(cache, files)
    entries = (*make_manifest(files, 5).files, FileEntry(bad, 2, sha(b"{}")))
    manifest = make_manifest(files, 5, files=entries)  # built directly: from_json would refuse it
    with pytest.raises(ManifestRefused, match="path"):
        slots.stage(manifest, b"{}", b"s" * 64, cache)
    assert sorted(os.listdir(tmp_path / "models")) == []
    assert not (tmp_path / "evil").exists()


def test_stage_refuses_a_path_that_resolves_outside_through_a_symlink(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    files = {"sub/model.onnx": b"weights"}
    fill(cache, files)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models" / "r6").mkdir()
    (tmp_path / "models" / "r6" / "sub").symlink_to(outside)  # a tampered slot on disk
    manifest = make_manifest(files, 6)
    with pytest.raises(ManifestRefused, match="outside the slot"):
        slots.stage(manifest, b"{}", b"s" * 64, cache)
    assert os.listdir(outside) == []


def test_activate_keeps_the_previous_release_and_rollback_swaps_them(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    assert slots.active() is None and slots.previous() is None
    with pytest.raises(SlotsError, match="release 1 is not staged"):
        slots.activate(1)
    for release in (1, 2, 3):
        stage(slots, cache, key, variant_files(release), release)
    slots.activate(1)
    assert (slots.active().release, slots.previous()) == (1, None)
    slots.activate(2)
    active, previous = slots.active(), slots.previous()
    assert (active.release, previous.release) == (2, 1)
    assert active.model == "support:2" and active.path == tmp_path / "models" / "r2"
    assert active.manifest_json == (tmp_path / "models" / "r2.manifest.json").read_bytes()
    assert len(active.signature) == 64
    slots.activate(1)  # rollback
    assert (slots.active().release, slots.previous().release) == (1, 2)
    slots.activate(1)  # again: nothing changes
    assert (slots.active().release, slots.previous().release) == (1, 2)
    slots.activate(3)
    assert (slots.active().release, slots.previous().release) == (3, 1)


def test_gc_keeps_the_last_two_releases_and_their_blobs(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    versions = {r: variant_files(r) for r in (1, 2, 3, 4)}
    for release, files in versions.items():
        stage(slots, cache, key, files, release)
    slots.activate(2)
    slots.activate(3)
    (tmp_path / "models" / ".staging-r9.abc").mkdir()  # left by a crash mid-stage
    (tmp_path / "models" / ".slots.json.x1y2.tmp").write_text("{")  # and one mid-switch
    assert slots.gc(keep_releases={4}) == [1]
    assert slots.gc() == [4]
    assert sorted(os.listdir(tmp_path / "models")) == [
        "r2", "r2.manifest.json", "r2.manifest.sig", "r3", "r3.manifest.json", "r3.manifest.sig",
        "slots.json"]
    in_use = slots.blobs_in_use()
    assert in_use == {sha(d) for r in (2, 3) for d in versions[r].values()}
    cache.gc(in_use)
    assert not cache.has(sha(versions[1]["model.onnx"])) and cache.has(sha(versions[3]["model.onnx"]))
    assert (slots.active().path / "model.onnx").read_bytes() == versions[3]["model.onnx"]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"format": 1, "active": "../x"}',
                                     b'{"format": 7, "active": 1}'])
def test_damaged_slots_file_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    slots = Slots(tmp_path / "models")
    (tmp_path / "models" / "slots.json").write_bytes(content)
    with pytest.raises(SlotsError, match=r"slots\.json"):
        slots.active()


def test_slots_file_names_the_old_or_the_new_release_after_sigkill_mid_switch(tmp_path: Path, key) -> None:
    cache, slots = BlobCache(tmp_path / "blobs"), Slots(tmp_path / "models")
    for release in (1, 2):
        stage(slots, cache, key, variant_files(release), release)
    code = (f"from pathlib import Path\nfrom agent.delivery.slots import Slots\n"
            f"s = Slots(Path({str(tmp_path / 'models')!r}))\ns.activate(1)\ns.activate(2)\n"
            "print('switching', flush=True)\nwhile True:\n    s.activate(1)\n    s.activate(2)\n")
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "switching\n"
            time.sleep(0.2)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        state = json.loads((tmp_path / "models" / "slots.json").read_bytes())
        assert {state["active"], state["previous"]} == {1, 2}
        assert slots.active().path.is_dir() and slots.previous().path.is_dir()


# --- bundles ------------------------------------------------------------------------------------

def bundle_of(tmp_path: Path, key, files: dict[str, bytes], release: int = 7) -> tuple[Path, Manifest]:
    store = BlobCache(tmp_path / "controller-blobs")
    fill(store, files)
    manifest = make_manifest(files, release)
    body, sig = sign(manifest, key)
    out = tmp_path / "release.bundle"
    distinct = sorted({f.sha256 for f in manifest.files})
    with open(out, "wb") as f:
        written = write_bundle(f, body, sig, [(s, store.path(s)) for s in distinct])
    assert written == out.stat().st_size
    return out, manifest


def raw_bundle(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_bundle_round_trip_puts_every_blob_in_the_cache(tmp_path: Path, key) -> None:
    files = variant_files(1)
    path, manifest = bundle_of(tmp_path, key, files)
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "manifest.sig"] and len(names) == 2 + 3  # 3 distinct blobs
    cache = BlobCache(tmp_path / "device" / "blobs")
    body, sig, got = read_bundle(path, cache, public(key))
    assert got == manifest and len(sig) == 64 and json.loads(body)["release"] == 7
    assert cache.missing(manifest.files) == []
    assert cache.path(sha(files["model.onnx"])).read_bytes() == files["model.onnx"]
    # A device that already has every blob reads it again without trouble.
    assert read_bundle(path, cache, public(key))[2] == manifest


def test_bundle_with_a_tampered_manifest_is_refused_before_any_blob_is_written(tmp_path: Path, key) -> None:
    files = variant_files(1)
    manifest = make_manifest(files, 7)
    body, sig = sign(manifest, key)
    tampered = body.replace(b'"profile":"cpu-x86"', b'"profile":"cpu-arm"')
    assert tampered != body
    path = raw_bundle(tmp_path / "b.tar", [("manifest.json", tampered), ("manifest.sig", sig),
                                           *[(f"blobs/{sha(d)}", d) for d in files.values()]])
    cache = BlobCache(tmp_path / "device" / "blobs")
    with pytest.raises(ManifestRefused, match="bad signature"):
        read_bundle(path, cache, public(key))
    other = ed25519.Ed25519PrivateKey.generate()  # signed by another controller
    with pytest.raises(ManifestRefused, match="bad signature"):
        read_bundle(bundle_of(tmp_path, other, files)[0], cache, public(key))
    assert os.listdir(tmp_path / "device" / "blobs") == []


def test_bundle_members_must_be_blobs_of_the_manifest(tmp_path: Path, key) -> None:
    files = {"model.onnx": b"weights" * 1000, "genai_config.json": b"{}"}
    manifest = make_manifest(files, 7)
    body, sig = sign(manifest, key)
    head = [("manifest.json", body), ("manifest.sig", sig)]
    blobs = [(f"blobs/{sha(d)}", d) for d in files.values()]
    stranger = b"not in the manifest"
    cases = {
        "traversal": ([*head, ("../x", b"evil"), *blobs], "'../x'"),
        "traversal inside blobs/": ([*head, (f"blobs/../{sha(b'{}')}", b"{}"), *blobs], "not a blob"),
        "extra member": ([*head, *blobs, (f"blobs/{sha(stranger)}", stranger)], "not a blob"),
        "twice": ([*head, *blobs, blobs[1]], "twice"),
        "wrong bytes": ([*head, (blobs[0][0], b"W" + files["model.onnx"][1:]), blobs[1]], "hash mismatch"),
        "short": ([*head, (blobs[0][0], b"weights"), blobs[1]], "cut short"),
        "missing blob": ([*head, blobs[1]], "model.onnx"),
        "signature first": ([("manifest.sig", sig), ("manifest.json", body), *blobs], "expected member"),
    }
    for name, (members, message) in cases.items():
        cache = BlobCache(tmp_path / name / "blobs")
        with pytest.raises(BundleError, match=message):
            read_bundle(raw_bundle(tmp_path / name / "b.tar", members), cache, public(key))
        assert not (tmp_path / "x").exists() and not (tmp_path / name / "x").exists()
    # A member larger than the manifest says is cut at the stated size; the hash decides.
    big = raw_bundle(tmp_path / "big.tar", [*head, (blobs[0][0], files["model.onnx"] + b"junk"), blobs[1]])
    cache = BlobCache(tmp_path / "big" / "blobs")
    read_bundle(big, cache, public(key))
    assert cache.path(sha(files["model.onnx"])).read_bytes() == files["model.onnx"]
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(BundleError, match="not a readable bundle"):
        read_bundle(garbage, cache, public(key))


def test_write_bundle_refuses_blobs_the_manifest_does_not_name(tmp_path: Path, key) -> None:
    files = {"model.onnx": b"weights"}
    body, sig = sign(make_manifest(files, 7), key)
    other = tmp_path / "other"
    other.write_bytes(b"other")
    with pytest.raises(BundleError, match="not named by the manifest"):
        write_bundle(io.BytesIO(), body, sig, [(sha(b"other"), other)])
    wrong_size = tmp_path / "short"
    wrong_size.write_bytes(b"weight")
    with pytest.raises(BundleError, match="6 bytes; the manifest says 7"):
        write_bundle(io.BytesIO(), body, sig, [(sha(b"weights"), wrong_size)])


# --- the highest accepted release --------------------------------------------------------------

def test_the_highest_accepted_release_survives_a_restart_and_never_goes_down(tmp_path: Path) -> None:
    from agent.delivery.accepted import AcceptedRelease

    accepted = AcceptedRelease(tmp_path)
    assert accepted.floor(active_release=3) == 3  # no record yet: the active slot's release
    accepted.record(7, b"manifest seven")
    accepted.record(5, b"manifest five")  # lower: ignored
    again = AcceptedRelease(tmp_path)  # as after a restart
    assert again.release == 7 and again.floor(active_release=3) == 7
    assert again.is_accepted(7, b"manifest seven") and not again.is_accepted(7, b"another seven")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed

    (tmp_path / "accepted.json").write_text("{damaged")
    assert AcceptedRelease(tmp_path).floor(active_release=4) == 4  # logged; the slot's release holds
