"""Device profiles without building anything: the built-in set, custom profiles from YAML (every
bad field named), matching a hardware report, the gates, the build step's parameters, the
registry's variant rows, and `slmops profiles list --file`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.build import (
    ProfileError,
    builtin_profiles,
    load_profiles,
    match,
    match_profile,
    parse_profiles,
)
from controller.build.gates import apply_gates
from controller.build.profiles import DEFAULT_GENERIC, GB, MB, Gates
from controller.cli.main import cli
from controller.pipeline.recipe import RecipeError, parse_recipe
from controller.registry import Invalid, ModelRegistry, NotDeployable, NotFound

BUILTIN_NAMES = ["cuda-fp16", "cuda-int4", "cpu-x86-avx512-int4", "cpu-x86-avx2-int8", "cpu-arm64-int8",
                 "cpu-fp32"]

CUSTOM = """
profiles:
  - name: pi5-int4
    description: Raspberry Pi 5
    match: {arch: [aarch64], isa_flags: [neon, dotprod], min_memory_mb: 4096}
    build: {precision: int4, provider: cpu, block_size: 64, accuracy_level: 4}
    gates: {max_accuracy_drop: 3, min_tokens_per_s: 4, max_memory_mb: 1024, max_p95_ms: 250}
  - name: cpu-fp32
    gates: {min_tokens_per_s: 0.5}
