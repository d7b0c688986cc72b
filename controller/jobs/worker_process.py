"""One worker process: ``python -m controller.pipeline.worker`` for a job, in its own process
group, dying with the controller, stopped with SIGTERM (then SIGKILL) to the whole group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from controller.child_launcher import with_parent_death
from controller.jobs.files import JobFiles

WORKER_MODULE = "controller.pipeline.worker"
EXIT_OK, EXIT_CANCELLED = 0, 3


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.exited: asyncio.Task[int] = asyncio.create_task(proc.wait())

    @classmethod
    async def start(cls, python: str, files: JobFiles) -> WorkerProcess:
        """The worker for the job in ``files``; its stdout and stderr go to worker.log."""
        with Path(files.worker_log).open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *with_parent_death([python, "-m", WORKER_MODULE,
                                    "--recipe", str(files.recipe), "--work-dir", str(files.work),
                                    "--events", str(files.events), "--inputs-json", str(files.inputs_json),
                                    "--models-json", str(files.models_json)]),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=files.root,
                start_new_session=True)
        return cls(proc)

    def signal(self, sig: int) -> None:
        # Only while it is unreaped: until then its pid, and so its group's id, can't be reused.
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    async def terminate(self, grace_s: float) -> bool:
        """SIGTERM to the group; SIGKILL if it is still there after ``grace_s``. False if it
        had to be killed."""
        if self.exited.done():
            return True
        self.signal(signal.SIGTERM)
        done, _ = await asyncio.wait({self.exited}, timeout=grace_s)
        if not done:
            self.signal(signal.SIGKILL)
        return bool(done)
