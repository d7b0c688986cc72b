"""What the registry holds (records), and how names and references are checked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from controller.validation import Invalid

# "pretrained": imported as it is (`slmops models import`), not made by slmops
MODEL_KINDS = ("base", "distilled", "finetuned", "adapter", "pretrained")
# Lowercase, so two names never share a directory on a case-insensitive file system.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_REF_RE = re.compile(r"^(?P<name>[^:]+)(?::(?P<version>[^:]+))?$")
_MAX_VERSION = 10**9


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: int
    kind: str
    params: int
    size_bytes: int
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    created_at_ms: int
    job_id: str
    path: str  # relative to the registry's models_root: "<name>/<version>"
    sha256: str  # of the directory's file list: every file's relative path, size and sha256

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class EvaluationRecord:
    name: str
    version: int
    eval_name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at_ms: int = 0
    job_id: str = ""


def check_name(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise Invalid(f"{field_name}: {value!r} is not a valid model name; use 1-63 lowercase "
                      "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def parse_ref(ref: str, field_name: str = "model") -> tuple[str, int | None]:
    """``"name"`` / ``"name:latest"`` -> (name, None); ``"name:3"`` -> (name, 3)."""
    match = _REF_RE.match(ref or "")
    if match is None:
        raise Invalid(f"{field_name}: {ref!r} is not a model reference; use NAME, NAME:latest "
                      "or NAME:VERSION (e.g. support-student:2)")
    name = check_name(field_name, match["name"])
    version = match["version"]
    if version is None or version == "latest":
        return name, None
    if not version.isdigit() or not 1 <= int(version) < _MAX_VERSION:
        raise Invalid(f"{field_name}: version {version!r} in {ref!r} is not a positive integer "
                      "or 'latest'")
    return name, int(version)
