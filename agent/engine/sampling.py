"""Sampling parameters of one generation, validated the way OpenAI's API validates them.

``validate`` raises :class:`ParamError` naming the field (the HTTP layer turns it into a 400
with that ``param``). ``max_tokens=None`` means "up to the end of the context".
``min_tokens`` (an extension, as in vLLM) keeps the model from ending its answer sooner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_SEED = 2**63 - 1


class ParamError(ValueError):
    """A request parameter that can't be honoured; ``field`` names it (OpenAI's ``param``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0  # the end of the answer is suppressed before this many tokens (vLLM's option)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def validate(self, context_length: int | None, prompt_tokens: int = 0) -> None:
        """Raise ParamError for the first bad field. With ``prompt_tokens`` it also checks that
        the prompt leaves room in the context and that ``max_tokens`` fits after it. With
        ``context_length=None`` (the model is not known yet) only types and ranges are checked."""
        room = None if context_length is None else context_length - prompt_tokens
        if context_length is not None and room is not None and prompt_tokens and room < 1:
            raise ParamError("prompt", f"the prompt is {prompt_tokens} tokens, this model's context "
                             f"is {context_length}; shorten the prompt to at most "
                             f"{context_length - 1} tokens")
        if self.max_tokens is not None:
            if not _is_int(self.max_tokens) or self.max_tokens < 1:
                raise ParamError("max_tokens", f"max_tokens must be a positive integer, got "
                                 f"{self.max_tokens!r}")
            if room is not None and self.max_tokens > room:
                raise ParamError("max_tokens", f"max_tokens is {self.max_tokens}, but this model's "
                                 f"context is {context_length} tokens and the prompt uses "
                                 f"{prompt_tokens}; ask for at most {room}")
        too_many = _is_int(self.max_tokens) and _is_int(self.min_tokens) and self.min_tokens > self.max_tokens
        if not _is_int(self.min_tokens) or self.min_tokens < 0 or too_many:
            raise ParamError("min_tokens", f"min_tokens must be a non-negative integer no larger than "
                             f"max_tokens, got {self.min_tokens!r}")
        if not _is_number(self.temperature) or not 0 <= self.temperature <= 2:
            raise ParamError("temperature", f"temperature must be a number from 0 to 2, got "
                             f"{self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ParamError("top_p", f"top_p must be a number greater than 0 and at most 1, got "
                             f"{self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ParamError("top_k", f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP or not all(
                isinstance(s, str) and s for s in self.stop):
            raise ParamError("stop", f"stop must be up to {MAX_STOP} non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise ParamError("seed", f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
