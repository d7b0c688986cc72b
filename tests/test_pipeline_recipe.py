"""Recipes: every mistake is caught at load, before anything runs, with the field it concerns."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.pipeline.recipe import RecipeError, file_refs, load_recipe, registry_refs
from controller.pipeline.steps import STEPS
from controller.pipeline.steps.distill import DistillParams
from controller.pipeline.steps.finetune import FinetuneParams

REPO = Path(__file__).resolve().parent.parent

# A valid recipe; each bad case below changes one thing in it.
GOOD = """\
name: unit
seed: 1
steps:
  - id: data
    uses: generate_task
    with: {train: 10, test: 5}
  - id: base
    uses: init_model
    with:
      size: tiny
      tokenizer_from: ${data.train}
  - id: teacher
    uses: finetune
    with:
      model: ${base.model}
      data: ${data.train}
      training: {max_steps: 3, learning_rate: 3e-3}
  - id: tuned
    uses: finetune
    with:
      model: ${teacher.model}
      data: ${data.new_intent_train}
      method: lora
      lora: {r: 4}
  - id: student
    uses: distill
    with:
      teacher: {kind: local, model: "${teacher.model}"}
      student: {size: tiny}
      prompts: ${data.distill_prompts}
  - id: eval
    uses: evaluate
    with:
      models: ["${teacher.model}", "${tuned.adapter}"]
      data: ${data.test_all}
"""


def bad(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("text, expected", [
    (bad("uses: distill", "uses: distil"),
     "steps[4].uses: unknown step 'distil'; did you mean distill? known: build, distill, evaluate, finetune, "
     "generate_task, import_model, init_model, register"),
    (bad("{max_steps: 3, learning_rate: 3e-3}", "{max_steps: 3, learning_rat: 3e-3}"),
     "steps[2].with.training.learning_rat: unknown field; did you mean learning_rate?"),
    (bad("      data: ${data.train}\n      training",
         "      data: ${data.train}\n      epochs: 3\n      training"),
     "steps[2].with.epochs: unknown field; did you mean training.epochs?"),
    (bad("lora: {r: 4}", "lora: {r: eight}"),
     "steps[3].with.lora.r: expected an integer, got 'eight'"),
    (bad("{max_steps: 3,", "{max_steps: 2.5,"),
     "steps[2].with.training.max_steps: expected an integer, got 2.5"),
    (bad("lora: {r: 4}", "lora: {r: 0}"), "steps[3].with.lora.r: must be > 0, got 0"),
    (bad("method: lora", "method: qlora"), "steps[3].with.method: expected one of full, lora; got 'qlora'"),
    (bad("size: tiny\n      tokenizer_from", "size: huge\n      tokenizer_from"),
     "steps[1].with.size: unknown model size 'huge'; known sizes: teacher, student, tiny"),
    (bad('model: "${teacher.model}"}', 'model: "${techer.model}"}'),
     "steps[4].with.teacher.model: ${techer.model}: no step 'techer' in this recipe; did you mean teacher?"),
    (bad("model: ${base.model}", "model: ${base.modle}"),
     "steps[2].with.model: ${base.modle}: step 'base' (init_model) has no output 'modle'; "
     "its outputs: model"),
    (bad("model: ${base.model}", "model: ${student.model}"),
     "steps[2].with.model: ${student.model} refers to steps[4], which runs later"),
    (bad("model: ${teacher.model}\n      data: ${data.new",
         "model: ${tuned.adapter}\n      data: ${data.new"),
     "steps[3].with.model: ${tuned.adapter} refers to this step itself"),
    (bad("prompts: ${data.distill_prompts}", "prompts: ${teacher.model}"),
     "steps[4].with.prompts: ${teacher.model} is a full model; this field needs a data file"),
    (bad('student: {size: tiny}', 'student: {model: "${tuned.adapter}"}'),
     "steps[4].with.student.model: ${tuned.adapter} is a LoRA adapter"),
    (bad("tokenizer_from: ${data.train}", "tokenizer_from: ${data.train"),
     "steps[1].with.tokenizer_from: '${data.train' is not a well-formed reference"),
    (bad("model: ${base.model}", "model: registry:bad name"),
     "steps[2].with.model: 'registry:bad name' is not registry:NAME or registry:NAME:VERSION"),
    (bad("  - id: base", "  - id: data"), "steps[1].id: duplicate id 'data' (also steps[0])"),
    (bad("      data: ${data.train}\n      training", "      training"),
     "steps[2].with.data: required field missing"),
    (bad('teacher: {kind: local, model: "${teacher.model}"}',
         'teacher: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: m}'),
     "steps[4].with.student.size: a fresh student is built on the teacher's tokenizer"),
    (bad("name: unit", "name: a/b"), "name: expected letters, digits"),
    (bad("seed: 1", "seed: 1\ndevice: tpu"), "device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (bad("seed: 1", "seed: 1\nstep: []"), "step: unknown field; did you mean steps?"),
    (bad("    with: {train: 10, test: 5}", "    wiht: {train: 10, test: 5}"),
     "steps[0].wiht: unknown field; did you mean with?"),
    (bad("with: {train: 10, test: 5}", "with: {train: 10, test: 5, train: 3}"),
     "malformed YAML: line 6, column 32: duplicate key 'train'"),
    (bad("      models: [", "      models: [${teacher.model}, "),
     'malformed YAML: line 34, column 17: expected \',\' or \']\', but got \'{\' (a ${...} reference inside '
     '{...} or [...] must be quoted: "${step.output}")'),
    (bad("steps:\n", "steps:\n  - id: [\n"), "malformed YAML: line"),
    ("name: x\nsteps: []\n", "steps: expected a non-empty list of steps"),
    ("- just\n- a list\n", "expected a mapping with name, steps"),
])
def test_bad_recipe_is_refused_with_the_field_named(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert f"{path}: {expected}" in message, message


def test_every_problem_is_reported_at_once() -> None:
    text = bad("lora: {r: 4}", "lora: {r: eight}").replace("uses: distill", "uses: distil")
    with pytest.raises(RecipeError) as caught:
        load_recipe(text, origin="recipes/x.yaml")
    assert caught.value.problems == [
        "steps[3].with.lora.r: expected an integer, got 'eight'",
        "steps[4].uses: unknown step 'distil'; did you mean distill? known: build, distill, evaluate, "
        "finetune, generate_task, import_model, init_model, register",
    ]
    assert str(caught.value).startswith("recipes/x.yaml: steps[3].with.lora.r")


def test_missing_recipe_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"nope\.yaml: no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_good_recipe_has_typed_params_with_defaults() -> None:
    recipe = load_recipe(GOOD, origin="good.yaml")
    assert [s.id for s in recipe.steps] == ["data", "base", "teacher", "tuned", "student", "eval"]
    teacher = recipe.step("teacher").params
    assert isinstance(teacher, FinetuneParams)
    assert teacher.training.learning_rate == pytest.approx(0.003)  # YAML reads 3e-3 as a string
    assert teacher.training.batch_size == 32 and teacher.method == "full" and teacher.lora is None
    tuned = recipe.step("tuned").params
    assert tuned.lora.r == 4 and tuned.lora.alpha == 16 and "down_proj" in tuned.lora.target_modules
    student = recipe.step("student").params
    assert isinstance(student, DistillParams) and student.kd is None and student.validator == "none"
    assert recipe.seed == 1 and recipe.device == "auto" and len(recipe.sha256) == 64


def test_file_and_registry_refs_list_what_a_job_needs_from_outside() -> None:
    text = """\
