"""JobManager: the controller's job queue. Each job runs in a worker process, at most
``max_concurrent`` at once, oldest first.

A worker is ``python -m controller.pipeline.worker`` in its own process group, killed by the
kernel if the controller dies (PR_SET_PDEATHSIG, set by a small launcher before it execs). The
manager tails the job's events to keep its progress current. Only when the worker exits 0 does
it register the worker's result.json with the registry; then the job has succeeded. A cancel
sends SIGTERM to the worker's group (SIGKILL after a grace period) and registers nothing. Jobs
a dead controller left running are queued again at start and resume in the same work
directory, skipping finished steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.jobs import specs
from controller.jobs.files import Event, EventLog, JobFiles, Upload, clear_staging
from controller.jobs.progress import Progress
from controller.jobs.states import JobState
from controller.jobs.store import ACTIVE, JobRecord, JobStore, new_job_id
from controller.jobs.worker_process import EXIT_CANCELLED, EXIT_OK, WorkerProcess
from controller.pipeline.jsonl import write_atomic
from controller.registry import ModelRegistry
from controller.store import StoreError
from controller.validation import Invalid

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 1.0
LOG_TAIL_CHARS = 1500


class ShuttingDown(Exception):
    """The controller is stopping; the caller may try again once it is back."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Submission:
    kind: str  # "recipe" or "eval"
    recipe: specs.CheckedRecipe
    upload: Upload  # finished: its files are in upload.dir, named by their sha256
    inputs: dict[str, str]  # the file's name as written in the recipe -> its sha256
    models: dict[str, Path]  # registry reference as written -> the version's directory
    target: str = ""  # eval jobs: the model, "name:version"
    eval_name: str = ""


@dataclass
class _Run:
    job_id: str
    worker: WorkerProcess | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    last_error: str = ""
    progress: Progress = field(default_factory=Progress)


