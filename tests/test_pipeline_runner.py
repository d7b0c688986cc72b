"""The recipe runner and the job worker: real tiny models, real files, a real worker process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.pipeline.events import Cancelled, ListEvents
from controller.pipeline.jsonl import write_jsonl
from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.recipe import RecipeError, load_recipe
from controller.pipeline.runner import RunError, RunResult, run_recipe

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "recipes" / "support-tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def step_events(events: ListEvents) -> list[tuple[str, str]]:
    return [(e["step"], e["state"]) for e in events.items if e.get("task") == "recipe"]


def done_json(work: Path, step: str) -> dict[str, Any]:
    return json.loads((work / "steps" / step / "done.json").read_text())


# --- support-tiny end to end, shared by the tests that read its results -----------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunResult, ListEvents]]:
    import torch

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("tiny") / "work"
    events = ListEvents()
    recipe = load_recipe(TINY)
    result = run_recipe(recipe, work, events, base_dir=recipe.base_dir)
    yield work, result, events


def test_tiny_recipe_runs_every_step_and_writes_a_complete_result(tiny_run: Any) -> None:
    work, result, events = tiny_run
    recipe = load_recipe(TINY)
    ids = [s.id for s in recipe.steps]
    assert result.ran == ids and result.skipped == []
    assert step_events(events) == [(i, state) for i in ids for state in ("started", "done")]
    doc = json.loads((work / "result.json").read_text())
    assert doc["recipe"] == "support-tiny" and doc["recipe_sha256"] == recipe.sha256
    entries = {e["name"]: e for e in doc["register"]}
    assert list(entries) == ["support-tiny-teacher", "support-tiny-student", "support-tiny-student-cs"]
    kinds = {name: e["kind"] for name, e in entries.items()}
    assert kinds == {"support-tiny-teacher": "finetuned", "support-tiny-student": "distilled",
                     "support-tiny-student-cs": "adapter"}
    for entry in entries.values():
        path = Path(entry["path"])
        assert path.is_absolute() and path.is_dir() and work in path.parents
        assert entry["params"] > 0 and entry["size_bytes"] > 0
        metrics = entry["metrics"]
        for key in ("exact_match", "per_intent", "rouge_l", "latency_ms", "tokens_per_s",
                    "peak_memory_bytes"):
            assert key in metrics, (entry["name"], key)
        assert metrics["eval_step"] == "eval" and metrics["n"] == 40
        lineage = entry["lineage"]
        assert lineage["recipe"] == "support-tiny" and lineage["recipe_sha256"] == recipe.sha256
        assert lineage["seed"] == 0 and lineage["hyperparameters"]
        for name, digest in lineage["data"].items():
            step, output = name.split(".")
            assert digest == file_sha256(result.outputs[step][output])
    # The adapter's per-intent numbers include the new intent; the adapter names its base entry.
    cs = entries["support-tiny-student-cs"]
    assert "cancel_subscription" in cs["metrics"]["per_intent"]
    assert cs["base_entry"] == "support-tiny-student"
    assert cs["lineage"]["base"]["entry"] == "support-tiny-student"
    assert (Path(cs["path"]) / "adapter_config.json").is_file()
    assert cs["size_bytes"] < entries["support-tiny-student"]["size_bytes"]
    student = entries["support-tiny-student"]["lineage"]
    assert student["teacher"]["entry"] == "support-tiny-teacher"
    assert student["teacher"]["identity"]["kind"] == "local"
    assert student["synth"]["kept"] > 0 and student["hyperparameters"]["kd"] is None


def test_rerun_with_the_same_work_dir_skips_every_done_step(tiny_run: Any) -> None:
    work, first, _ = tiny_run
    before = (work / "result.json").read_text()
    events = ListEvents()
    recipe = load_recipe(TINY)
    again = run_recipe(recipe, work, events, base_dir=recipe.base_dir)
    ids = [s.id for s in recipe.steps]
    assert again.skipped == ids[:-1] and again.ran == ["register"]  # register is cheap and always runs
    assert step_events(events) == [(i, "skipped") for i in ids[:-1]] + [("register", "started"),
                                                                        ("register", "done")]
    assert json.loads((work / "result.json").read_text()) == json.loads(before)
    assert again.outputs == first.outputs


def test_changed_step_reruns_with_the_steps_after_it_but_not_before(tiny_run: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(tiny_run[0], work)
    text = TINY.read_text().replace("latency_samples: 3", "latency_samples: 2")
    recipe_path = tmp_path / "changed.yaml"
    recipe_path.write_text(text)
    recipe = load_recipe(recipe_path)
    result = run_recipe(recipe, work, ListEvents(), base_dir=TINY.parent)
    assert result.ran == ["eval", "register"]
    assert result.skipped == ["data", "teacher_base", "teacher", "student", "student_cs"]


# --- failures and cancellation --------------------------------------------------------------

SMALL = """\
name: small
steps:
  - id: data
    uses: generate_task
    with: {train: 80, val: 0, test: 10, new_intent_train: 10, new_intent_test: 0, distill_prompts: 0}
  - id: base
    uses: init_model
    with:
      size: tiny
      tokenizer_from: ${data.train}
      vocab_size: 300
  - id: tuned
    uses: finetune
    with:
      model: ${base.model}
      data: ${data.train}
      method: lora
      lora: {target_modules: [q_proj, attention_out]}
      training: {max_steps: 5, batch_size: 8}
  - id: register
    uses: register
    with:
      models: {tiny-adapter: "${tuned.adapter}"}
