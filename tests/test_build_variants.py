"""Per-profile builds for real: a tiny trained Llama built for fp32, int8, int4 and CUDA int4 with
onnxruntime-genai's model builder, each variant checked with the agent's engine against the
PyTorch model and gated; a GPT-2 built from a config through the optimum-onnx fallback; the
recipe step; and `slmops build` through a real controller, as a job."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import variants  # tests/variants.py: the session's tiny trained model
from click.testing import CliRunner
from inproc import RunningController

from controller.build.builder import VARIANT_META, build_variant, read_meta
from controller.build.genai_builder import GENAI_ARCHITECTURES, BuildError
from controller.build.profiles import builtin_profiles, parse_profiles
from controller.build.variants import GateOverrides, build_and_check, build_model_variants
from controller.cli.main import cli
from controller.pipeline.events import ListEvents
from controller.pipeline.jsonl import write_jsonl
from controller.pipeline.local import run_local
from controller.registry import ModelRegistry, NotDeployable, NotFound, VariantRecord

ROWS, MAX_NEW_TOKENS = 8, 24
PROFILES = ["cpu-fp32", "cpu-x86-avx2-int8", "cpu-x86-avx512-int4", "cuda-int4", "must-be-fast"]
# A profile whose speed gate no variant can pass: the gate failure of this build.
MUST_BE_FAST = """
profiles:
  - name: must-be-fast
    match: {}
    build: {precision: fp32}
    gates: {min_tokens_per_s: 1000000000}