class JobManager:
    def __init__(self, store: JobStore, registry: ModelRegistry, jobs_root: Path, *,
                 max_concurrent: int = 1, cancel_grace_s: float = 10.0, poll_s: float = 0.25,
                 python: str = sys.executable) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent: {max_concurrent} must be at least 1")
        self.store, self.registry = store, registry
        self.jobs_root = Path(jobs_root)
        self.max_concurrent = max_concurrent
        self.poll_s = poll_s
        self._grace_s = cancel_grace_s
        self._python = python
        self._runs: dict[str, _Run] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._scheduler: asyncio.Task[None] | None = None

    def files(self, job_id: str) -> JobFiles:
        return JobFiles.of(self.jobs_root, job_id)

    def events(self, job_id: str) -> EventLog:
        return EventLog(self.files(job_id).events)

    # lifecycle
    async def start(self) -> None:
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        clear_staging(self.jobs_root)
        for job in await asyncio.to_thread(self.store.requeue_interrupted):
            log.info("job %s was running when the controller stopped; it resumes", job.id)
            self.events(job.id).append({"type": "status", "status": JobState.QUEUED, "message":
                                        "the controller restarted; the job resumes"})
        self._scheduler = asyncio.create_task(self._schedule(), name="job-scheduler")

    async def stop(self) -> None:
        """Workers get SIGTERM (they keep their checkpoints) and their jobs go back in the
        queue, to resume when a controller starts again."""
        self._stopping = True
        self._wake.set()
        runs = list(self._runs.values())
        await asyncio.gather(*(self._terminate(run) for run in runs))
        await asyncio.gather(*(run.task for run in runs if run.task is not None),
                             return_exceptions=True)
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler

    # submit and cancel
    async def submit(self, sub: Submission) -> JobRecord:
        if self._stopping:
            raise ShuttingDown("the controller is shutting down; submit the job again later")
        job = JobRecord(id=new_job_id(), kind=sub.kind, recipe_name=sub.recipe.name,
                        status=JobState.QUEUED, created_at_ms=_now_ms(), target=sub.target)
        await asyncio.to_thread(self._prepare, job, sub)
        self._wake.set()
        return job

    def _prepare(self, job: JobRecord, sub: Submission) -> None:
        files = self.files(job.id)
        try:
            files.root.mkdir(parents=True)
            os.rename(sub.upload.dir, files.inputs)  # both under jobs_root: one file system
            write_atomic(files.recipe, sub.recipe.text.encode("utf-8"))
            write_atomic(files.inputs_json, json.dumps(
                {name: str(files.inputs / digest) for name, digest in sub.inputs.items()},
                indent=2).encode())
            write_atomic(files.models_json, json.dumps(
                {ref: str(path) for ref, path in sub.models.items()}, indent=2).encode())
            if sub.eval_name:
                write_atomic(files.root / "eval.json", json.dumps(
                    {"target": sub.target, "eval_name": sub.eval_name}).encode())
            files.work.mkdir()
            EventLog(files.events).append({"type": "status", "status": JobState.QUEUED})
            self.store.create(job)
        except BaseException:
            sub.upload.discard()
            shutil.rmtree(files.root, ignore_errors=True)
            raise

    async def cancel(self, job_id: str) -> JobRecord:
        job = await asyncio.to_thread(self.store.get, job_id)
        run = self._runs.get(job_id)
        if run is None and job.status == JobState.QUEUED:
            done = await asyncio.to_thread(self.store.finish, job_id, JobState.CANCELLED, _now_ms(),
                                           expected=(JobState.QUEUED,))
            if done is not None:
                self.events(job_id).append({"type": "status", "status": JobState.CANCELLED})
                return done
            run = self._runs.get(job_id)  # it started meanwhile
        if run is not None:  # the run ends it as cancelled, now or once its worker starts
            run.cancel_requested = True
            await self._terminate(run)
            deadline = time.monotonic() + self._grace_s + 10
            while (job := await asyncio.to_thread(self.store.get, job_id)).status in ACTIVE \
                    and time.monotonic() < deadline:
                await asyncio.sleep(self.poll_s)
            return job
        if job.status == JobState.RUNNING:  # no worker in this controller runs it
            done = await asyncio.to_thread(self.store.finish, job_id, JobState.CANCELLED, _now_ms(),
                                           expected=(JobState.RUNNING,))
            if done is not None:
                self.events(job_id).append({"type": "status", "status": JobState.CANCELLED})
        return await asyncio.to_thread(self.store.get, job_id)

    async def _terminate(self, run: _Run) -> None:
        if run.worker is not None and not await run.worker.terminate(self._grace_s):
            log.warning("job %s: the worker ignored SIGTERM for %.0f s; it was killed",
                        run.job_id, self._grace_s)

    # watching
    async def watch(self, job_id: str, from_seq: int, follow: bool
                    ) -> AsyncIterator[tuple[list[Event], JobRecord | None]]:
        """Batches of events from ``from_seq``; the last batch comes with the job. The status
        event is written before the job's final status, so a finished job's log is complete."""
        await asyncio.to_thread(self.store.get, job_id)  # NotFound before anything is sent
        reader = self.events(job_id).reader(from_seq)
        while True:
            job = await asyncio.to_thread(self.store.get, job_id)
            batch = reader.read()
            if not follow or job.finished:
                yield batch + reader.read(), job
                return
            if batch:
                yield batch, None
            if self._stopping:
                raise ShuttingDown("the controller is shutting down; follow the job again when "
                                   "it is back (it resumes)")
            await asyncio.sleep(self.poll_s)

    # running
    async def _schedule(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._start_queued()
            except (StoreError, OSError) as e:
                log.error("job scheduler: %s; retrying", e)
                await asyncio.sleep(1.0)
                self._wake.set()
            await self._wake.wait()

    async def _start_queued(self) -> None:
        free = self.max_concurrent - len(self._runs)
        if free <= 0:
            return
        queued = [j for j in await asyncio.to_thread(self.store.queued) if j.id not in self._runs]
        for job in queued[:free]:
            run = self._runs[job.id] = _Run(job.id)  # before the await: cancel() must find it
            started = await asyncio.to_thread(self.store.start, job.id, _now_ms())
            if started is None:  # cancelled meanwhile
                del self._runs[job.id]
                continue
            run.task = asyncio.create_task(self._run(run, started), name=f"job-{job.id}")

    async def _run(self, run: _Run, job: JobRecord) -> None:
        try:
            await self._attempt(run, job)
        except Exception as e:  # logged with its traceback; a job must end failed, never stay "running"
            log.exception("job %s: unexpected error", job.id)
            await self._finish(job.id, JobState.FAILED, error=f"the controller could not run it: {e}")
        finally:
            del self._runs[job.id]
            self._wake.set()

    async def _attempt(self, run: _Run, job: JobRecord) -> None:
        files = self.files(job.id)
        events = EventLog(files.events)
        if run.cancel_requested or self._stopping:
            await self._conclude(run, job, files, None)
            return
        events.append({"type": "status", "status": JobState.RUNNING, "attempt": job.attempts})
        tail = events.reader(at_end=True)
        run.worker = worker = await WorkerProcess.start(self._python, files)
        if run.cancel_requested or self._stopping:  # asked while the worker was being started
            await self._terminate(run)
        written = 0.0
        while True:
            done, _ = await asyncio.wait({worker.exited}, timeout=self.poll_s)
            step_changed = self._absorb(run, tail.read())
            now = time.monotonic()
            if run.progress.data and (step_changed or now - written >= PROGRESS_WRITE_INTERVAL_S):
                await asyncio.to_thread(self.store.set_progress, job.id, run.progress.data)
                written = now
            if done:
                break
        self._absorb(run, tail.read())
        await self._conclude(run, job, files, worker.exited.result())

    @staticmethod
    def _absorb(run: _Run, events: list[Event]) -> bool:
        step_changed = False
        for event in events:
            step_changed |= run.progress.apply(event.data)
            if event.type == "error":
                run.last_error = str(event.data.get("message", ""))
        return step_changed

    async def _conclude(self, run: _Run, job: JobRecord, files: JobFiles, code: int | None) -> None:
        """``code`` is the worker's exit status; None if it was never started."""
        if run.cancel_requested:
            await self._finish(job.id, JobState.CANCELLED)
        elif self._stopping:
            EventLog(files.events).append({"type": "status", "status": JobState.QUEUED, "message":
                                           "the controller stopped; the job resumes when it "
                                           "starts again"})
            await asyncio.to_thread(self.store.requeue, job.id)
        elif code is None:
            raise AssertionError("a worker that never started is cancelled or requeued")
        elif code == EXIT_OK:
            try:
                models, result = await asyncio.to_thread(self._collect, job, files)
            except (Invalid, StoreError, OSError, ValueError) as e:
                await self._finish(job.id, JobState.FAILED, error=f"the job ran, but its models could "
                                   f"not be registered: {e}")
            else:
                await self._finish(job.id, JobState.SUCCEEDED, models=models, result=result)
        elif code == EXIT_CANCELLED:
            await self._finish(job.id, JobState.CANCELLED, error="the worker was stopped from outside "
                               "the controller (SIGTERM)")
        else:
            await self._finish(job.id, JobState.FAILED, error=run.last_error or self._crash(files, code))

    @staticmethod
    def _crash(files: JobFiles, code: int) -> str:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        try:
            tail = files.worker_log.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            tail = ""
        return f"the worker {how}" + (f"; its output ended with:\n{tail}" if tail else "")

    def _collect(self, job: JobRecord, files: JobFiles) -> tuple[list[str], dict[str, Any]]:
        """Register what the worker made (or store an eval job's metrics)."""
        if job.kind == "eval":
            metrics = specs.eval_metrics(files.work)
            meta = json.loads((files.root / "eval.json").read_text())
            self.registry.add_evaluation(job.target, meta["eval_name"], metrics, job.id)
            return [], metrics
        entries = specs.result_entries(files.result, files.work)
        records = self.registry.register(entries, job.id) if entries else []
        return [r.ref for r in records], {}

    async def _finish(self, job_id: str, status: str, *, error: str = "",
                      models: list[str] | None = None, result: dict[str, Any] | None = None) -> None:
        self.events(job_id).append({"type": "status", "status": status, "error": error,
                                    "models": models or []})
        await asyncio.to_thread(self.store.finish, job_id, status, _now_ms(), error=error,
                                models=models or [], result=result)
