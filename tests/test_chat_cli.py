"""`slmops-agent chat --json` on a built SmolLM2 variant, and `slmops chat --json` on the
registered SmolLM2 model (transformers) and its variant (the agent's engine), as processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
QUESTION = "What is the capital of France? Answer in one word."
SYSTEM = "You answer questions about geography for a school. " * 4  # longer than SmolLM2's default


def _run(*args: str, stdin: str = "") -> tuple[int, dict]:
    done = subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=600)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_agent_chat_json_answers_and_a_system_prompt_is_in_the_prompt(smollm2_int4: Path) -> None:
    code, plain = _run(BIN / "slmops-agent", "chat", "--model", smollm2_int4, "--json", "--temperature", "0",
                       "--max-tokens", "8", stdin=QUESTION)
    assert code == 0 and "Paris" in plain["answer"], plain
    code, system = _run(BIN / "slmops-agent", "chat", "--model", smollm2_int4, "--json", "--temperature", "0",
                        "--max-tokens", "8", "--system", SYSTEM, "--message", QUESTION)
    assert code == 0 and system["answer"], system
    assert system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]


def test_agent_chat_json_fails_naming_a_missing_variant(tmp_path: Path) -> None:
    code, out = _run(BIN / "slmops-agent", "chat", "--model", tmp_path / "nope", "--json", "--message", "hi")
    assert code != 0 and "nope" in out["error"]


@pytest.fixture
def registry_dir(tmp_path: Path, smollm2_dir: Path, smollm2_int4: Path) -> Path:
    from controller.registry import ModelRegistry

    data = tmp_path / "data"
    registry = ModelRegistry(f"sqlite:///{data / 'fleet.db'}", data / "models")
    registry.register([{"name": "smollm2", "kind": "base", "path": str(smollm2_dir), "params": 134_515_008}])
    variant = {"path": str(smollm2_int4), "profile": "cpu-int4", "precision": "int4", "provider": "cpu",
               "runtime": "onnxruntime-genai", "status": "passed", "reason": ""}
    registry.add_variants("smollm2:1", [variant])
    return data


def test_slmops_chat_json_on_a_registered_model_and_on_its_variant(registry_dir: Path) -> None:
    for model in ("smollm2:1", "smollm2:1@cpu-int4"):
        code, out = _run(BIN / "slmops", "chat", model, "--data-dir", registry_dir, "--json", "--temperature",
                         "0", "--max-tokens", "8", "--message", QUESTION)
        assert code == 0 and "Paris" in out["answer"], (model, out)
        assert out["model"].startswith("smollm2:1") and out["usage"]["completion_tokens"] > 0
    code, out = _run(BIN / "slmops", "chat", "smollm2:1@gpu-fp16", "--data-dir", registry_dir, "--json",
                     "--message", "hi")
    assert code != 0 and "gpu-fp16" in out["error"]["message"]
