"""The pipeline's commands (`slmops run`, `jobs`, `models`, `eval`) against a real controller:
each with --json, the human output where it carries the point, and the errors users hit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from inproc import RunningController

from controller.cli.main import cli
from controller.pipeline.task import generate
from controller.registry import ModelRegistry
from controller.settings import ControllerSettings, SettingsError

# A recipe with a data file of its own (uploaded by `slmops run`), a tiny untrained model.
RECIPE = """
name: cli-micro
steps:
  - id: base
    uses: init_model
    with: {size: tiny, tokenizer_from: gold.jsonl, vocab_size: 300}
  - id: register
    uses: register
    with: {models: {cli-micro-base: "${base.model}"}}
"""


def write_rows(path: Path, split: str, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(split, n, seed=3)))
    return path


@dataclass
class Env:
    ctl: RunningController
    config: Path
    root: Path
    recipe: Path
    run: Result

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.config), *args], obj={})

    def json(self, *args: str) -> Any:
        result = self.invoke(*args, "--json")
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cli")
    ctl = RunningController(root / "ctl")
    recipe = root / "recipes" / "micro.yaml"
    recipe.parent.mkdir()
    recipe.write_text(RECIPE)
    write_rows(recipe.parent / "gold.jsonl", "train", 40)
    config = Path(ctl.endpoints.config_path)
    run = CliRunner().invoke(cli, ["--config", str(config), "run", str(recipe), "--follow", "--json"],
                             obj={})
    yield Env(ctl, config, root, recipe, run)
    ctl.stop()


def test_run_follow_json_uploads_the_data_and_ends_with_the_registered_models(env: Env) -> None:
    assert env.run.exit_code == 0, (env.run.output, env.run.exception)
    job = json.loads(env.run.stdout)
    assert (job["status"], job["models"], job["recipe_name"]) == ("succeeded", ["cli-micro-base:1"],
                                                                  "cli-micro")
    model = env.json("models", "show", "cli-micro-base:1")
    gold = (env.recipe.parent / "gold.jsonl").read_bytes()
    assert model["lineage"]["data"] == {"gold.jsonl": hashlib.sha256(gold).hexdigest()}


def test_jobs_list_show_and_logs_as_json(env: Env) -> None:
    job_id = json.loads(env.run.stdout)["id"]
    listed = env.json("jobs", "list")["jobs"]
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "succeeded")]
    shown = env.json("jobs", "show", job_id)
    assert shown["models"] == ["cli-micro-base:1"] and shown["attempts"] == 1
    assert shown["progress"]["step"] == "register" and shown["progress"]["step_count"] == 2

    result = env.invoke("jobs", "logs", job_id, "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["status"] == "queued" and events[-1]["status"] == "succeeded"
    steps = [(e["step"], e["state"]) for e in events if e["type"] == "step"]
    assert steps == [("base", "started"), ("base", "done"), ("register", "started"),
                     ("register", "done")]
    later = env.invoke("jobs", "logs", job_id, "--from", "3", "--json").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in later] == list(range(3, len(events)))


def test_jobs_logs_follow_draws_the_steps_and_the_end(env: Env) -> None:
    job_id = json.loads(env.run.stdout)["id"]
    result = env.invoke("jobs", "logs", job_id, "--follow")
    assert result.exit_code == 0, result.output
    assert "step 1/2 base started" in result.stderr and "step 2/2 register done" in result.stderr
    assert "registered cli-micro-base:1" in result.stderr
    assert f"job {job_id} succeeded" in result.stdout


def test_models_list_as_json_has_what_a_user_compares(env: Env) -> None:
    (model,) = env.json("models", "list", "--name", "cli-micro-base")["models"]
    for key in ("name", "version", "kind", "params", "size_bytes", "metrics", "created"):
        assert key in model
    assert (model["name"], model["version"], model["kind"]) == ("cli-micro-base", 1, "base")
    assert model["params"] > 0 and model["size_bytes"] > 0


def test_models_compare_reports_retention_and_speedup_against_the_first(env: Env,
                                                                        tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"0" * 1000)
    data = {"test.jsonl": "ab" * 32}
    registry: ModelRegistry = env.ctl.controller.registry
    for name, params, em, p50 in (("cmp-teacher", 5_000_000, 0.9, 40.0),
                                  ("cmp-student", 800_000, 0.864, 10.0)):
        registry.register([{"name": name, "kind": "distilled", "path": str(weights), "params": params,
                            "metrics": {"exact_match": em, "latency_ms": {"p50": p50, "p95": p50 * 2},
                                        "tokens_per_s": 1000 / p50, "peak_memory_bytes": params * 8,
                                        "data": data}}])
    report = env.json("models", "compare", "cmp-teacher:1", "cmp-student")
    teacher, student = report["models"]
    assert report["baseline"] == "cmp-teacher:1" and teacher["retention_pct"] == 100.0
    assert student["retention_pct"] == pytest.approx(96.0)
    assert student["speedup"] == pytest.approx(4.0) and student["params_pct"] == pytest.approx(16.0)
    assert student["same_data_as_baseline"] is True
    table = env.invoke("models", "compare", "cmp-teacher:1", "cmp-student").stdout
    assert "96.0%" in table and "4.00x" in table


def test_eval_runs_a_job_and_keeps_the_metrics_on_the_model(env: Env, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "test.jsonl", "test", 3)
    report = env.json("eval", "cli-micro-base:1", "--data", str(data))
    assert report["model"] == "cli-micro-base:1" and report["eval_name"] == "test.jsonl"
    assert report["metrics"]["n"] == 3 and 0.0 <= report["metrics"]["exact_match"] <= 1.0
    (evaluation,) = env.json("models", "show", "cli-micro-base:1")["evaluations"]
    assert evaluation["eval_name"] == "test.jsonl" and evaluation["job_id"] == report["job"]
    assert evaluation["metrics"]["n"] == 3


def test_eval_measures_the_metrics_asked_for(env: Env, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "chosen.jsonl", "test", 3)
    report = env.json("eval", "cli-micro-base:1", "--data", str(data), "--metrics", "rouge_l,chrf,bleu")
    metrics = report["metrics"]
    assert metrics["metrics"] == ["rouge_l", "chrf", "bleu"] and "exact_match" not in metrics
    assert 0.0 <= metrics["rouge_l"] <= 1.0 and 0.0 <= metrics["chrf"] <= 100.0
    text = env.invoke("eval", "cli-micro-base:1", "--data", str(data), "--metrics", "chrf").stdout
    assert "chrf" in text
    bad = env.invoke("eval", "cli-micro-base:1", "--data", str(data), "--metrics", "rouge_l,vibes")
    assert bad.exit_code == 2 and "vibes" in bad.output


def _bad_files(root: Path) -> dict[str, Path]:
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "malformed.jsonl").write_text('{"id": "1", "intent": "x", "prompt": "p", "answer": "a"}\n'
                                        '{"id": "2", "intent": \n')
    (bad / "unknown-step.yaml").write_text(RECIPE.replace("uses: init_model", "uses: init_modle"))
    (bad / "missing-data.yaml").write_text(RECIPE.replace("gold.jsonl", "missing.jsonl"))
    return {p.name: p for p in bad.iterdir()}


@pytest.mark.parametrize(("args", "exit_code", "code", "message"), [
    (("models", "show", "nobody:1"), 1, "not_found", "no model named 'nobody'"),
    (("models", "show", "Bad/Ref"), 1, "invalid_argument", "not a valid model name"),
    (("eval", "nobody:1", "--data", "{gold}"), 1, "not_found", "no model named 'nobody'"),
    (("eval", "cli-micro-base:1", "--data", "{malformed.jsonl}"), 2, "invalid_argument",
     "malformed.jsonl:2: malformed JSON"),
    (("run", "{unknown-step.yaml}"), 2, "invalid_argument", "steps[0].uses: unknown step 'init_modle'"),
    (("run", "{missing-data.yaml}"), 2, "invalid_argument", "data file 'missing.jsonl'"),
    (("jobs", "show", "j-000000000000"), 1, "not_found", "no job j-000000000000"),
    (("jobs", "cancel", "../x"), 1, "invalid_argument", "id: '../x' is not a job id"),
    (("models", "compare", "cli-micro-base:1"), 2, "invalid_argument", "at least two models"),
], ids=["unknown-model", "malformed-ref", "eval-unknown-model", "eval-malformed-data",
        "run-unknown-step", "run-missing-data", "unknown-job", "malformed-job-id", "compare-one"])
def test_errors_are_json_with_a_code_and_no_job_is_made(env: Env, args: tuple[str, ...],
                                                         exit_code: int, code: str, message: str) -> None:
    files = {**_bad_files(env.root), "gold": env.recipe.parent / "gold.jsonl"}
    argv = [str(files[a[1:-1]]) if a.startswith("{") else a for a in args]
    jobs_before = len(env.json("jobs", "list")["jobs"])
    result = env.invoke(*argv, "--json")
    assert result.exit_code == exit_code, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == code and message in error["message"], error
    assert len(env.json("jobs", "list")["jobs"]) == jobs_before


def test_cancelling_a_finished_job_changes_nothing(env: Env) -> None:
    job_id = json.loads(env.run.stdout)["id"]
    assert env.json("jobs", "cancel", job_id)["status"] == "succeeded"
    assert "had already succeeded" in env.invoke("jobs", "cancel", job_id).stdout


def test_run_local_registers_in_the_local_data_dir(env: Env, tmp_path: Path) -> None:
    data_dir = tmp_path / "local"
    result = CliRunner().invoke(cli, ["run", str(env.recipe), "--local", "--data-dir", str(data_dir),
                                      "--json"], obj={})
    assert result.exit_code == 0, (result.output, result.exception)
    assert [m["ref"] for m in json.loads(result.stdout)["models"]] == ["cli-micro-base:1"]
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    (record,) = registry.list()
    assert (registry.path(record) / "config.json").is_file()
    registry.close()


@pytest.mark.parametrize("jobs", [0, 65])
def test_max_jobs_out_of_range_is_refused_naming_the_flag(tmp_path: Path, jobs: int) -> None:
    with pytest.raises(SettingsError, match="--max-jobs"):
        ControllerSettings(data_dir=tmp_path, max_concurrent_jobs=jobs)
