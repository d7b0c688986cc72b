"""The model registry on a real SQLite file and real directories: all-or-nothing registration,
versions, references, evaluations, and two processes registering at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.registry import Invalid, ModelRegistry, NotFound, parse_ref


def model_dir(root: Path, name: str, content: str = "weights") -> Path:
    d = root / name
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"name": name}))
    (d / "model.safetensors").write_text(content)
    (d / "sub" / "tokenizer.json").write_text("{}")
    return d


def entry(path: Path, name: str, kind: str = "distilled", **extra: object) -> dict:
    return {"name": name, "kind": kind, "path": str(path), "params": 1234,
            "metrics": {"exact_match": 0.9}, "lineage": {"recipe": "r"}, **extra}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path / "models")
    yield reg
    reg.close()


def leftovers(registry: ModelRegistry) -> list[str]:
    """Everything under models_root except the (empty) incoming folder."""
    root = registry.models_root
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return [p for p in found if p != ".incoming"]


def test_register_copies_the_directory_and_records_it(registry: ModelRegistry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "student")
    (record,) = registry.register([entry(src, "support-student")], job_id="j-000000000001")
    assert (record.name, record.version, record.kind, record.params) == ("support-student", 1,
                                                                        "distilled", 1234)
    stored = registry.path(record)
    assert stored == registry.models_root / "support-student" / "1"
    assert (stored / "sub" / "tokenizer.json").read_text() == "{}"
    assert record.size_bytes == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert record.metrics == {"exact_match": 0.9} and record.lineage == {"recipe": "r"}
    assert registry.get("support-student:1") == record
    assert not list((registry.models_root / ".incoming").iterdir())


def test_versions_increment_per_name_and_latest_is_the_highest(registry: ModelRegistry,
                                                               tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    refs = [r.ref for _ in range(3) for r in registry.register([entry(src, "a"), entry(src, "b")])]
    assert refs == ["a:1", "b:1", "a:2", "b:2", "a:3", "b:3"]
    assert registry.get("a").version == registry.get("a:latest").version == 3
    assert registry.get("b:2").version == 2
    assert [r.ref for r in registry.list("a")] == ["a:1", "a:2", "a:3"]
    assert len({r.sha256 for r in registry.list()}) == 1  # same files, same digest


def test_registering_the_same_job_again_returns_its_versions(registry: ModelRegistry,
                                                             tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    first = registry.register([entry(src, "a")], job_id="j-0000000000aa")
    again = registry.register([entry(src, "a")], job_id="j-0000000000aa")
    assert first == again
    assert [r.ref for r in registry.list()] == ["a:1"]


def test_links_between_entries_get_the_registered_versions(registry: ModelRegistry,
                                                           tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    registry.register([entry(src, "student")])
    student, adapter = registry.register([
        entry(src, "student"),
        entry(src, "student-cs", kind="adapter",
              lineage={"base": {"ref": "${student.model}", "entry": "student"}}),
    ])
    assert adapter.lineage["base"] == {"ref": "${student.model}", "entry": "student",
                                       "registered": "student:2"}
    assert registry.get("student-cs").lineage == adapter.lineage


def _break_second(tmp_path: Path, registry: ModelRegistry, how: str) -> dict:
    second = model_dir(tmp_path / "work", "second")
    if how == "missing-dir":
        return entry(tmp_path / "work" / "nope", "second")
    if how == "symlink-inside":
        os.symlink("/etc/hostname", second / "leak")
    if how == "bad-kind":
        return entry(second, "second", kind="quantum")
    if how == "bad-params":
        return entry(second, "second", params=-1)
    if how == "rename-fails":  # a plain file where the name's folder must go: fails mid-commit
        (registry.models_root / "second").write_text("in the way")
    return entry(second, "second")


@pytest.mark.parametrize(("how", "message"), [
    ("missing-dir", "entries[1].path"),
    ("symlink-inside", "entries[1].path"),
    ("bad-kind", "entries[1].kind"),
    ("bad-params", "entries[1].params"),
    ("rename-fails", "Not a directory"),
])
def test_a_bad_second_entry_registers_nothing_and_leaves_no_directory(
        registry: ModelRegistry, tmp_path: Path, how: str, message: str) -> None:
    first = model_dir(tmp_path / "work", "first")
    second = _break_second(tmp_path, registry, how)
    with pytest.raises((Invalid, OSError)) as info:
        registry.register([entry(first, "first"), second])
    assert message in str(info.value)
    assert registry.list() == []
    assert leftovers(registry) == (["second"] if how == "rename-fails" else [])
    assert not list((registry.models_root / ".incoming").iterdir())


@pytest.mark.parametrize("name", ["Support", "../etc", "a/b", "", ".hidden", "-x", "x" * 64,
                                  "a b", "a:1"])
def test_names_are_checked_before_anything_is_copied(registry: ModelRegistry, tmp_path: Path,
                                                     name: str) -> None:
    src = model_dir(tmp_path / "work", "m")
    with pytest.raises(Invalid, match=r"entries\[0\]\.name"):
        registry.register([entry(src, name)])
    assert leftovers(registry) == []


@pytest.mark.parametrize("ref", ["a:0", "a:-1", "a:two", "a:1:2", "A:1", "", "../a"])
def test_malformed_references_are_refused_with_the_accepted_forms(ref: str) -> None:
    with pytest.raises(Invalid, match="model"):
        parse_ref(ref)


def test_unknown_models_and_versions_say_what_exists(registry: ModelRegistry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    registry.register([entry(src, "a")])
    registry.register([entry(src, "a")])
    with pytest.raises(NotFound, match=r"no model named 'b'.*slmops models list"):
        registry.get("b")
    with pytest.raises(NotFound, match=r"no version 7 \(it has 1, 2\)"):
        registry.get("a:7")


def test_evaluations_are_kept_per_version(registry: ModelRegistry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    registry.register([entry(src, "a")])
    registry.register([entry(src, "a")])
    registry.add_evaluation("a:1", "test.jsonl", {"exact_match": 0.5}, job_id="j-000000000003")
    registry.add_evaluation("a", "test.jsonl", {"exact_match": 0.75})
    assert [(e.version, e.metrics["exact_match"]) for e in registry.evaluations("a:1")] == [(1, 0.5)]
    assert [(e.version, e.eval_name) for e in registry.evaluations("a:2")] == [(2, "test.jsonl")]
    with pytest.raises(NotFound):
        registry.add_evaluation("b:1", "test.jsonl", {})


REGISTER_IN_A_PROCESS = """
import sys
from collections.abc import Iterator
from pathlib import Path
from controller.registry import ModelRegistry
reg = ModelRegistry(sys.argv[1], Path(sys.argv[2]))
for _ in range(4):
    reg.register([{"name": "shared", "kind": "base", "path": sys.argv[3]}])
"""


def test_two_processes_registering_the_same_name_get_distinct_versions(tmp_path: Path) -> None:
    src = model_dir(tmp_path / "work", "m")
    url, root = f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path / "models"
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER_IN_A_PROCESS, url, str(root), str(src)])
             for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    registry = ModelRegistry(url, root)
    assert [r.version for r in registry.list("shared")] == list(range(1, 9))
    assert sorted(p.name for p in (root / "shared").iterdir()) == sorted(map(str, range(1, 9)))
    registry.close()