"""


# -- the built-in set ----------------------------------------------------------------------------

def test_builtin_profiles_cover_the_issue_s_hardware_with_their_build_and_gates() -> None:
    profiles = builtin_profiles()
    assert profiles.names == BUILTIN_NAMES
    avx512 = profiles.get("cpu-x86-avx512-int4")
    assert (avx512.match.arch, avx512.match.isa_flags) == (("x86_64", "amd64"), ("avx512_vnni",))
    assert (avx512.build.precision, avx512.build.provider, avx512.build.block_size,
            avx512.build.accuracy_level) == ("int4", "cpu", 128, 4)
    drops = {p.name: p.gates.max_accuracy_drop for p in profiles}
    assert drops == {"cuda-fp16": 0.5, "cuda-int4": 2.0, "cpu-x86-avx512-int4": 2.0, "cpu-x86-avx2-int8": 1.0,
                     "cpu-arm64-int8": 1.0, "cpu-fp32": 0.5}
    assert all(p.gates.min_tokens_per_s > 0 and p.gates.max_memory_bytes >= GB for p in profiles)
    assert profiles.get("cpu-x86-avx2-int8").build.int8_scheme == "avx2"
    assert profiles.get("cpu-arm64-int8").build.int8_scheme == "arm64"


def test_an_unknown_profile_name_suggests_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean cpu-fp32"):
        builtin_profiles().get("cpu-fp23")
    with pytest.raises(ProfileError, match=r"profiles\[1\]: cpu-fp32 is listed twice"):
        builtin_profiles().select(["cpu-fp32", "cpu-fp32"])


# -- custom profiles -------------------------------------------------------------------------------

def test_custom_profiles_come_first_and_a_builtin_name_retunes_only_what_is_written(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    profiles = load_profiles(path)
    assert profiles.names == ["pi5-int4", *BUILTIN_NAMES]
    pi5 = profiles.get("pi5-int4")
    assert pi5.source == str(path) and pi5.match.min_memory_bytes == 4096 * MB
    assert (pi5.build.precision, pi5.build.block_size) == ("int4", 64)
    assert pi5.gates == Gates(3.0, 4.0, 1024 * MB, 250.0, *DEFAULT_GENERIC["int4"])  # unwritten: int4's
    fp32 = profiles.get("cpu-fp32")
    builtin = builtin_profiles().get("cpu-fp32")
    assert fp32.gates.min_tokens_per_s == 0.5 and fp32.source == str(path)
    assert (fp32.match, fp32.build, fp32.gates.max_accuracy_drop) == (builtin.match, builtin.build,
                                                                        builtin.gates.max_accuracy_drop)


def _profile(**sections: object) -> str:
    body = {"name": "edge", "match": {}, "build": {"precision": "int4"}, **sections}
    return json.dumps({"profiles": [body]})  # JSON is YAML


@pytest.mark.parametrize(("text", "message"), [
    (_profile(build={"precision": "int3"}),
     "profiles[0].build.precision: 'int3' is not a precision; use one of int4, int8, fp16, fp32"),
    (_profile(build={"precision": "int4", "provider": "tpu"}),
     "profiles[0].build.provider: 'tpu' is not an execution provider"),
    (_profile(build={"precision": "int8", "provider": "cuda"}),
     "profiles[0].build.provider: int8 variants are built with onnxruntime's dynamic quantization"),
    (_profile(build={"precision": "fp16", "provider": "cpu"}),
     "profiles[0].build.precision: fp16 is built for the cuda provider only"),
    (_profile(build={"precision": "int4", "block_size": 48}),
     "profiles[0].build.block_size: 48 is not one of"),
    (_profile(build={"precision": "int4", "accuracy_level": 7}), "profiles[0].build.accuracy_level: 7"),
    (_profile(build={"precision": "int8", "int8_scheme": "sse"}), "profiles[0].build.int8_scheme: 'sse'"),
    (_profile(build={"precison": "int4"}),
     "profiles[0].build.precison: unknown field; did you mean precision?"),
    (_profile(gates={"max_accuracy_drop": -1}), "profiles[0].gates.max_accuracy_drop: -1 must be between"),
    (_profile(gates={"min_tokens_per_s": "fast"}), "profiles[0].gates.min_tokens_per_s: expected a number"),
    (_profile(match={"accelerator": "tpu"}), "profiles[0].match.accelerator: 'tpu' is not one of"),
    (_profile(match={"isa_flags": [1]}), "profiles[0].match.isa_flags: expected a list of names"),
    (_profile(name="Edge Box"), "profiles[0].name: expected 1-63 lowercase letters"),
    (json.dumps({"profiles": [{"name": "edge", "build": {"precision": "int4"}}]}),
     "profiles[0].match: required for a new profile"),
    (json.dumps({"profiles": [{"name": "a", "match": {}, "build": {"precision": "fp32"}}] * 2}),
     "profiles[1].name: 'a' is defined twice (also profiles[0])"),
    (json.dumps({"profile": []}), "profile: unknown field; did you mean profiles?"),
    ("profiles: [a, b", "malformed YAML: line 1"),
], ids=["precision", "provider", "int8-cuda", "fp16-cpu", "block-size", "accuracy-level", "int8-scheme",
        "typo", "negative-drop", "speed-text", "accelerator", "isa-flags", "name", "new-without-match",
        "duplicate", "top-typo", "malformed"])
def test_a_bad_profiles_file_is_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profiles(text, "custom.yaml")
    assert f"custom.yaml: {message}" in str(caught.value), str(caught.value)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = json.dumps({"profiles": [
        {"name": "a", "match": {}, "build": {"precision": "int3"}},
        {"name": "b", "match": {}, "build": {"precision": "int4", "provider": "npu"}}]})
    with pytest.raises(ProfileError) as caught:
        parse_profiles(text, "x.yaml")
    assert [p.split(":")[0] for p in caught.value.problems] == ["profiles[0].build.precision",
                                                                  "profiles[1].build.provider"]


def test_a_missing_profiles_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="nope.yaml: no such file"):
        load_profiles(tmp_path / "nope.yaml")


# -- matching ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("hardware", "expected"), [
    ({"arch": "x86_64", "isaFlags": ["avx2", "avx512_vnni"]}, "cpu-x86-avx512-int4"),
    ({"arch": "x86_64", "isa_flags": ["avx2"]}, "cpu-x86-avx2-int8"),
    ({"arch": "AMD64", "isaFlags": ["avx2"]}, "cpu-x86-avx2-int8"),
    ({"arch": "x86_64", "isaFlags": ["sse4_2"]}, "cpu-fp32"),
    ({"arch": "aarch64", "isaFlags": ["neon"]}, "cpu-arm64-int8"),
    ({"arch": "riscv64"}, "cpu-fp32"),
    ({}, "cpu-fp32"),
    ({"arch": "x86_64", "accelerators": [{"kind": "cuda", "memoryBytes": str(24 * GB)}]}, "cuda-fp16"),
    ({"arch": "aarch64", "accelerators": [{"kind": "cuda", "memory_bytes": 4 * GB}]}, "cuda-int4"),
    ({"arch": "x86_64", "isaFlags": ["avx2"], "accelerators": [{"kind": "rocm"}]}, "cpu-x86-avx2-int8"),
], ids=["avx512-vnni", "avx2-snake-case", "amd64", "old-x86", "arm64", "riscv", "empty", "big-gpu",
        "jetson", "other-accelerator"])
def test_a_hardware_report_matches_the_first_fitting_builtin_profile(hardware: dict, expected: str) -> None:
    assert match_profile(hardware) == expected


def test_custom_profiles_match_before_the_builtins_and_can_need_memory() -> None:
    profiles = parse_profiles(CUSTOM, "custom.yaml")
    pi = {"arch": "aarch64", "isaFlags": ["neon", "dotprod"], "memoryTotalBytes": str(8 * GB)}
    assert match(pi, profiles).name == "pi5-int4"
    assert match({**pi, "memoryTotalBytes": str(2 * GB)}, profiles).name == "cpu-arm64-int8"
    assert match({**pi, "isaFlags": ["neon"]}, profiles).name == "cpu-arm64-int8"


def test_the_old_import_path_still_matches() -> None:
    from controller.profiles import match_profile as old

    assert old({"arch": "x86_64", "isaFlags": ["avx2"]}) == "cpu-x86-avx2-int8"


# -- gates ---------------------------------------------------------------------------------------

def _metrics(**over: object) -> dict:
    return {"exact_match": 0.9, "reference_exact_match": 0.92, "exact_match_delta": -2.0,
            "tokens_per_s": 50.0, "peak_memory_bytes": 200 * MB, "measured_on_target": True,
            "latency_ms": {"p50": 80.0, "p95": 120.0}, **over}


def test_gates_pass_within_every_limit() -> None:
    result = apply_gates(Gates(2.0, 10.0, GB, 150.0), _metrics(), "int4")
    assert (result.status, result.reason) == ("passed", "")


def test_gates_fail_with_every_reason() -> None:
    result = apply_gates(Gates(1.0, 100.0, 100 * MB, 100.0), _metrics(), "int8")
    assert result.status == "failed"
    assert "p95 latency 120 ms is above the maximum of 100 ms" in result.reason
    assert "exact match dropped 2.00 points" in result.reason and "int8 allows at most 1" in result.reason
    assert "50.0 tokens/s is below the minimum of 100" in result.reason
    assert "peak memory 200 MiB is above the maximum of 100 MiB" in result.reason


def test_speed_and_memory_gates_are_skipped_when_measured_on_other_hardware() -> None:
    result = apply_gates(Gates(2.0, 1e9, MB), _metrics(measured_on_target=False), "int4")
    assert result.status == "passed" and "not applied" in result.notes[0]


# -- the build step's parameters -------------------------------------------------------------------

def _recipe(with_: dict) -> str:
    return json.dumps({"name": "b", "steps": [{"id": "build", "uses": "build",
                                                "with": {"model": "registry:m:1", **with_}}]})


@pytest.mark.parametrize(("with_", "message"), [
    ({"profiles": ["cpu-fp23"]},
     "steps[0].with.profiles[0]: unknown device profile 'cpu-fp23'; did you mean"),
    ({"profiles": []}, "steps[0].with.profiles: name at least one profile"),
    ({"profiles": ["edge"],
      "custom_profiles": [{"name": "edge", "match": {}, "build": {"precision": "int2"}}]},
     "steps[0].with.custom_profiles[0].build.precision: 'int2' is not a precision"),
    ({"profiles": ["cpu-fp32"], "gates": {"min_tokens_per_s": -1}}, "steps[0].with.gates.min_tokens_per_s"),
])
def test_the_build_step_refuses_bad_profiles_by_field(with_: dict, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_recipe(with_), "r.yaml")
    assert message in str(caught.value), str(caught.value)


def test_the_build_step_accepts_a_custom_profile_given_inline() -> None:
    custom = {"name": "edge", "match": {}, "build": {"precision": "int8", "int8_scheme": "arm64"}}
    recipe = parse_recipe(_recipe({"profiles": ["edge", "cpu-fp32"], "custom_profiles": [custom]}), "r.yaml")
    assert recipe.steps[0].params.profiles == ["edge", "cpu-fp32"]


# -- the registry's variant rows (hand-made directories) --------------------------------------------

@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path / "models")
    model = tmp_path / "src" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    reg.register([{"name": "m", "kind": "base", "path": str(model)}])
    yield reg
    reg.close()


def _variant_dir(root: Path, name: str, content: str = "graph") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.onnx").write_text(content)
    (d / "slmops-variant.json").write_text(json.dumps({"profile": "x", "build": {"tool": "t"}}))
    return d


def _entry(path: Path, profile: str, status: str = "passed", reason: str = "") -> dict:
    return {"path": str(path), "profile": profile, "precision": "int4", "provider": "cpu",
            "runtime": "onnxruntime-genai", "status": status, "reason": reason,
            "metrics": {"exact_match": 0.5, "exact_match_delta": -1.0}, "build": {"tool": "t"}}


def test_variants_are_stored_per_profile_and_only_a_passed_one_is_deployable(registry: ModelRegistry,
                                                                              tmp_path: Path) -> None:
    ok, bad = _variant_dir(tmp_path, "ok"), _variant_dir(tmp_path, "bad")
    stored = registry.add_variants("m:1", [_entry(ok, "cpu-x86-avx512-int4"),
                                           _entry(bad, "cpu-fp32", "failed", "too slow")], job_id="j-1")
    assert [(v.profile, v.status) for v in stored] == [("cpu-x86-avx512-int4", "passed"),
                                                       ("cpu-fp32", "failed")]
    passed = registry.deployable_variant("m", "cpu-x86-avx512-int4")
    where = registry.variant_path(passed)
    assert where == registry.models_root / ".variants" / "m" / "1" / "cpu-x86-avx512-int4"
    meta = json.loads((where / "slmops-variant.json").read_text())
    assert (meta["model"], meta["profile"], meta["gate"]["status"]) == ("m:1", "cpu-x86-avx512-int4",
                                                                        "passed")
    with pytest.raises(NotDeployable, match=r"failed its gates \(too slow\)"):
        registry.deployable_variant("m:1", "cpu-fp32")
    with pytest.raises(NotDeployable, match="no variant for profile 'cuda-fp16'"):
        registry.deployable_variant("m:1", "cuda-fp16")
    assert [v.profile for v in registry.variants("m:1")] == ["cpu-fp32", "cpu-x86-avx512-int4"]
    assert registry.add_variants("m:1", [_entry(ok, "cpu-x86-avx512-int4")], job_id="j-1") == stored


def test_building_a_profile_again_replaces_its_variant(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add_variants("m:1", [_entry(_variant_dir(tmp_path, "a", "old"), "cpu-fp32", "failed", "slow")])
    registry.add_variants("m:1", [_entry(_variant_dir(tmp_path, "b", "new"), "cpu-fp32")])
    (variant,) = registry.variants("m:1")
    assert variant.status == "passed"
    assert (registry.variant_path(variant) / "model.onnx").read_text() == "new"
    assert not list((registry.models_root / ".incoming").iterdir())


def test_a_variant_of_a_missing_model_stores_nothing(registry: ModelRegistry, tmp_path: Path) -> None:
    entry = {**_entry(_variant_dir(tmp_path, "v"), "cpu-fp32"), "kind": "variant",
             "model": {"registered": "m:7"}}
    with pytest.raises(Invalid, match=r"entries\[0\].model: no model m:7"):
        registry.register([entry])
    assert not (registry.models_root / ".variants").exists()
    with pytest.raises(NotFound):
        registry.add_variants("nobody:1", [_entry(tmp_path / "v", "cpu-fp32")])


def test_a_variant_entry_links_to_a_model_registered_with_it(registry: ModelRegistry, tmp_path: Path) -> None:
    model = tmp_path / "src" / "model"
    entry = {**_entry(_variant_dir(tmp_path, "v"), "cpu-fp32"), "kind": "variant", "model": {"entry": "new"}}
    (record,) = registry.register([{"name": "new", "kind": "distilled", "path": str(model)}, entry])
    assert record.ref == "new:1" and registry.deployable_variant("new:1", "cpu-fp32").model_ref == "new:1"


@pytest.mark.parametrize(("change", "message"), [
    ({"status": "maybe"}, "entries[0].status: expected one of passed, failed"),
    ({"status": "failed", "reason": ""}, "entries[0].reason: a failed variant needs the reason"),
    ({"profile": "../x"}, "entries[0].profile: '../x' is not a profile name"),
    ({"path": "/nonexistent/variant"}, "entries[0].path: /nonexistent/variant is not a directory"),
])
def test_bad_variant_entries_are_refused_naming_the_field(registry: ModelRegistry, tmp_path: Path,
                                                          change: dict, message: str) -> None:
    entry = {**_entry(_variant_dir(tmp_path, "v"), "cpu-fp32"), **change}
    with pytest.raises(Invalid) as caught:
        registry.add_variants("m:1", [entry])
    assert message in str(caught.value)


# -- the CLI without a controller ------------------------------------------------------------------

def test_profiles_list_with_a_file_checks_it_here_and_lists_it_first(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    result = CliRunner().invoke(cli, ["profiles", "list", "--file", str(path), "--json"], obj={})
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["profiles"]
    assert [p["name"] for p in found] == ["pi5-int4", *BUILTIN_NAMES]
    assert found[0]["build"]["block_size"] == 64 and found[0]["gates"]["max_memory_mb"] == 1024
    table = CliRunner().invoke(cli, ["profiles", "list", "--file", str(path)], obj={}).stdout
    assert "pi5-int4" in table and "aarch64 neon dotprod" in table


def test_profiles_list_refuses_a_bad_file_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_profile(build={"precision": "int4", "provider": "tpu"}))
    result = CliRunner().invoke(cli, ["profiles", "list", "--file", str(path), "--json"], obj={})
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_argument" and "profiles[0].build.provider: 'tpu'" in error["message"]


LAB_PROFILES = """profiles:
  - name: lab-x86-int4
    match: {arch: [x86_64]}
    build: {precision: int4, provider: cpu}
