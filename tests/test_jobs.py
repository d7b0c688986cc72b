"""Pipeline jobs through a real controller and real worker processes: the tiny recipe survives
a controller killed mid-training and registers its models; failures and cancels register
nothing; the queue runs one job at a time; bad submissions make no job."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc import RunningController
from procs import ProcessHarness, wait_until

from controller.cli.pipeline_client import PipelineClient
from controller.jobs import states as job_states
from controller.jobs.store import JobStore
from controller.pipeline.task import generate
from protos import pipeline_pb2, pipeline_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "support-tiny.yaml"

# The smallest useful recipe: task data, an untrained tiny model, registered (a few seconds).
MICRO = """
name: {name}
steps:
  - id: data
    uses: generate_task
    with: {{train: 40, val: 4, test: 4, new_intent_train: 4, new_intent_test: 2, distill_prompts: 4}}
  - id: base
    uses: init_model
    with: {{size: tiny, tokenizer_from: "${{data.train}}", vocab_size: 300}}
{extra}
  - id: register
    uses: register
    with: {{models: {{{name}-base: "${{base.model}}"}}}}
"""
TUNE = """
  - id: tune
    uses: finetune
    with:
      model: "${{base.model}}"
      data: "{data}"
      training: {{max_steps: {steps}, batch_size: 4, checkpoint_every: 1000}}
"""


LORA_ON_MISSING_MODULES = """
  - id: tune
    uses: finetune
    with:
      model: "${base.model}"
      data: "${data.train}"
      method: lora
      lora: {target_modules: [no_such_proj]}
"""


def micro(name: str = "micro", tune_data: str = "", tune_steps: int = 5, extra: str = "") -> str:
    """MICRO, with a finetune step on ``tune_data`` or the ``extra`` steps before register."""
    if tune_data:
        extra = TUNE.format(data=tune_data, steps=tune_steps)
    return MICRO.format(name=name, extra=extra.strip("\n"))


class Pipeline:
    """The PipelineService of an in-process controller, through a real mTLS channel."""

    def __init__(self, ctl: RunningController) -> None:
        self.ctl = ctl
        self.stub = pipeline_pb2_grpc.PipelineServiceStub(
            ctl.channel(ctl.config.admin_cert_pem, ctl.config.admin_key_pem))

    def submit(self, recipe: str, files: dict[str, bytes] | None = None) -> pipeline_pb2.Job:
        requests = [pipeline_pb2.SubmitJobRequest(spec=pipeline_pb2.JobSpec(recipe_yaml=recipe))]
        requests += [pipeline_pb2.SubmitJobRequest(file=pipeline_pb2.FileChunk(path=k, data=v))
                     for k, v in (files or {}).items()]
        return self.stub.SubmitJob(iter(requests), timeout=30).job

    def job(self, job_id: str) -> pipeline_pb2.Job:
        return self.stub.GetJob(pipeline_pb2.GetJobRequest(id=job_id), timeout=10).job

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 120) -> pipeline_pb2.Job:
        return wait_until(lambda: job_states.word((j := self.job(job_id)).state) in statuses and j, timeout,
                          f"job {job_id} to be {' or '.join(statuses)}", interval=0.2,
                          logs=lambda: self.worker_log(job_id))

    def worker_log(self, job_id: str) -> str:
        path = self.ctl.controller.settings.data_dir / "jobs" / job_id / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def jobs(self) -> list[pipeline_pb2.Job]:
        return list(self.stub.ListJobs(pipeline_pb2.ListJobsRequest(), timeout=10).jobs)

    def models(self, name: str = "") -> list[pipeline_pb2.Model]:
        return list(self.stub.ListModels(pipeline_pb2.ListModelsRequest(name=name), timeout=10).models)


@pytest.fixture
def pipeline(ctl: RunningController) -> Pipeline:
    return Pipeline(ctl)


def worker_pids(job_id: str) -> list[int]:
    """Processes whose command line names the job (its worker and whatever that started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if job_id.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def events_of(client: PipelineClient, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.json) for r in client.watch(job_id, follow=False) for e in r.events]


