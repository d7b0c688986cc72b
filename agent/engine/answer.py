"""One greedy answer to a prompt, taken the way the build's check (controller/build/measure.py)
and the device's gate (agent/delivery/gate.py) both take it, so the device judges a variant as
the build did: the model's chat template (else the plain prompt format), at most
``max_new_tokens`` within the context, timed from the call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.chat_format import prompt_text
from agent.engine.engine import Engine
from agent.engine.sampling import SamplingParams


class NoRoom(ValueError):
    """The prompt leaves no room in the model's context for an answer."""


@dataclass(frozen=True)
class Answer:
    text: str  # as generated (chat_format.clean_answer cuts it at the end marker)
    tokens: int
    first_s: float  # to the first piece of text
    total_s: float


def greedy_answer(engine: Engine, prompt: str, max_new_tokens: int,
                  on_first_piece: Callable[[], None] | None = None) -> Answer:
    """Raises NoRoom, or the engine's ParamError."""
    text = (engine.chat_prompt([{"role": "user", "content": prompt}])
            if engine.info.chat_template is not None else prompt_text(prompt))
    context = engine.info.context_length
    room = context - len(engine.encode(text))
    if room < 1:
        raise NoRoom(f"the prompt does not fit the model's context ({context} tokens)")
    started = time.perf_counter()
    first = 0.0
    stream = engine.stream(text, SamplingParams(max_tokens=min(max_new_tokens, room), temperature=0.0))
    pieces: list[str] = []
    for piece in stream:
        if not pieces:
            first = time.perf_counter() - started
            if on_first_piece is not None:
                on_first_piece()
        pieces.append(piece.text)
    total = time.perf_counter() - started
    return Answer("".join(pieces), stream.completion_tokens, first or total, total)
