"""finetune on a real pretrained model by reference: SmolLM2-135M-Instruct registered in a local
registry and tuned with LoRA on chat rows through `slmops run --local`'s runner; an hf: id with
no network fails with one line naming the id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from controller.pipeline.events import ListEvents
from controller.pipeline.jsonl import write_jsonl

REPO = Path(__file__).resolve().parents[1]

CHATS = [
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello.", "weight": 0},
                  {"role": "user", "content": "Your name?"}, {"role": "assistant", "content": "SmolLM."}]},
    {"prompt": "Two plus two?", "answer": "Four."},
    {"messages": [{"role": "user", "content": "Color of the sky?"},
                  {"role": "assistant", "content": "Blue."}]},
]
TRAINED = ["Paris.", "SmolLM.", "Four.", "Blue."]  # the assistant turns with weight 1

RECIPE = """\
name: smollm2-chat
steps:
  - id: tuned
    uses: finetune
    with:
      model: {model}
      data: data/chat.jsonl
      method: lora
      lora: {{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
      training: {{max_steps: 2, batch_size: 2, max_length: 96, log_every: 1, learning_rate: 0.001}}
  - id: register
    uses: register
    with:
      models: {{smollm2-chat: "${{tuned.adapter}}"}}
"""


def write_recipe(root: Path, model: str) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "data" / "chat.jsonl", CHATS)
    (root / "recipe.yaml").write_text(RECIPE.format(model=model))
    return root / "recipe.yaml"


def test_lora_on_a_registered_smollm2_trains_on_assistant_tokens_and_registers_the_adapter(
        smollm2_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from controller.pipeline.local import run_local
    from controller.registry import ModelRegistry

    torch.set_num_threads(2)
    data_dir = tmp_path / "data-dir"
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    (base,) = registry.register([{"name": "smollm2", "kind": "base", "path": str(smollm2_dir)}])
    base_path = registry.path(base)
    registry.close()

    events = ListEvents()
    (record,) = run_local(write_recipe(tmp_path / "recipes", "registry:smollm2"), data_dir,
                          tmp_path / "work", events)

    assert (record.name, record.version, record.kind) == ("smollm2-chat", 1, "adapter")
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    adapter = registry.path(registry.get("smollm2-chat:1"))
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_path) and config["r"] == 4
    assert record.lineage["base"] == {"ref": "registry:smollm2"}

    # One epoch of 4 rows at batch 2: every trained assistant turn once, and nothing else.
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    expected = sum(len(tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"]) for t in TRAINED)
    done = json.loads((tmp_path / "work" / "steps" / "tuned" / "done.json").read_text())
    assert done["info"]["train"]["trained_tokens"] == expected
    assert done["info"]["train"]["steps"] == 2 and done["info"]["train"]["examples"] == 4
    logs = [e["message"] for e in events.items if e["type"] == "log"]
    assert f"tuned/train: 4 example(s), {expected} assistant token(s) carry the loss; {expected} over 2 " \
           "step(s)" in logs
    losses = [e["loss"] for e in events.items if e["type"] == "progress" and e.get("task") == "tuned/train"]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)


def test_an_hf_id_without_network_fails_in_one_line_naming_the_id(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "hf:slmops-test/no-such-model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network, without a minute of DNS retries
    slmops = str(Path(sys.executable).parent / "slmops")
    done = subprocess.run([slmops, "run", str(recipe), "--local",
                           "--data-dir", str(tmp_path / "d"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "slmops-test/no-such-model" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert "step 'tuned' (finetune) failed: could not load 'slmops-test/no-such-model' from the Hugging " \
           "Face hub: " in lines[0]
    assert "does not exist" not in lines[0] and "model path" not in lines[0]