"""


@pytest.mark.integration
def test_controller_start_takes_a_profiles_file_and_matches_devices_with_it(tmp_path: Path) -> None:
    from procs import ProcessHarness

    procs = ProcessHarness(tmp_path)
    try:
        bad = tmp_path / "bad.yaml"
        bad.write_text(LAB_PROFILES.replace("int4", "int3"))
        result = procs.cli_result("controller", "start", "--data-dir", str(tmp_path / "c0"),
                                  "--profiles", str(bad))
        assert result.returncode == 2 and "profiles[0].build.precision" in result.stdout + result.stderr
        good = tmp_path / "custom.yaml"
        good.write_text(LAB_PROFILES)
        procs.start_controller(extra=("--profiles", str(good)))
        names = [p["name"] for p in procs.cli("profiles", "list")["profiles"]]
        assert names[0] == "lab-x86-int4" and "cpu-fp32" in names
        token = procs.create_token(uses=1)["token"]
        agent = procs.start_agent("edge-1", token=token)
        device = procs.wait_until(agent.device_id, 30, "edge-1 to enroll")
        shown = procs.cli("devices", "show", device)
        if shown["hardware"]["arch"] == "x86_64":  # the custom profile matches every x86 device
            assert shown["profile"] == "lab-x86-int4"
        else:
            assert shown["profile"] != "lab-x86-int4"
    finally:
        procs.cleanup()