"""


def test_failing_step_names_itself_and_leaves_no_result(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work).mkdir()
    (work / "result.json").write_text("{}")  # from an earlier run: must not survive a failed one
    with pytest.raises(RunError) as caught:
        run_recipe(load_recipe(SMALL), work, ListEvents(), base_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("step 'tuned' (finetune) failed: lora.target_modules ['attention_out'] not "
                              "found in the model; its linear modules are: ")
    assert "q_proj" in message and caught.value.step == "tuned"
    assert not (work / "result.json").exists()
    assert (work / "steps" / "base" / "done.json").is_file()
    assert not (work / "steps" / "tuned" / "done.json").exists()
    assert not (work / "steps" / "tuned" / "adapter").exists()


class CancelDuring(ListEvents):
    """Asks for a cancel once a progress event of ``task`` at ``at`` or later arrives."""

    def __init__(self, task: str, at: int) -> None:
        super().__init__()
        self.task, self.at = task, at

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        super().progress(task, done, total, **fields)
        if task == self.task and done >= self.at:
            self.request_cancel()


def test_cancel_mid_training_leaves_no_result_and_a_rerun_resumes(tmp_path: Path) -> None:
    text = SMALL.replace("lora: {target_modules: [q_proj, attention_out]}", "lora: {r: 2}").replace(
        "{max_steps: 5, batch_size: 8}", "{max_steps: 40, batch_size: 8, checkpoint_every: 10, log_every: 5}")
    recipe = load_recipe(text)
    work = tmp_path / "work"
    with pytest.raises(Cancelled):
        run_recipe(recipe, work, CancelDuring("tuned/train", 15), base_dir=tmp_path)
    assert not (work / "result.json").exists()
    assert not (work / "steps" / "tuned" / "done.json").exists()
    assert (work / "steps" / "tuned" / "train" / "checkpoints").is_dir()

    events = ListEvents()
    result = run_recipe(recipe, work, events, base_dir=tmp_path)
    assert result.skipped == ["data", "base"] and result.ran == ["tuned", "register"]
    assert done_json(work, "tuned")["info"]["train"]["resumed_from_step"] == 10
    assert [e["name"] for e in json.loads((work / "result.json").read_text())["register"]] == ["tiny-adapter"]


# --- references checked before anything runs ------------------------------------------------

def _prompts_recipe(prompts: str, model: str = "hf:acme/teacher") -> str:
    return f"""\
name: refs
steps:
  - id: student
    uses: distill
    with:
      teacher: {{kind: local, model: "{model}"}}
      student: {{model: "hf:acme/student"}}
      prompts: {prompts}
