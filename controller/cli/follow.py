"""A job followed from the CLI: its events drawn as they arrive (the same bars as a local
run: step i/n, percent, loss, time left), and its end turned into an exit status."""

from __future__ import annotations

import json
from typing import Any

from controller.cli.output import CliError
from controller.cli.pipeline_client import PipelineClient
from controller.jobs import states as job_states
from controller.jobs.states import JobState
from controller.pipeline.rich_events import RichEvents
from protos import pipeline_pb2

STATUS_TEXT: dict[str, str] = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SUCCEEDED: "[green]succeeded[/green]",
    JobState.FAILED: "[red]failed[/red]",
    JobState.CANCELLED: "[yellow]cancelled[/yellow]",
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def render(sink: RichEvents, event: dict[str, Any]) -> None:
    """Draw one event from a job's log (see controller/pipeline/worker.py for their shape)."""
    kind = event.get("type")
    if kind == "progress":
        done, total = _number(event.get("done")), _number(event.get("total"))
        fields = {k: event[k] for k in ("loss", "eta_s") if _number(event.get(k)) is not None}
        sink.progress(str(event.get("task", "")), done or 0.0, total or 0.0, **fields)
    elif kind == "step":
        index, count = _number(event.get("index")), _number(event.get("count"))
        sink.step(str(event.get("step", "")), str(event.get("state", "")), int(index or 0),
                  int(count or 0))
    elif kind == "log":
        sink.log(str(event.get("message", "")))
    elif kind == "error":
        sink.console.print(f"[red]error[/red] {event.get('message', '')}", highlight=False)
    elif kind == "status":
        status = str(event.get("status", ""))
        line = f"job {STATUS_TEXT.get(status, status)}"
        if event.get("attempt", 0) > 1:
            line += f" (attempt {event['attempt']})"
        if event.get("message"):
            line += f": {event['message']}"
        if event.get("models"):
            line += ": registered " + ", ".join(event["models"])
        sink.console.print(line, highlight=False)
    elif kind == "finished":
        sink.log("all steps done; the controller registers the models")


def follow(client: PipelineClient, job_id: str, show: bool, from_seq: int = 0) -> pipeline_pb2.Job:
    """Follow the job to its end; its events drawn when ``show``. Returns the final job."""
    final: pipeline_pb2.Job | None = None
    responses = client.watch(job_id, from_seq, follow=True)
    if not show:
        for response in responses:
            final = response.job if response.HasField("job") else final
    else:
        with RichEvents() as sink:
            for response in responses:
                for event in response.events:
                    render(sink, json.loads(event.json))
                final = response.job if response.HasField("job") else final
    if final is None:
        raise CliError(f"the controller ended the stream of job {job_id} early; see "
                       f"`slmops jobs show {job_id}`", "unavailable")
    return final


def require_success(job: pipeline_pb2.Job) -> None:
    """A job that did not succeed becomes the command's error (exit status 1)."""
    state = job_states.word(job.state)
    if state == JobState.FAILED:
        raise CliError(f"job {job.id} failed: {job.error}", "failed")
    if state == JobState.CANCELLED:
        raise CliError(f"job {job.id} was cancelled" + (f": {job.error}" if job.error else ""),
                       "cancelled")


def interrupted(job_id: str) -> CliError:
    return CliError(f"stopped following; job {job_id} goes on. Follow it again with `slmops jobs "
                    f"logs {job_id} --follow`, stop it with `slmops jobs cancel {job_id}`",
                    "interrupted", 130)
