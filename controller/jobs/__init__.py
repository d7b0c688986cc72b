"""Jobs: recipes (and evaluations) queued on the controller and run in worker processes.

``JobStore`` (store.py) keeps the jobs table; ``JobManager`` (manager.py) runs the queue;
files.py lays out a job's directory and receives its uploads; specs.py is where the queue
meets the pipeline's recipe format; states.py is the JobState enum, shared with the CLI.

The names below are loaded on first use (PEP 562), so the CLI can import
``controller.jobs.states`` without the queue's machinery (SQLAlchemy, the worker process).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MAX_FILES_BYTES": "files", "Event": "files", "EventLog": "files", "JobFiles": "files",
    "Upload": "files", "JobManager": "manager", "ShuttingDown": "manager", "Submission": "manager",
    "JobState": "states", "ACTIVE": "store", "STATUSES": "store", "TERMINAL": "store",
    "JobRecord": "store", "JobStore": "store", "check_job_id": "store",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