"""
METRICS = ("n", "exact_match", "per_intent", "reference_exact_match", "exact_match_delta", "greedy_agreement",
           "size_bytes", "tokens_per_s", "peak_memory_bytes", "latency_ms", "data")


@dataclass
class Built:
    registry: ModelRegistry
    ref: str
    stored: dict[str, VariantRecord]
    rows: Path
    events: ListEvents


@pytest.fixture(scope="module")
def built(tiny: variants.TinyVariants, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("build")
    registry = ModelRegistry(f"sqlite:///{root / 'fleet.db'}", root / "models")
    (record,) = registry.register([{"name": "tiny-support", "kind": "base", "path": str(tiny.model_dir)}])
    rows = root / "test.jsonl"
    write_jsonl(rows, tiny.test_rows[:ROWS])
    events = ListEvents()
    # With 8 rows one answer is 12.5 points: the accuracy gates are relaxed here, and tested on
    # their own (test_build_profiles) and through must-be-fast's speed gate below.
    stored = build_model_variants(registry, record.ref, PROFILES, rows, events,
                                  profile_set=parse_profiles(MUST_BE_FAST, "must-be-fast.yaml"),
                                  max_new_tokens=MAX_NEW_TOKENS, threads=1,
                                  gates=GateOverrides(max_accuracy_drop=100))
    yield Built(registry, record.ref, {v.profile: v for v in stored}, rows, events)
    registry.close()


def test_every_profile_is_built_checked_and_stored_with_its_metrics(built: Built) -> None:
    assert sorted(built.stored) == sorted(PROFILES)
    assert [v.profile for v in built.registry.variants(built.ref)] == sorted(PROFILES)
    for v in built.stored.values():
        m = v.metrics
        assert all(key in m for key in METRICS), (v.profile, sorted(m))
        assert m["n"] == ROWS and 0.0 <= m["greedy_agreement"] <= 1.0
        assert m["exact_match_delta"] == pytest.approx((m["exact_match"] - m["reference_exact_match"]) * 100)
        assert 0 < m["size_bytes"] < v.size_bytes  # the stored size counts slmops-variant.json too
        assert m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0
        assert (v.runtime, v.job_id) == ("onnxruntime-genai", "")
    precisions = {p: built.stored[p].precision for p in PROFILES}
    assert precisions == {"cpu-fp32": "fp32", "cpu-x86-avx2-int8": "int8", "cpu-x86-avx512-int4": "int4",
                          "cuda-int4": "int4", "must-be-fast": "fp32"}


def test_the_fp32_variant_answers_as_the_pytorch_model_does(built: Built) -> None:
    fp32 = built.stored["cpu-fp32"].metrics
    assert fp32["greedy_agreement"] == 1.0
    assert fp32["exact_match"] == fp32["reference_exact_match"]


def test_quantized_variants_are_smaller_than_fp32(built: Built) -> None:
    size = {p: v.size_bytes for p, v in built.stored.items()}
    assert size["cpu-x86-avx512-int4"] < size["cpu-fp32"] and size["cpu-x86-avx2-int8"] < size["cpu-fp32"]


def test_each_variant_dir_carries_its_metadata(built: Built) -> None:
    variant = built.stored["cpu-x86-avx512-int4"]
    meta = read_meta(built.registry.variant_path(variant))
    assert (meta["model"], meta["profile"], meta["precision"], meta["runtime"]) == (
        "tiny-support:1", "cpu-x86-avx512-int4", "int4", "onnxruntime-genai")
    assert meta["build"]["tool"].startswith("onnxruntime-genai ")
    # the profile's block (128) is wider than the tiny model (hidden 32): fitted to its widths
    assert meta["build"]["options"]["int4_block_size"] == "16"
    assert meta["build"]["block_size_fitted"].startswith("16 (the profile asks 128")
    assert meta["build"]["options"]["int4_accuracy_level"] == "4"
    assert meta["gate"]["status"] == "passed" and meta["metrics"]["n"] == ROWS
    int8 = read_meta(built.registry.variant_path(built.stored["cpu-x86-avx2-int8"]))
    assert int8["build"]["quantization"]["preset"] == "AutoQuantizationConfig.avx2(is_static=False)"


def test_a_stored_variant_loads_in_the_agents_engine(built: Built) -> None:
    from agent.engine import Engine, SamplingParams

    variant = built.registry.deployable_variant(built.ref, "cpu-fp32")
    engine = Engine.load(built.registry.variant_path(variant), threads=1)
    try:
        prompt = engine.chat_prompt([{"role": "user", "content": "Where is order 12345?"}])
        assert engine.complete(prompt, SamplingParams(max_tokens=8)).completion_tokens > 0
    finally:
        engine.close()


def test_a_cuda_variant_is_built_here_and_checked_on_the_cpu_with_a_note(built: Built) -> None:
    cuda = built.stored["cuda-int4"]
    assert cuda.status == "passed" and cuda.metrics["measured_on_target"] is False
    assert "checked on the CPU" in cuda.metrics["notes"][0]
    assert "not applied" in cuda.build["gate_notes"][0]
    config = json.loads((built.registry.variant_path(cuda) / "genai_config.json").read_text())
    assert "cuda" in json.dumps(config["model"]["decoder"]["session_options"]["provider_options"])


def test_a_gate_failure_is_stored_as_failed_with_its_reason_and_is_not_deployable(built: Built) -> None:
    failed = built.stored["must-be-fast"]
    assert failed.status == "failed" and "tokens/s is below the minimum of 1e+09" in failed.reason
    assert (built.registry.variant_path(failed) / "model.onnx").is_file()  # kept, for a look
    with pytest.raises(NotDeployable, match="failed its gates"):
        built.registry.deployable_variant(built.ref, "must-be-fast")
    assert built.registry.deployable_variant(built.ref, "cpu-fp32").status == "passed"


def test_progress_and_the_outcome_of_each_profile_are_reported(built: Built) -> None:
    logs = [e["message"] for e in built.events.items if e["type"] == "log"]
    assert any(m.startswith("must-be-fast: failed (") for m in logs)
    assert any(m.startswith("cpu-fp32: passed;") for m in logs)
    tasks = {e["task"] for e in built.events.items if e["type"] == "progress"}
    assert {"profiles", "check", "reference"} <= tasks


@pytest.mark.parametrize("case", ["missing", "no-config", "adapter"])
def test_a_model_dir_that_cannot_be_built_gives_a_clear_error(tmp_path: Path, case: str) -> None:
    model = tmp_path / "model"
    if case != "missing":
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"0")
    if case == "adapter":
        (model / "adapter_config.json").write_text("{}")
    expected = {"missing": f"model directory {model} does not exist",
                "no-config": f"{model} has no config.json; expected a Hugging Face model directory",
                "adapter": "is a LoRA adapter; give its base model to build it"}[case]
    with pytest.raises(BuildError, match=re.escape(expected)):
        build_variant(model, builtin_profiles().get("cpu-fp32"), tmp_path / "out", scratch=tmp_path / "s")
    assert not (tmp_path / "out").exists()


def test_building_an_unknown_model_or_profile_is_refused(built: Built) -> None:
    with pytest.raises(NotFound, match="no model named 'nobody'"):
        build_model_variants(built.registry, "nobody:1", ["cpu-fp32"], None)
    with pytest.raises(KeyError, match="unknown device profile 'cpu-fp23'"):
        build_model_variants(built.registry, built.ref, ["cpu-fp23"], None)


def test_the_genai_architecture_list_matches_the_installed_builder() -> None:
    import onnxruntime_genai.models.builder as builder

    source = Path(builder.__file__).read_text()
    known = set(re.findall(r'architectures\[0\] == "(\w+)"', source))
    multimodal = {"Gemma3ForConditionalGeneration", "Phi3VForCausalLM", "Phi4MMForCausalLM",
                  "Qwen2_5_VLForConditionalGeneration"}  # the builder makes their text part only
    assert known - multimodal == set(GENAI_ARCHITECTURES)


# -- the fallback route ------------------------------------------------------------------------------

def _gpt2(root: Path, tokenizer_from: Path) -> Path:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    out = root / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_an_architecture_the_genai_builder_lacks_is_exported_with_optimum(tiny: variants.TinyVariants,
                                                                          tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = _gpt2(tmp_path, tiny.model_dir)
    chosen = [builtin_profiles().get(n) for n in ("cpu-fp32", "cpu-x86-avx512-int4", "cpu-arm64-int8")]
    outcomes = build_and_check(model, chosen, tiny.test_rows[:4], tmp_path / "work", model_label="gpt2",
                               max_new_tokens=8, threads=1, gates=GateOverrides(max_accuracy_drop=100))
    for outcome in outcomes:
        files = {p.name for p in outcome.dir.iterdir()}
        assert {"model.onnx", "tokenizer.json", VARIANT_META} <= files and "genai_config.json" not in files
        assert outcome.runtime == "onnxruntime" and read_meta(outcome.dir)["runtime"] == "onnxruntime"
        assert outcome.build["route"] == "optimum-onnx" and outcome.metrics["tokens_per_s"] > 0
    fp32, int4, int8 = outcomes
    assert fp32.metrics["greedy_agreement"] == 1.0  # the same weights, argmax for argmax
    assert int4.build["quantization"]["quantizer"] == "onnxruntime MatMulNBitsQuantizer"
    assert int8.build["quantization"]["preset"] == "AutoQuantizationConfig.arm64(is_static=False)"
    assert int8.metrics["size_bytes"] < fp32.metrics["size_bytes"]


# -- the recipe step, and the CLI through a controller ---------------------------------------------

def test_a_recipe_build_step_stores_its_variants_when_the_run_succeeds(tiny: variants.TinyVariants,
                                                                      tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    (record,) = registry.register([{"name": "tiny-support", "kind": "base", "path": str(tiny.model_dir)}])
    write_jsonl(tmp_path / "test.jsonl", tiny.test_rows[:4])
    recipe = tmp_path / "build.yaml"
    recipe.write_text(f"""
