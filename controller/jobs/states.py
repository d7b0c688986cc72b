"""The states of a pipeline job: one enum for the job store, the manager, the service and the CLI.

The values are the words in the database's ``status`` column and in JSON output; on the wire
they travel as the proto enum ``slmops.v1.JobState`` (``JOB_STATE_<NAME>``), converted here.
"""

from __future__ import annotations

import enum
from typing import cast

from protos import pipeline_pb2

_PREFIX = "JOB_STATE_"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def to_proto(state: str) -> pipeline_pb2.JobState:
    return cast(pipeline_pb2.JobState, pipeline_pb2.JobState.Value(_PREFIX + JobState(state).name))


def from_proto(number: int) -> JobState:
    """ValueError naming the number for 0 (unspecified) or one this code does not know."""
    try:
        return JobState[pipeline_pb2.JobState.Name(number)[len(_PREFIX):]]
    except (ValueError, KeyError):
        raise ValueError(f"job state {number} is not one of {', '.join(JobState)}") from None


def word(number: int) -> str:
    """For display (the CLI): the state's value, or "unknown (N)" for a number this code does
    not know (a controller newer than the CLI), rather than failing the command."""
    try:
        return from_proto(number).value
    except ValueError:
        return f"unknown ({number})"
