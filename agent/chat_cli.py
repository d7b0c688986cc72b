"""Talking to a model in the terminal: the loop behind `slmops-agent chat` (and `slmops chat`,
which brings its own generator for a Hugging Face model).

A :class:`Reply` streams the answer's text and, once exhausted, says how many tokens the prompt
and the answer took; anything that makes one from the conversation so far can be chatted with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

EXIT_WORDS = ("/exit", "/quit")


class Reply(Protocol):
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None

    def __iter__(self) -> Iterator[Any]: ...  # pieces: str, or anything with a ``text``


Respond = Callable[[list[dict[str, str]]], Reply]


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _text(piece: Any) -> str:
    return piece if isinstance(piece, str) else str(piece.text)


def answer(respond: Respond, messages: list[dict[str, str]], out: TextIO | None = None) -> Answer:
    """One reply to ``messages``, its text written to ``out`` as it comes."""
    reply = respond(messages)
    parts = []
    for piece in reply:
        text = _text(piece)
        parts.append(text)
        if out is not None:
            out.write(text)
            out.flush()
    return Answer("".join(parts), reply.prompt_tokens, reply.completion_tokens, reply.finish_reason or "stop")


def one_shot(respond: Respond, model: str, message: str, system: str = "") -> dict[str, Any]:
    """What `chat --json` prints: the answer to one message, and its usage."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": message})
    got = answer(respond, messages)
    return {"model": model, "answer": got.text, "finish_reason": got.finish_reason,
            "usage": {"prompt_tokens": got.prompt_tokens, "completion_tokens": got.completion_tokens,
                      "total_tokens": got.prompt_tokens + got.completion_tokens}}


def interactive(respond: Respond, system: str, read: Callable[[], str], out: TextIO) -> int:
    """Chat until end of input (Ctrl-D) or /exit, keeping the history; returns the turns taken.
    ``read`` returns the next line and raises EOFError at the end of input."""
    history = [{"role": "system", "content": system}] if system else []
    turns = 0
    while True:
        try:
            line = read().strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return turns
        if line in EXIT_WORDS:
            return turns
        if not line:
            continue
        history.append({"role": "user", "content": line})
        got = answer(respond, history, out)
        out.write("\n" if got.finish_reason != "length" else " [cut at --max-tokens]\n")
        history.append({"role": "assistant", "content": got.text})
        turns += 1