# --- the tiny recipe, with its controller SIGKILLed mid-training and started again ----------
@dataclass
class Resumed:
    procs: ProcessHarness
    client: PipelineClient
    job: pipeline_pb2.Job
    events: list[dict[str, Any]]
    data_dir: Path


TEACHER_TINY = "training: {max_steps: 60, batch_size: 16, learning_rate: 0.01, checkpoint_every: 20}"
TEACHER_LONG = "training: {max_steps: 600, batch_size: 16, learning_rate: 0.01, checkpoint_every: 20}"


def _teacher_checkpointed(data_dir: Path, job_id: str) -> bool:
    """The teacher has a checkpoint on disk and is still training: a kill now must resume."""
    step = data_dir / "jobs" / job_id / "work" / "steps" / "teacher"
    return (step / "train" / "checkpoints" / "latest").is_dir() and not (step / "done.json").exists()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resumed]:
    procs = ProcessHarness(tmp_path_factory.mktemp("tiny"))
    try:
        first = procs.start_controller()
        client = PipelineClient(Path(first.info["config"]))
        # support-tiny with a longer teacher (600 steps, a checkpoint every 20), so that the kill
        # lands mid-training however fast this machine is
        assert TEACHER_TINY in TINY.read_text()
        job = client.submit(TINY.read_text().replace(TEACHER_TINY, TEACHER_LONG), {})
        procs.wait_until(lambda: _teacher_checkpointed(first.data_dir, job.id), 300,
                         "the teacher's training to write its first checkpoint", interval=0.1)
        first.proc.kill()
        client.close()
        procs.wait_until(lambda: not worker_pids(job.id), 15, "the worker to die with the controller")
        procs.start_controller(data_dir=first.data_dir)
        client = PipelineClient(Path(procs.controller.info["config"]))
        done = procs.wait_until(
            lambda: job_states.word((j := client.call(client.pipeline.GetJob, pipeline_pb2.GetJobRequest(
                id=job.id)).job).state) in ("succeeded", "failed", "cancelled") and j,
            400, f"job {job.id} to finish after the restart", interval=1.0)
        yield Resumed(procs, client, done, events_of(client, job.id), first.data_dir)
        client.close()
    finally:
        procs.cleanup()
        print(procs.logs())


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_job_resumes_from_its_checkpoint_after_the_controller_is_killed(resumed: Resumed) -> None:
    assert job_states.word(resumed.job.state) == "succeeded", resumed.job.error
    assert resumed.job.attempts == 2
    second = max(i for i, e in enumerate(resumed.events)
                 if e["type"] == "status" and e["status"] == "running")
    after = resumed.events[second:]
    skipped = [e["step"] for e in after if e["type"] == "step" and e["state"] == "skipped"]
    assert skipped == ["data", "teacher_base"]
    resumes = [e["message"] for e in after if e["type"] == "log" and "resuming" in e["message"]]
    found = resumes and re.search(r"teacher/train from the checkpoint at step (\d+) of 600", resumes[0])
    assert found and 20 <= int(found.group(1)) < 600, resumes
    assert resumed.events[-1] == {**resumed.events[-1], "type": "status", "status": "succeeded"}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_succeeded_job_registers_its_models_with_lineage(resumed: Resumed) -> None:
    refs = ["support-tiny-student-cs:1", "support-tiny-student:1", "support-tiny-teacher:1"]
    assert sorted(resumed.job.models) == refs
    models = {m.name: m for m in resumed.client.call(resumed.client.pipeline.ListModels,
                                                    pipeline_pb2.ListModelsRequest()).models}
    assert sorted(f"{m.name}:{m.version}" for m in models.values()) == refs
    teacher, student, adapter = (models[f"support-tiny-{n}"] for n in ("teacher", "student",
                                                                      "student-cs"))
    assert (teacher.kind, student.kind, adapter.kind) == ("finetuned", "distilled", "adapter")
    assert 0 < student.params < teacher.params
    for m in (teacher, student, adapter):
        lineage, metrics = json.loads(m.lineage_json), json.loads(m.metrics_json)
        assert lineage["recipe"] == "support-tiny" and lineage["data"], lineage
        assert "exact_match" in metrics and "per_intent" in metrics
        assert m.job_id == resumed.job.id and len(m.sha256) == 64
        stored = resumed.data_dir / "models" / m.name / "1"
        assert sum(p.stat().st_size for p in stored.rglob("*") if p.is_file()) == m.size_bytes
    assert json.loads(adapter.lineage_json)["base"]["registered"] == "support-tiny-student:1"
    assert (resumed.data_dir / "models" / adapter.name / "1" / "adapter_config.json").is_file()