"""


def test_malformed_prompts_line_is_reported_by_number_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text('{"id": "1", "prompt": "hi"}\n\n{"id": "2", "prompt": \n')
    work = tmp_path / "work"
    with pytest.raises(RecipeError) as caught:
        run_recipe(load_recipe(_prompts_recipe("prompts.jsonl")), work, ListEvents(), base_dir=tmp_path)
    assert str(caught.value).startswith("<recipe>: steps[0].with.prompts: prompts.jsonl:3: malformed JSON")
    assert not (work / "steps").exists()


def test_prompts_row_without_a_prompt_is_reported_by_number(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "prompt": "hi"}, {"id": "2", "text": "hello"}])
    expected = (r"steps\[0\]\.with\.prompts: p\.jsonl:2: messages: missing "
                r"\(a prompt is \{\"messages\": \[...\]\} or \{\"prompt\": ...\}\)")
    with pytest.raises(RecipeError, match=expected):
        run_recipe(load_recipe(_prompts_recipe("p.jsonl")), tmp_path / "w", ListEvents(), base_dir=tmp_path)


@pytest.mark.parametrize("model, inputs, base_dir, expected", [
    ("./models/teacher", None, "tmp", "steps[0].with.teacher.model: model path './models/teacher' is not a "
                                      "directory"),
    ("./models/teacher", {"p.jsonl": "p.jsonl"}, None, "steps[0].with.teacher.model: model path "
                                                       "'./models/teacher': a job can't read a directory "
                                                       "named in a recipe; import the model with `slmops "
                                                       "models import` and use registry:NAME"),
    ("registry:support-teacher", None, "tmp", "steps[0].with.teacher.model: registry:support-teacher: no "
                                              "model registry here"),
    ("hf:acme/teacher", {}, None, "steps[0].with.prompts: data file 'p.jsonl' was not uploaded with the job"),
])
def test_unresolvable_reference_fails_before_anything_runs(tmp_path: Path, model: str, inputs: Any,
                                                           base_dir: Any, expected: str) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "prompt": "hi"}])
    stored = {k: tmp_path / v for k, v in inputs.items()} if inputs is not None else None
    with pytest.raises(RecipeError) as caught:
        run_recipe(load_recipe(_prompts_recipe("p.jsonl", model)), tmp_path / "w", ListEvents(),
                   inputs=stored, base_dir=tmp_path if base_dir else None)
    assert f"<recipe>: {expected}" in str(caught.value)


# --- the worker process -----------------------------------------------------------------------

WORKER_RECIPE = """\
name: worker
steps:
  - id: base
    uses: init_model
    with:
      size: tiny
      tokenizer_from: corpus/train.jsonl
      vocab_size: 300
  - id: tuned
    uses: finetune
    with:
      model: ${base.model}
      data: corpus/train.jsonl
      training: {max_steps: 200, batch_size: 8, checkpoint_every: 10, log_every: 10}
  - id: register
    uses: register
    with:
      models: {worker-model: "${tuned.model}"}