name: refs
steps:
  - id: tuned
    uses: finetune
    with: {model: "registry:support-student:3", data: data/train.jsonl, method: lora}
  - id: student
    uses: distill
    with:
      teacher: {kind: local, model: "registry:support-teacher"}
      student: {model: "hf:acme/tiny"}
      prompts: data/prompts.jsonl
  - id: eval
    uses: evaluate
    with:
      models: ["${tuned.adapter}", "registry:support-teacher", ./models/local]
      data: data/train.jsonl
"""
    recipe = load_recipe(text)
    assert file_refs(recipe) == ["data/train.jsonl", "data/prompts.jsonl"]
    assert registry_refs(recipe) == ["registry:support-student:3", "registry:support-teacher"]


def test_openai_teacher_model_is_a_name_not_a_reference() -> None:
    text = """\
name: remote
steps:
  - id: student
    uses: distill
    with:
      teacher: {kind: openai, base_url: "http://127.0.0.1:8000/v1", model: gpt-small}
      student: {model: "hf:acme/tiny"}
      prompts: prompts.jsonl
"""
    recipe = load_recipe(text)
    assert registry_refs(recipe) == [] and file_refs(recipe) == ["prompts.jsonl"]


@pytest.mark.parametrize("name", ["smollm2-support.yaml", "smollm2-support-quick.yaml"])
def test_the_real_model_demo_recipes_start_from_the_imported_smollm2(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / name)
    assert registry_refs(recipe) == ["registry:smollm2"] and file_refs(recipe) == []
    assert [s.uses for s in recipe.steps] == ["generate_task", "finetune", "init_model", "distill",
                                               "evaluate", "register"]


@pytest.mark.parametrize("name", ["support-demo.yaml", "support-tiny.yaml"])
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.name == name.removesuffix(".yaml")
    assert [s.uses for s in recipe.steps][-1] == "register"
    assert file_refs(recipe) == [] and registry_refs(recipe) == []


def test_every_step_describes_its_parameters() -> None:
    assert sorted(STEPS) == ["build", "distill", "evaluate", "finetune", "generate_task", "import_model",
                             "init_model", "register"]
    text = STEPS["finetune"].describe()
    assert "method: 'full' | 'lora' = 'full'" in text
    assert "r: int = 8  — rank of the LoRA update matrices" in text
    assert "model: ModelRef (required)" in text
    for step in STEPS.values():
        assert step.summary and "parameters:" in step.describe()


def test_validating_a_recipe_imports_no_ml_library() -> None:
    """The controller validates recipes at submit time; that must not load torch into it."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from controller.pipeline.recipe import load_recipe; "
            f"load_recipe(Path({str(REPO / 'recipes' / 'support-demo.yaml')!r})); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'peft', 'accelerate', 'tokenizers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.steps and recipe.name