# --- failures, cancels and the queue, on an in-process controller ----------------------------
GOOD_ROW = json.dumps({"id": "a", "intent": "x", "prompt": "p", "answer": "a"})


@pytest.mark.parametrize(("recipe", "files", "error", "a_step_ran"), [
    (micro("broken", tune_data="bad.jsonl"), {"bad.jsonl": f"{GOOD_ROW}\n{{not json\n".encode()},
     "steps[2].with.data: bad.jsonl:2: malformed JSON", False),
    (micro("broken", extra=LORA_ON_MISSING_MODULES), {}, "['no_such_proj'] not found in the model",
     True),
], ids=["malformed-upload", "lora-on-missing-modules"])
def test_a_failing_recipe_fails_with_the_workers_error_and_registers_nothing(
        pipeline: Pipeline, recipe: str, files: dict[str, bytes], error: str, a_step_ran: bool) -> None:
    job = pipeline.submit(recipe, files)
    done = pipeline.wait(job.id)
    assert job_states.word(done.state) == "failed"
    assert error in done.error
    assert list(done.models) == [] and pipeline.models() == []
    work = pipeline.ctl.controller.settings.data_dir / "jobs" / job.id / "work"
    assert (work / "steps" / "base" / "done.json").is_file() == a_step_ran  # it made a model
    assert not (work / "result.json").exists()
    assert not list((pipeline.ctl.controller.settings.data_dir / "models").glob("broken*"))


def test_cancel_stops_the_worker_registers_nothing_and_the_queue_moves_on(
        pipeline: Pipeline) -> None:
    long = pipeline.submit(micro("long", tune_data="${data.train}", tune_steps=100_000))
    second = pipeline.submit(micro("second"))
    third = pipeline.submit(micro("third"))
    wait_until(lambda: pipeline.job(long.id).progress.task.startswith("tune"), 120,
               "the long job to train", logs=lambda: pipeline.worker_log(long.id))
    assert [job_states.word(pipeline.job(j.id).state) for j in (second, third)] == ["queued", "queued"]

    third_done = pipeline.stub.CancelJob(pipeline_pb2.CancelJobRequest(id=third.id), timeout=30).job
    assert (job_states.word(third_done.state), third_done.attempts, third_done.started_at_ms) == (
        "cancelled", 0, 0)
    assert worker_pids(long.id)
    cancelled = pipeline.stub.CancelJob(pipeline_pb2.CancelJobRequest(id=long.id), timeout=60).job
    assert job_states.word(cancelled.state) == "cancelled" and list(cancelled.models) == []
    assert not worker_pids(long.id)
    events = [json.loads(e.json) for r in pipeline.stub.WatchJob(
        pipeline_pb2.WatchJobRequest(id=long.id), timeout=10) for e in r.events]
    assert {"type": "cancelled"} in [{"type": e["type"]} for e in events]

    done = pipeline.wait(second.id)
    assert job_states.word(done.state) == "succeeded" and done.started_at_ms >= cancelled.finished_at_ms
    assert [f"{m.name}:{m.version}" for m in pipeline.models()] == ["second-base:1"]
    assert job_states.word(pipeline.job(third.id).state) == "cancelled"