"""


def start_worker(tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "controller.pipeline.worker", "--recipe", str(tmp_path / "recipe.yaml"),
         "--work-dir", str(tmp_path / "work"), "--events", str(tmp_path / "events.jsonl"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def read_events(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def test_worker_sigterm_mid_training_exits_3_and_a_rerun_resumes(tmp_path: Path) -> None:
    from controller.pipeline.task import generate

    (tmp_path / "recipe.yaml").write_text(WORKER_RECIPE)
    stored = tmp_path / "inputs" / "3f9c"  # the controller stores uploads under their hash
    write_jsonl(stored, generate("train", 60, seed=1))
    (tmp_path / "inputs.json").write_text(json.dumps({"corpus/train.jsonl": str(stored)}))
    args = ("--inputs-json", str(tmp_path / "inputs.json"))

    worker = start_worker(tmp_path, *args)
    checkpoint = tmp_path / "work" / "steps" / "tuned" / "train" / "checkpoints" / "latest"
    deadline = time.monotonic() + 60
    while not checkpoint.is_dir():
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 3, stderr.decode()
    events = read_events(tmp_path)
    assert events[-1]["type"] == "cancelled"
    assert ("base", "done") in [(e["step"], e["state"]) for e in events if e["type"] == "step"]
    assert not (tmp_path / "work" / "result.json").exists()

    again = start_worker(tmp_path, *args)
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr.decode()
    events = read_events(tmp_path)
    assert events[-1]["type"] == "finished" and events[-1]["models"] == 1
    rerun = events[next(i for i, e in enumerate(events) if e["type"] == "cancelled") + 1:]
    assert [(e["step"], e["state"], e["index"], e["count"]) for e in rerun if e["type"] == "step"] == [
        ("base", "skipped", 0, 3), ("tuned", "started", 1, 3), ("tuned", "done", 1, 3),
        ("register", "started", 2, 3), ("register", "done", 2, 3)]
    assert done_json(tmp_path / "work", "tuned")["info"]["train"]["resumed_from_step"] >= 10
    train_events = [e for e in events if e["type"] == "progress" and e["task"] == "tuned/train"]
    assert train_events and {"loss", "eta_s"} <= set(train_events[-1])
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    assert result["register"][0]["lineage"]["data"] == {"corpus/train.jsonl": file_sha256(stored)}


def test_worker_refuses_a_bad_recipe_with_an_error_event(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(WORKER_RECIPE.replace("batch_size: 8,", "batch_size: eight,"))
    worker = start_worker(tmp_path)
    worker.communicate(timeout=60)
    assert worker.returncode == 1
    last = read_events(tmp_path)[-1]
    assert last == {"t": last["t"], "type": "error", "message": "recipe.yaml: steps[1].with.training."
                                                               "batch_size: expected an integer, got 'eight'"}


# --- local runs: the same runner, a local registry, rich progress ---------------------------------

LOCAL_FIRST = """\
name: local-first
steps:
  - id: data
    uses: generate_task
    with: {train: 60, val: 0, test: 0, new_intent_train: 0, new_intent_test: 0, distill_prompts: 0}
  - id: base
    uses: init_model
    with: {size: tiny, tokenizer_from: "${data.train}", vocab_size: 300}
  - id: tuned
    uses: finetune
    with:
      model: ${base.model}
      data: ${data.train}
      training: {max_steps: 4, batch_size: 8}
  - id: register
    uses: register
    with:
      models: {local-small: "${tuned.model}"}
"""

LOCAL_SECOND = """\
name: local-second
steps:
  - id: more
    uses: finetune
    with:
      model: registry:local-small
      data: data/more.jsonl
      training: {max_steps: 4, batch_size: 8}
  - id: register
    uses: register
    with:
      models: {local-small: "${more.model}"}
"""


def test_local_run_registers_and_a_later_recipe_builds_on_the_registered_model(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from controller.pipeline.local import default_work_dir, run_local
    from controller.pipeline.rich_events import RichEvents
    from controller.pipeline.task import generate
    from controller.registry import ModelRegistry

    data_dir = tmp_path / "data"
    (tmp_path / "first.yaml").write_text(LOCAL_FIRST)
    screen = io.StringIO()
    with RichEvents(Console(file=screen, width=120)) as events:
        records = run_local(tmp_path / "first.yaml", data_dir, None, events)
    assert [(r.name, r.version, r.kind) for r in records] == [("local-small", 1, "finetuned")]
    shown = screen.getvalue()
    assert "step 1/4 data started" in shown and "step 4/4 register done" in shown
    assert "registered local-small:1" in shown
    assert (default_work_dir(data_dir, load_recipe(tmp_path / "first.yaml")) / "result.json").is_file()

    (tmp_path / "recipes" / "data").mkdir(parents=True)
    write_jsonl(tmp_path / "recipes" / "data" / "more.jsonl", generate("val", 20, seed=3))
    (tmp_path / "recipes" / "second.yaml").write_text(LOCAL_SECOND)
    events = ListEvents()
    records = run_local(tmp_path / "recipes" / "second.yaml", data_dir, tmp_path / "work2", events)
    assert [(r.name, r.version) for r in records] == [("local-small", 2)]
    lineage = records[0].lineage
    assert lineage["base"] == {"ref": "registry:local-small"}
    assert lineage["data"] == {"data/more.jsonl": file_sha256(tmp_path / "recipes" / "data" / "more.jsonl")}
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    assert (registry.path(registry.get("local-small:2")) / "config.json").is_file()


# --- the distill step's teachers, through the runner ------------------------------------------------

def _distill_recipe(teacher: str, extra: str = "") -> str:
    return f"""\