name: build-tiny
steps:
  - id: build
    uses: build
    with:
      model: registry:{record.ref}
      profiles: [cpu-fp32]
      data: test.jsonl
      max_new_tokens: 8
      threads: 1
""")
    assert run_local(recipe, data_dir, tmp_path / "work", ListEvents()) == []
    (variant,) = registry.variants(record.ref)
    assert (variant.profile, variant.status, variant.metrics["n"]) == ("cpu-fp32", "passed", 4)
    assert variant.job_id.startswith("local-")
    report = json.loads((tmp_path / "work" / "steps" / "build" / "variants.json").read_text())
    assert report["model"] == record.ref and report["variants"][0]["profile"] == "cpu-fp32"
    registry.close()


@pytest.fixture
def env(ctl: RunningController, tiny: variants.TinyVariants, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    registry: ModelRegistry = ctl.controller.registry
    registry.register([{"name": "tiny-support", "kind": "base", "path": str(tiny.model_dir)}])
    write_jsonl(tmp_path / "test.jsonl", tiny.test_rows[:4])
    yield Path(ctl.endpoints.config_path), tmp_path / "test.jsonl"


def _invoke(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], obj={})
    return result.exit_code, result.stdout


def test_build_runs_as_a_job_and_models_show_prints_the_variants(env: tuple[Path, Path]) -> None:
    config, data = env
    code, out = _invoke(config, "build", "tiny-support:1", "--profiles", "cpu-fp32", "--data", str(data),
                        "--threads", "1", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["model"] == "tiny-support:1" and report["job"].startswith("j-")
    (variant,) = report["variants"]
    assert (variant["profile"], variant["status"], variant["deployable"]) == ("cpu-fp32", "passed", True)
    assert variant["metrics"]["n"] == 4 and variant["metrics"]["greedy_agreement"] == 1.0

    code, out = _invoke(config, "models", "show", "tiny-support:1", "--json")
    assert [v["profile"] for v in json.loads(out)["variants"]] == ["cpu-fp32"]
    code, out = _invoke(config, "models", "show", "tiny-support:1")
    assert "variants of tiny-support:1" in out and "cpu-fp32" in out and "passed" in out
    code, out = _invoke(config, "jobs", "show", report["job"], "--json")
    assert json.loads(out)["kind"] == "build" and json.loads(out)["target"] == "tiny-support:1"


def test_profiles_list_asks_the_controller(env: tuple[Path, Path]) -> None:
    code, out = _invoke(env[0], "profiles", "list", "--json")
    assert code == 0, out
    found = json.loads(out)["profiles"]
    assert [p["name"] for p in found] == builtin_profiles().names
    assert found[2]["build"] == {"precision": "int4", "provider": "cpu", "block_size": 128,
                                 "accuracy_level": 4, "int8_scheme": ""}


@pytest.mark.parametrize(("args", "exit_code", "message"), [
    (("--profiles", "cpu-fp23"), 1, "profiles[0]: unknown device profile 'cpu-fp23'; did you mean cpu-fp32?"),
    (("--profiles", ","), 2, "--profiles: name at least one profile"),
    (("--profiles", "cpu-fp32", "--data", "{bad}"), 2, "bad.jsonl:1: field 'answer' is missing"),
    (("--profiles", "cpu-fp32", "--min-tokens-per-s", "-1"), 2, "--min-tokens-per-s: -1.0 must be >= 0"),
], ids=["unknown-profile", "no-profile", "bad-data", "negative-gate"])
def test_bad_build_requests_are_refused_and_make_no_job(env: tuple[Path, Path], tmp_path: Path,
                                                        args: tuple[str, ...], exit_code: int,
                                                        message: str) -> None:
    config, data = env
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"intent": "x", "prompt": "p"}\n')
    argv = [str(bad) if a == "{bad}" else a for a in args]
    code, out = _invoke(config, "build", "tiny-support:1", *argv, "--json")
    assert code == exit_code, out
    assert message in json.loads(out)["error"]["message"]
    assert json.loads(_invoke(config, "jobs", "list", "--json")[1])["jobs"] == []


def test_build_of_an_unknown_model_is_not_found(env: tuple[Path, Path]) -> None:
    code, out = _invoke(env[0], "build", "nobody:1", "--profiles", "cpu-fp32", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "not_found"


def test_build_local_stores_in_the_local_registry(tiny: variants.TinyVariants, tmp_path: Path) -> None:
    data_dir = tmp_path / "local"
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    shutil.copytree(tiny.model_dir, tmp_path / "model")
    registry.register([{"name": "tiny-support", "kind": "base", "path": str(tmp_path / "model")}])
    registry.close()
    write_jsonl(tmp_path / "t.jsonl", tiny.test_rows[:3])
    code, out = _invoke(tmp_path / "unused.json", "build", "tiny-support", "--profiles", "cpu-fp32",
                        "--local", "--data-dir", str(data_dir), "--data", str(tmp_path / "t.jsonl"),
                        "--threads", "1", "--json")
    assert code == 0, out
    assert [v["profile"] for v in json.loads(out)["variants"]] == ["cpu-fp32"]