def test_a_controller_stopped_gracefully_requeues_its_running_job(tmp_path: Path) -> None:
    ctl = RunningController(tmp_path / "ctl")
    pipeline = Pipeline(ctl)
    job = pipeline.submit(micro("long", tune_data="${data.train}", tune_steps=100_000))
    wait_until(lambda: pipeline.job(job.id).progress.task.startswith("tune"), 120,
               "the job to train", logs=lambda: pipeline.worker_log(job.id))
    ctl.stop()
    assert not worker_pids(job.id)
    store = JobStore(f"sqlite:///{tmp_path / 'ctl' / 'fleet.db'}")
    assert (store.get(job.id).status, store.get(job.id).attempts) == ("queued", 1)
    store.close()

    again = RunningController(tmp_path / "ctl")
    try:
        pipeline = Pipeline(again)
        running = pipeline.wait(job.id, ("running",), timeout=60)
        assert running.attempts == 2
        pipeline.stub.CancelJob(pipeline_pb2.CancelJobRequest(id=job.id), timeout=60)
    finally:
        again.stop()


def _chunks(recipe: str, files: dict[str, bytes]) -> list[pipeline_pb2.SubmitJobRequest]:
    out = [pipeline_pb2.SubmitJobRequest(spec=pipeline_pb2.JobSpec(recipe_yaml=recipe))]
    return out + [pipeline_pb2.SubmitJobRequest(file=pipeline_pb2.FileChunk(path=k, data=v))
                  for k, v in files.items()]


BIG = b"x" * (1 << 20)
UNKNOWN_MODEL = """
name: tunes-a-registered-model
steps:
  - id: tune
    uses: finetune
    with: {model: "registry:nobody:3", data: gold.jsonl}
"""
BAD_SUBMISSIONS = {
    "unknown-step": (_chunks(micro().replace("uses: init_model", "uses: init_modle"), {}),
                     "INVALID_ARGUMENT", "steps[1].uses: unknown step 'init_modle'"),
    "unknown-field": (_chunks(micro().replace("vocab_size", "vocab_sise"), {}),
                      "INVALID_ARGUMENT", "steps[1].with.vocab_sise: unknown field"),
    "malformed-yaml": (_chunks("name: x\nsteps: [\n", {}), "INVALID_ARGUMENT", "malformed YAML"),
    "recipe-over-1-MiB": (_chunks("# " + "x" * (1 << 20) + "\n" + micro(), {}),
                          "INVALID_ARGUMENT", "recipe_yaml:"),
    "file-not-uploaded": (_chunks(micro(tune_data="gold.jsonl"), {}), "INVALID_ARGUMENT",
                          "files: the recipe uses 'gold.jsonl'"),
    "file-not-in-recipe": (_chunks(micro(), {"extra.jsonl": b"{}\n"}), "INVALID_ARGUMENT",
                           "files[extra.jsonl]: the recipe does not use"),
    "files-over-64-MiB": (_chunks(micro(tune_data="gold.jsonl"), {"gold.jsonl": BIG})[:1]
                          + [pipeline_pb2.SubmitJobRequest(file=pipeline_pb2.FileChunk(
                              path="gold.jsonl", data=BIG))] * 65, "INVALID_ARGUMENT",
                          "files: more than 64 MiB"),
    "files-before-spec": (_chunks(micro(), {"a": b"1"})[::-1], "INVALID_ARGUMENT",
                          "spec: the first message must be the job spec"),
    "no-spec": ([], "INVALID_ARGUMENT", "spec: no job spec"),
    "model-path-in-a-job": (_chunks(UNKNOWN_MODEL.replace("registry:nobody:3", "./my-model"),
                                    {"gold.jsonl": b"{}\n"}), "INVALID_ARGUMENT",
                            "steps[0].with.model: ./my-model is a model directory on your machine"),
    "unknown-registry-model": (_chunks(UNKNOWN_MODEL, {"gold.jsonl": b"{}\n"}), "NOT_FOUND",
                               "no model named 'nobody'"),
}


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submissions_are_refused_and_make_no_job(pipeline: Pipeline, case: str) -> None:
    requests, code, message = BAD_SUBMISSIONS[case]
    with pytest.raises(grpc.RpcError) as info:
        pipeline.stub.SubmitJob(iter(requests), timeout=60)
    assert info.value.code().name == code, info.value.details()
    assert message in info.value.details()
    assert pipeline.jobs() == []
    jobs_dir = pipeline.ctl.controller.settings.data_dir / "jobs"
    assert [p.name for p in jobs_dir.iterdir() if p.name != ".staging"] == []
    assert list((jobs_dir / ".staging").glob("*")) == []


