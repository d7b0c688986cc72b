"""References to models and data in a recipe, as written, and what they point at.

A **model reference** is one of:

- ``${step.output}`` — an output of an earlier step of the same recipe;
- ``registry:NAME`` or ``registry:NAME:VERSION`` — a registered model (the controller resolves it
  to a directory before the job starts; ``slmops run --local`` asks the local registry);
- ``hf:HUB_ID`` — ``from_pretrained`` on a Hugging Face hub id (needs a network);
- anything else: a filesystem path, relative to the recipe file. Only ``--local`` runs accept
  paths; in a job a string from the wire never becomes a path.

A **data reference** is ``${step.output}`` or a file path. In a job the CLI uploads the file and
the worker gets the stored copy under the string as written (see :func:`recipe.file_refs`).

The parameter types :data:`ModelRef` (a full model), :data:`AnyModelRef` (a full model or a
LoRA adapter on its base) and :data:`DataRef` mark the step parameters that hold references,
so the recipe loader can check them and find them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

ModelRef = NewType("ModelRef", str)
AnyModelRef = NewType("AnyModelRef", str)
DataRef = NewType("DataRef", str)

# What each kind of reference parameter accepts from a step output of a given kind.
ACCEPTS: dict[object, tuple[str, ...]] = {
    ModelRef: ("model",),
    AnyModelRef: ("model", "adapter"),
    DataRef: ("data",),
}
REF_TYPES = tuple(ACCEPTS)

STEP_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_STEP_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_]*)\}$")
_REGISTRY_REF = re.compile(r"^registry:([a-z0-9][a-z0-9._-]{0,62})(?::([0-9]+|latest))?$")


class RefError(ValueError):
    """A reference that can't be parsed; the caller adds where it was written."""


@dataclass(frozen=True)
class StepRef:
    step: str
    output: str

    def __str__(self) -> str:
        return f"${{{self.step}.{self.output}}}"


@dataclass(frozen=True)
class RegistryRef:
    name: str
    version: str | None  # digits or "latest"; None = latest

    def __str__(self) -> str:
        return f"registry:{self.name}" + (f":{self.version}" if self.version else "")


@dataclass(frozen=True)
class HubRef:
    hub_id: str

    def __str__(self) -> str:
        return f"hf:{self.hub_id}"


@dataclass(frozen=True)
class PathRef:
    path: str  # as written; relative paths are taken from the recipe's folder

    def __str__(self) -> str:
        return self.path


Ref = StepRef | RegistryRef | HubRef | PathRef


def parse_model_ref(text: str) -> Ref:
    """Classify a model reference; RefError says what a well-formed one looks like."""
    text = _nonempty(text)
    if text.startswith("registry:"):
        match = _REGISTRY_REF.match(text)
        if not match:
            raise RefError(f"{text!r} is not registry:NAME or registry:NAME:VERSION "
                           "(NAME of lowercase letters, digits, '.', '_', '-'; VERSION a number or "
                           "'latest')")
        return RegistryRef(match.group(1), match.group(2))
    if text.startswith("hf:"):
        hub_id = text[3:].strip()
        if not hub_id or any(c.isspace() for c in hub_id):
            raise RefError(f"{text!r} is not hf:HUB_ID (e.g. hf:HuggingFaceTB/SmolLM2-135M)")
        return HubRef(hub_id)
    return _step_or_path(text)


def parse_data_ref(text: str) -> StepRef | PathRef:
    """Classify a data reference: ``${step.output}`` or a file path."""
    text = _nonempty(text)
    if text.startswith(("registry:", "hf:")):
        raise RefError(f"{text!r}: data is a file path or ${{step.output}}, not a model reference")
    return _step_or_path(text)


def _nonempty(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise RefError(f"expected a reference, got {text!r}")
    return text.strip()


def _step_or_path(text: str) -> StepRef | PathRef:
    match = _STEP_REF.match(text)
    if match:
        return StepRef(match.group(1), match.group(2))
    if "${" in text:
        raise RefError(f"{text!r} is not a well-formed reference; write ${{step_id.output}}, "
                       "e.g. ${data.train}")
    return PathRef(text)
