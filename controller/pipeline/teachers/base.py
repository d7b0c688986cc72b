"""What every teacher is: generation settings, one answer per prompt, and the factory that turns
a recipe's teacher spec into a teacher. Light: torch is imported only by the local teacher."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.pipeline.events import Events

FINISH_REASONS = ("stop", "length", "error")
# What a teacher answers: a user message, or a conversation ({"role", "content"} turns, an
# optional system message first) ending with the user's turn. The same as the harness's Prompt.
Prompt = str | Sequence[Mapping[str, Any]]


class TeacherError(RuntimeError):
    """A teacher that can't be built or can't answer enough; the message says what to do."""


@dataclass(frozen=True)
class GenerationSettings:
    """How a teacher (or the harness) generates answers."""

    max_new_tokens: int = 64  # answers that reach this without ending are "truncated"
    temperature: float = 0.0  # 0 = greedy; > 0 samples
    top_p: float = 1.0  # nucleus sampling mass, used when temperature > 0
    batch_size: int = 32  # prompts per forward pass of a local teacher
    seed: int = 0  # seeds sampling; sent to endpoints that accept it

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"generation setting temperature must be >= 0, got {self.temperature!r}")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation setting top_p must be in (0, 1], got {self.top_p!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"generation setting {name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"generation setting {name} must be a number, got {value!r}")


@dataclass(frozen=True)
class Answer:
    """A teacher's answer to one prompt. ``finish_reason``: "stop" (the answer ended),
    "length" (cut at max_new_tokens) or "error" (no answer; ``error`` says why)."""

    text: str
    finish_reason: str
    error: str = ""

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Answer.finish_reason must be one of {FINISH_REASONS}, "
                             f"got {self.finish_reason!r}")


class Teacher(Protocol):
    def identity(self) -> dict[str, Any]:
        """kind, model, base_url or path, revision: recorded in the labelled data's meta. Stable
        across runs of the same teacher (resuming compares it)."""
        ...

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings,
                 events: Events) -> list[Answer]:
        """One Answer per prompt (a message or a whole conversation), in order. Raises
        TeacherError when the teacher is unusable as a whole (e.g. unreachable); a single failed
        prompt is an Answer with "error"."""
        ...


_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "local": {"model": str, "device": str},
    "openai": {"base_url": str, "model": str, "api_key_env": str, "concurrency": int,
               "timeout_s": (int, float), "retries": int, "backoff_s": (int, float)},
}
_REQUIRED = {"local": ("model",), "openai": ("base_url", "model")}


def make_teacher(spec: Mapping[str, Any]) -> Teacher:
    """Build a teacher from a recipe's spec:

    - ``{"kind": "local", "model": "<dir or hub id>", "device": "auto"}``
    - ``{"kind": "openai", "base_url": "http://host:port/v1", "model": "name",
      "api_key_env": "OPENAI_API_KEY", "concurrency": 8, "timeout_s": 30, "retries": 3}``

    An unknown kind or field, a missing field or a wrong type raises TeacherError naming it.
    This is the only place that reads the API key's environment variable."""
    if not isinstance(spec, Mapping):
        raise TeacherError(f"teacher: expected a mapping with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in _FIELDS:
        raise TeacherError(f"teacher.kind: unknown kind {kind!r}; use one of {sorted(_FIELDS)}")
    fields = _FIELDS[kind]
    for name, value in spec.items():
        if name == "kind":
            continue
        if name not in fields:
            raise TeacherError(f"teacher.{name}: unknown field for kind {kind!r}; "
                               f"known fields: {sorted(fields)}")
        expected = fields[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple)
                                                     else (expected,)))
            raise TeacherError(f"teacher.{name}: expected {names}, got {value!r}")
    for name in _REQUIRED[kind]:
        if not spec.get(name):
            raise TeacherError(f"teacher.{name}: required for kind {kind!r}")
    args = {k: v for k, v in spec.items() if k != "kind"}

    if kind == "local":
        from controller.pipeline.teachers.local_hf import LocalHFTeacher

        return LocalHFTeacher(**args)

    from controller.pipeline.teachers.openai_compat import OpenAITeacher

    key_env = args.pop("api_key_env", "OPENAI_API_KEY")
    return OpenAITeacher(api_key=os.environ.get(key_env) or None, **args)