def test_evaluate_refuses_unknown_models_and_malformed_data(pipeline: Pipeline, tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    pipeline.ctl.controller.registry.register([{"name": "m", "kind": "base", "path": str(model)}])
    rows = [json.dumps(r) for r in generate("test", 3, seed=1)]
    cases = [("nobody:1", "\n".join(rows), "NOT_FOUND", "no model named 'nobody'"),
             ("m:1", rows[0] + "\n{broken\n", "INVALID_ARGUMENT", "files[test.jsonl]:2: malformed"),
             ("m:1", json.dumps({"id": "a", "prompt": "p"}), "INVALID_ARGUMENT",
              "files[test.jsonl]:1: field 'answer'"),
             ("m:1", "", "INVALID_ARGUMENT", "no examples")]
    for ref, data, code, message in cases:
        requests = [pipeline_pb2.EvaluateModelRequest(spec=pipeline_pb2.EvalSpec(ref=ref)),
                    pipeline_pb2.EvaluateModelRequest(file=pipeline_pb2.FileChunk(
                        path="test.jsonl", data=data.encode()))]
        with pytest.raises(grpc.RpcError) as info:
            pipeline.stub.EvaluateModel(iter(requests), timeout=30)
        assert (info.value.code().name, message in info.value.details()) == (code, True), \
            info.value.details()
    assert pipeline.jobs() == []


def test_only_the_admin_certificate_may_use_the_pipeline(ctl: RunningController) -> None:
    device = ctl.enroll("edge-1")
    stub = pipeline_pb2_grpc.PipelineServiceStub(ctl.device_channel(device))
    with pytest.raises(grpc.RpcError) as info:
        stub.ListJobs(pipeline_pb2.ListJobsRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("call", "request_", "field"), [
    ("GetJob", pipeline_pb2.GetJobRequest(id="../../etc"), "id"),
    ("CancelJob", pipeline_pb2.CancelJobRequest(id="j-XYZ"), "id"),
    ("ListJobs", pipeline_pb2.ListJobsRequest(states=[99]), "states"),
    ("ListJobs", pipeline_pb2.ListJobsRequest(limit=5000), "limit"),
    ("GetModel", pipeline_pb2.GetModelRequest(ref="a/../b:1"), "model"),
    ("ListModels", pipeline_pb2.ListModelsRequest(name="UPPER"), "name"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(pipeline: Pipeline, call: str,
                                                            request_: Any, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        getattr(pipeline.stub, call)(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()


def test_unknown_jobs_and_models_are_not_found(pipeline: Pipeline) -> None:
    for call, request_ in (("GetJob", pipeline_pb2.GetJobRequest(id="j-000000000000")),
                           ("GetModel", pipeline_pb2.GetModelRequest(ref="nobody:1"))):
        with pytest.raises(grpc.RpcError) as info:
            getattr(pipeline.stub, call)(request_, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    watch = pipeline.stub.WatchJob(pipeline_pb2.WatchJobRequest(id="j-000000000000"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(watch)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
