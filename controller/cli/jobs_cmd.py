"""`slmops jobs`: pipeline jobs on the controller."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from controller.cli import views
from controller.cli.follow import STATUS_TEXT, follow, interrupted, render
from controller.cli.output import ago, console, emit, json_option, table
from controller.cli.pipeline_client import PipelineClient
from controller.jobs import states as job_states
from controller.jobs.states import JobState
from controller.pipeline.rich_events import RichEvents, describe_fields
from protos import pipeline_pb2

STATUSES = tuple(JobState)


@click.group()
def jobs() -> None:
    """Pipeline jobs: list, show, logs, cancel."""


def progress_text(j: dict[str, Any]) -> str:
    p = j["progress"]
    if j["status"] != JobState.RUNNING or not p:
        return "-"
    text = f"step {p['step_index']}/{p['step_count']} {p['step']}" if p.get("step_count") else ""
    if p.get("task"):
        text += f"  {p['task']} {p['percent']:.0f}%"
    extra = describe_fields(p)
    return f"{text}  {extra}".strip() if extra else text.strip()


def _rows(items: list[dict[str, Any]]) -> list[list[str]]:
    now = int(time.time() * 1000)
    return [[j["id"], j["kind"], j["recipe_name"] or j["target"], STATUS_TEXT.get(j["status"], j["status"]),
             progress_text(j), ago(j["created_at_ms"], now), ", ".join(j["models"]) or "-"]
            for j in items]


@jobs.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="only jobs with this status (repeatable)")
@click.option("--limit", type=int, default=50, show_default=True, help="newest first")
@json_option
@click.pass_obj
def list_(obj: dict, statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List jobs, newest first, with their progress."""
    client = PipelineClient(obj["config"])
    response = client.call(client.pipeline.ListJobs, pipeline_pb2.ListJobsRequest(
        states=[job_states.to_proto(s) for s in statuses], limit=limit))
    data = {"jobs": [views.job(j) for j in response.jobs]}
    emit(data, as_json, lambda d: table(f"jobs ({len(d['jobs'])})", ["id", "kind", "recipe",
         "status", "progress", "created", "models"], _rows(d["jobs"])))


def show_job(j: dict[str, Any]) -> None:
    console.print(f"[bold]{j['id']}[/bold]  {j['kind']} {j['recipe_name']}  "
                  f"{STATUS_TEXT.get(j['status'], j['status'])}", highlight=False)
    facts = [("created", j["created_at"]), ("started", j["started_at"] or "-"),
             ("finished", j["finished_at"] or "-"), ("attempts", j["attempts"])]
    if j["status"] == JobState.RUNNING:
        facts.append(("progress", progress_text(j)))
    if j["target"]:
        facts.append(("model", j["target"]))
    if j["models"]:
        facts.append(("registered", ", ".join(j["models"])))
    if j["error"]:
        facts.append(("error", j["error"]))
    for key, value in facts:
        console.print(f"  {key:>10}  {value}", highlight=False)
    if j["result"]:
        console.print_json(json.dumps(j["result"]))


@jobs.command("show")
@click.argument("job_id")
@json_option
@click.pass_obj
def show(obj: dict, job_id: str, as_json: bool) -> None:
    """One job: status, progress, attempts, error, registered models."""
    client = PipelineClient(obj["config"])
    job = client.call(client.pipeline.GetJob, pipeline_pb2.GetJobRequest(id=job_id)).job
    emit(views.job(job), as_json, show_job)


@jobs.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", "follow_job", is_flag=True, help="keep following until the job ends")
@click.option("--from", "from_seq", type=int, default=0, show_default=True,
              help="the first event (0-based), to pick up where an earlier read stopped")
@json_option
@click.pass_obj
def logs(obj: dict, job_id: str, follow_job: bool, from_seq: int, as_json: bool) -> None:
    """A job's events: steps, progress, logs, errors. With --json, one event per line."""
    client = PipelineClient(obj["config"])
    if follow_job and not as_json:
        try:
            job = follow(client, job_id, show=True, from_seq=from_seq)
        except KeyboardInterrupt:
            raise interrupted(job_id) from None
        state = job_states.word(job.state)
        console.print(f"job {job.id} {STATUS_TEXT.get(state, state)}"
                      + (f": {job.error}" if job.error else ""), highlight=False)
        return
    try:
        if as_json:
            for response in client.watch(job_id, from_seq, follow=follow_job):
                for event in response.events:
                    click.echo(json.dumps({"seq": event.seq, **json.loads(event.json)}))
            return
        events = [json.loads(e.json) for r in client.watch(job_id, from_seq, follow=False)
                  for e in r.events]
    except KeyboardInterrupt:
        raise interrupted(job_id) from None
    sink = RichEvents(console)
    last_progress = {e.get("task"): i for i, e in enumerate(events) if e.get("type") == "progress"}
    for i, event in enumerate(events):  # a log, not a replay: only each task's last progress
        if event.get("type") == "progress":
            if last_progress.get(event.get("task")) == i:
                sink.log(f"{event.get('task')}: {event.get('done')}/{event.get('total')}  "
                         f"{describe_fields(event)}".rstrip())
        else:
            render(sink, event)


@jobs.command("cancel")
@click.argument("job_id")
@json_option
@click.pass_obj
def cancel(obj: dict, job_id: str, as_json: bool) -> None:
    """Stop a job: its worker is stopped and nothing it made is registered."""
    client = PipelineClient(obj["config"])
    job = views.job(client.call(client.pipeline.CancelJob, pipeline_pb2.CancelJobRequest(id=job_id),
                               timeout=60.0).job)

    def human(j: dict[str, Any]) -> None:
        if j["status"] == JobState.CANCELLED:
            click.echo(f"cancelled {j['id']}")
        else:
            click.echo(f"{j['id']} had already {j['status']}; nothing to cancel")

    emit(job, as_json, human)