name: distill-unit
steps:
  - id: data
    uses: generate_task
    with: {{train: 40, val: 0, test: 0, new_intent_train: 0, new_intent_test: 0, distill_prompts: 20}}
  - id: base
    uses: init_model
    with: {{size: tiny, tokenizer_from: "${{data.train}}", vocab_size: 300}}
  - id: student
    uses: distill
    with:
      teacher: {teacher}
      student: {{model: "${{base.model}}"}}
      prompts: ${{data.distill_prompts}}
      training: {{max_steps: 3, batch_size: 8}}
      min_success_ratio: 0.8
      validator: support
{extra}"""


def test_distill_from_an_openai_compatible_endpoint_keeps_only_valid_answers(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAIServer

    from controller.pipeline.task import generate

    pool = generate("train", 60, seed=0)  # the step's own draw: 40 gold rows, then 20 prompts
    gold = {r["prompt"]: r["answer"] for r in pool}
    bad = {pool[40]["prompt"], pool[41]["prompt"]}  # the teacher answers these off-format
    with FakeOpenAIServer(answer=lambda p: "I am not sure." if p in bad else gold[p]) as server:
        teacher = f'{{kind: openai, base_url: "{server.url}", model: fake-teacher, retries: 0}}'
        result = run_recipe(load_recipe(_distill_recipe(teacher)), tmp_path / "w", ListEvents(),
                            base_dir=tmp_path)
        assert len(server.requests) == 20
    lines = result.outputs["student"]["labelled"].read_text().splitlines()
    labelled = [json.loads(line) for line in lines]
    assert len(labelled) == 18 and not bad & {row["prompt"] for row in labelled}
    assert all(row["answer"] == gold[row["prompt"]] for row in labelled)
    record = done_json(tmp_path / "w", "student")
    assert record["lineage"]["model"]["teacher"]["identity"]["base_url"] == server.url
    assert record["lineage"]["model"]["kind"] == "distilled"


def test_changing_only_the_student_reuses_the_teachers_answers(tmp_path: Path) -> None:
    """The distill step starts over when its parameters change, but the teacher's answers are
    keyed by the teacher, its settings and each prompt: a new student shape asks nobody again."""
    from fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        teacher = f'{{kind: openai, base_url: "{server.url}", model: fake-teacher, retries: 0}}'
        text = _distill_recipe(teacher).replace("validator: support", "validator: none")
        run_recipe(load_recipe(text), tmp_path / "w", ListEvents(), base_dir=tmp_path)
        assert len(server.requests) == 20
        events = ListEvents()
        changed = text.replace("max_steps: 3", "max_steps: 4")
        result = run_recipe(load_recipe(changed), tmp_path / "w", events, base_dir=tmp_path)
        assert len(server.requests) == 20  # not asked again
    assert "student" not in result.skipped
    assert any("reusing 20 answers" in str(e.get("message", "")) for e in events.items), events.items
    assert json.loads((tmp_path / "w" / "steps" / "student" / "train.result.json").read_text())["steps"] == 4


def test_distill_asks_the_teacher_whole_conversations_and_trains_on_them(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAIServer

    pirate = [{"role": "system", "content": "Answer as a pirate."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Ahoy."}, {"role": "user", "content": "Where is order 7?"}]
    rows = [{"id": "c1", "messages": pirate},
            {"id": "c2", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Where is order 8?"}]},
            {"id": "p1", "prompt": "Where is order 9?"}]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    recipe = _distill_recipe("TEACHER").replace("${data.distill_prompts}", "prompts.jsonl").replace(
        "validator: support", "validator: none")
    with FakeOpenAIServer() as server:
        teacher = f'{{kind: openai, base_url: "{server.url}", model: fake-teacher, retries: 0}}'
        result = run_recipe(load_recipe(recipe.replace("TEACHER", teacher)), tmp_path / "w", ListEvents(),
                            base_dir=tmp_path)
    sent = {r["prompt"]: r["body"]["messages"] for r in server.requests}
    assert sent == {"Where is order 7?": pirate, "Where is order 8?": rows[1]["messages"],
                    "Where is order 9?": [{"role": "user", "content": "Where is order 9?"}]}
    labelled = {r["id"]: r["messages"] for r in map(json.loads,
                                                    result.outputs["student"]["labelled"].read_text().splitlines())}
    assert labelled == {row["id"]: [*sent[text], {"role": "assistant", "content": f"answer to: {text}"}]
                        for row, text in zip(rows, sent, strict=True)}
    assert done_json(tmp_path / "w", "student")["info"]["synth"]["kept"] == 3


def test_distill_with_the_json_validator_keeps_only_answers_that_parse(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAIServer

    from controller.pipeline.task import generate

    pool = generate("train", 60, seed=0)
    broken = {row["prompt"] for row in pool[40:44]}  # the teacher answers these with broken JSON

    def answer(prompt: str) -> str:
        return '{"reply": "cut' if prompt in broken else "```json\n" + json.dumps({"reply": prompt}) + "\n```"

    with FakeOpenAIServer(answer=answer) as server:
        teacher = f'{{kind: openai, base_url: "{server.url}", model: fake-teacher, retries: 0}}'
        recipe = _distill_recipe(teacher).replace("validator: support", "validator: json")
        result = run_recipe(load_recipe(recipe.replace("min_success_ratio: 0.8", "min_success_ratio: 0.5")),
                            tmp_path / "w", ListEvents(), base_dir=tmp_path)
    labelled = [json.loads(line) for line in result.outputs["student"]["labelled"].read_text().splitlines()]
    assert len(labelled) == 16 and not broken & {row["prompt"] for row in labelled}
    assert done_json(tmp_path / "w", "student")["info"]["synth"]["dropped"] == {"invalid": 4}


def test_distill_from_a_down_endpoint_fails_naming_it(tmp_path: Path) -> None:
    from fake_openai import FakeOpenAIServer

    server = FakeOpenAIServer()
    server.stop()  # nothing listens on its port any more
    teacher = f'{{kind: openai, base_url: "{server.url}", model: fake-teacher, retries: 0, timeout_s: 2}}'
    with pytest.raises(RunError) as caught:
        run_recipe(load_recipe(_distill_recipe(teacher)), tmp_path / "w", ListEvents(), base_dir=tmp_path)
    assert str(caught.value).startswith(f"step 'student' (distill) failed: teacher endpoint {server.url} is "
                                        "unreachable")
    assert not (tmp_path / "w" / "result.json").exists()


def test_logit_kd_with_a_different_tokenizer_fails_before_the_teacher_is_asked(tmp_path: Path) -> None:
    extra = "      kd: {temperature: 2.0, alpha: 0.5}\n"
    text = _distill_recipe('{kind: local, model: "${teacher.model}"}', extra).replace(
        "  - id: student\n", "  - id: teacher\n    uses: init_model\n"
        '    with: {size: tiny, tokenizer_from: "${data.train}", vocab_size: 320}\n  - id: student\n')
    with pytest.raises(RunError) as caught:
        run_recipe(load_recipe(text), tmp_path / "w", ListEvents(), base_dir=tmp_path)
    assert "step 'student' (distill) failed: logit KD: vocabulary sizes differ: student 300, teacher 320" \
        in str(caught.value)
    assert not list((tmp_path / "w" / "steps" / "student").glob("labelled*"))
