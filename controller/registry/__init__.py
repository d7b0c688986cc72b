"""The model registry: every model the pipeline makes, as a numbered version with its files,
kind, size, metrics and lineage, plus evaluations run on it later.

``ModelRegistry(db_url, models_root)`` (registry/sql.py) keeps the rows in the controller's
database and the files under ``models_root/<name>/<version>/``. A reference is ``NAME``,
``NAME:latest`` or ``NAME:VERSION``. Each version may have device variants, one per profile
(registry/variants.py), passed or failed; only a passed one is deployable.
"""

from __future__ import annotations

from controller.registry.records import (
    MODEL_KINDS,
    EvaluationRecord,
    ModelRecord,
    check_name,
    parse_ref,
)
from controller.registry.removal import InUse
from controller.registry.sql import ModelRegistry
from controller.registry.variants import NotDeployable, VariantRecord
from controller.store import Conflict, NotFound
from controller.validation import Invalid

__all__ = [
    "MODEL_KINDS",
    "Conflict",
    "EvaluationRecord",
    "InUse",
    "Invalid",
    "ModelRecord",
    "ModelRegistry",
    "NotDeployable",
    "NotFound",
    "VariantRecord",
    "check_name",
    "parse_ref",
]
