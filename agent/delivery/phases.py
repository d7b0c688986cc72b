"""The phases of a deployment on a device: one enum for the agent, the controller and the CLI.

The values are the words stored in the controller's database, written to the agent's state
file and shown in JSON output; on the wire they travel as the proto enum
``slmops.v1.DeploymentPhase`` (``DEPLOYMENT_PHASE_<NAME>``), converted here.
"""

from __future__ import annotations

import enum
from typing import cast

from protos import delivery_pb2

_PREFIX = "DEPLOYMENT_PHASE_"


class DeploymentPhase(enum.StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    GATING = "gating"
    ACTIVE = "active"
    FAILED = "failed"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"
    # Never sent by an agent: what the controller records when a device reports a phase number
    # it does not know (a newer agent); the report's reason then carries the number.
    UNKNOWN = "unknown"


# Where a release ends: the agent starts nothing more for it.
SETTLED = frozenset({DeploymentPhase.ACTIVE, DeploymentPhase.FAILED, DeploymentPhase.REFUSED,
                     DeploymentPhase.ROLLED_BACK})
# What an agent may report (every phase but UNKNOWN).
REPORTED = tuple(p for p in DeploymentPhase if p is not DeploymentPhase.UNKNOWN)


class UnknownPhase(ValueError):
    """A phase number this code does not know, or none (0, UNSPECIFIED)."""

    def __init__(self, number: int) -> None:
        self.number = number
        what = "no phase (0, unspecified)" if number == 0 else f"unknown phase {number}"
        super().__init__(f"deployment_phase: {what}; expected one of {', '.join(REPORTED)}")


def to_proto(phase: str) -> delivery_pb2.DeploymentPhase:
    """The wire number of a phase; "" (no report yet) and UNKNOWN are UNSPECIFIED (0)."""
    if not phase or phase == DeploymentPhase.UNKNOWN:
        return delivery_pb2.DEPLOYMENT_PHASE_UNSPECIFIED
    return cast(delivery_pb2.DeploymentPhase,
                delivery_pb2.DeploymentPhase.Value(_PREFIX + DeploymentPhase(phase).name))


def from_proto(number: int) -> DeploymentPhase:
    """The phase of a wire number; UnknownPhase for 0 or a number this code does not know."""
    if number == delivery_pb2.DEPLOYMENT_PHASE_UNSPECIFIED:
        raise UnknownPhase(number)
    try:
        return DeploymentPhase[delivery_pb2.DeploymentPhase.Name(number)[len(_PREFIX):]]
    except (ValueError, KeyError):
        raise UnknownPhase(number) from None
