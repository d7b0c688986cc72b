"""A smaller student cut from a real pretrained teacher (SmolLM2-135M-Instruct): the teacher's
architecture, tokenizer and weights, with only some of its decoder layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.pipeline.events import ListEvents
from controller.pipeline.modelkit import ModelError
from controller.pipeline.modelkit.shrink import every_kth
from controller.pipeline.recipe import RecipeError, load_recipe
from controller.pipeline.runner import run_recipe


def test_every_kth_keeps_the_first_and_the_last_layer() -> None:
    assert every_kth(30, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert every_kth(30, 1) == list(range(30))
    assert every_kth(4, 2) == [0, 2, 3]
    with pytest.raises(ModelError, match="keep_every"):
        every_kth(4, 0)


def _recipe(tmp_path: Path, teacher: Path, extra: str) -> Path:
    path = tmp_path / "shrink.yaml"
    path.write_text(f"name: shrink\nsteps:\n  - id: student\n    uses: init_model\n    with:\n"
                    f"      from_teacher: {teacher}\n{extra}")
    return path


def test_init_model_cuts_a_student_from_the_teacher_with_its_weights_and_tokenizer(
        smollm2_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = load_recipe(_recipe(tmp_path, smollm2_dir, "      keep_every: 3\n"))
    events = ListEvents()
    result = run_recipe(recipe, tmp_path / "work", events, base_dir=recipe.base_dir)
    student_dir = Path(result.outputs["student"]["model"])
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 11  # 0, 3, ..., 27 and 29
    teacher_state = load_file(smollm2_dir / "model.safetensors")
    student_state = student.state_dict()
    assert torch.equal(student_state["model.layers.1.mlp.up_proj.weight"],
                       teacher_state["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(student_state["model.layers.10.self_attn.q_proj.weight"],
                       teacher_state["model.layers.29.self_attn.q_proj.weight"])
    assert torch.equal(student_state["model.embed_tokens.weight"], teacher_state["model.embed_tokens.weight"])
    params = sum(p.numel() for p in student.parameters())
    assert 55e6 < params < 70e6  # the 28 M embedding and 11 of the 30 layers
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert student.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    lineage = json.loads((student_dir / "slmops-shrink.json").read_text())
    assert lineage["kept_layers"][:3] == [0, 3, 6] and lineage["teacher_layers"] == 30


def test_layers_that_the_teacher_does_not_have_are_refused(smollm2_dir: Path, tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, smollm2_dir, "      layers: [0, 31]\n"))
    with pytest.raises(Exception, match=r"layers: \[31\] are not layers of the teacher"):
        run_recipe(recipe, tmp_path / "work", ListEvents(), base_dir=recipe.base_dir)


def test_from_teacher_with_a_tokenizer_parameter_is_refused(smollm2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="from_teacher"):
        load_recipe(_recipe(tmp_path, smollm2_dir, "      tokenizer_model: hf:acme/x\n"))
