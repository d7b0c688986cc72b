"""Evaluation rows, read from JSON lines in any of three shapes:

- prompt/answer rows: ``{"prompt": "...", "answer": "..."}`` (the bundled support task's rows
  add ``"intent"``, and evaluation reports per intent when every row has one);
- chat rows, in the OpenAI fine-tuning format: ``{"messages": [{"role", "content"}, ...]}``;
  the last assistant turn is the reference and the turns before it the prompt;
- plain text rows: ``{"text": "..."}``, scored by perplexity only (there is nothing to answer).

A minimal reader of its own: the pipeline's chat-row reader (issue 14, data format) will
replace the chat part once it lands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.jsonl import DataError, numbered_objects

ROLES = ("system", "user", "assistant", "tool")
SHAPES = ('prompt/answer rows {"prompt", "answer"}, chat rows {"messages": [...]} '
          'or text rows {"text"}')


@dataclass(frozen=True)
class EvalRow:
    messages: tuple[dict[str, str], ...] = ()  # the prompt as chat turns; () for a text row
    reference: str | None = None  # the gold answer (None: a text row)
    text: str | None = None  # a text row's text
    intent: str | None = None

    @property
    def prompt(self) -> str:
        """The prompt's last user turn (what a one-turn prompt reads as)."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""

    @property
    def one_turn(self) -> bool:
        """The prompt is one user message (what a device's golden gate can ask)."""
        return len(self.messages) == 1 and self.messages[0]["role"] == "user"

    @property
    def asks(self) -> bool:
        """The row has a prompt to answer (prompt/answer and chat rows do, text rows don't)."""
        return bool(self.messages)

    def wire(self) -> dict[str, Any]:
        """The row as JSON again (a one-turn chat row comes back as a prompt/answer row)."""
        out: dict[str, Any]
        if self.text is not None:
            out = {"text": self.text}
        elif self.one_turn:
            out = {"prompt": self.messages[0]["content"]}
            if self.reference is not None:
                out["answer"] = self.reference
        else:
            out = {"messages": list(self.messages) + ([{"role": "assistant", "content": self.reference}]
                                                      if self.reference is not None else [])}
        if self.intent is not None:
            out["intent"] = self.intent
        return out


def parse_row(raw: Mapping[str, Any], where: str, *, need_reference: bool = True) -> EvalRow:
    """One row of any shape; DataError naming ``where`` and the field when it fits none. Without
    ``need_reference``, a prompt alone (``{"prompt"}``, or turns ending with a user turn) is a row
    too (a build compares such answers with the fp32 model's only)."""
    intent = raw.get("intent")
    if intent is not None and not isinstance(intent, str):
        raise DataError(f"{where}: field 'intent' is not a string")
    if "messages" in raw:
        return _chat_row(raw["messages"], where, intent, need_reference)
    if "prompt" in raw or "answer" in raw:
        for name in ("prompt", "answer") if need_reference or "answer" in raw else ("prompt",):
            if not isinstance(raw.get(name), str) or not raw[name].strip():
                raise DataError(f"{where}: field {name!r} is missing or not a non-empty string")
        return EvalRow(({"role": "user", "content": raw["prompt"]},), raw.get("answer"), None, intent)
    if "text" in raw:
        if not isinstance(raw["text"], str) or not raw["text"].strip():
            raise DataError(f"{where}: field 'text' is not a non-empty string")
        return EvalRow(text=raw["text"], intent=intent)
    fields = ", ".join(map(repr, raw)) or "no fields"
    raise DataError(f"{where}: a row is one of {SHAPES}; this one has {fields}")


def _chat_row(messages: Any, where: str, intent: str | None, need_reference: bool) -> EvalRow:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' is not a non-empty list of {{role, content}} turns")
    turns: list[dict[str, str]] = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, Mapping) or turn.get("role") not in ROLES \
                or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: messages[{i}] is not a turn {{\"role\": one of {', '.join(ROLES)}, "
                            "\"content\": a string}")
        turns.append({"role": str(turn["role"]), "content": str(turn["content"])})
    if not need_reference and turns[-1]["role"] == "user":
        return EvalRow(tuple(turns), None, None, intent)
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        raise DataError(f"{where}: messages: the last turn is the reference answer, so it must be a "
                        "non-empty assistant turn")
    if not any(t["role"] == "user" for t in turns[:-1]):
        raise DataError(f"{where}: messages: no user turn before the reference answer")
    return EvalRow(tuple(turns[:-1]), turns[-1]["content"], None, intent)


def parse_rows(raw_rows: Sequence[Mapping[str, Any]], origin: str = "rows", *,
               need_reference: bool = True) -> list[EvalRow]:
    rows = [parse_row(r, f"{origin}: row {number}", need_reference=need_reference)
            for number, r in enumerate(raw_rows, start=1)]
    if not rows:
        raise DataError(f"{origin}: no rows; each line is one of {SHAPES}")
    return rows


def read_rows(path: Path, *, need_reference: bool = True) -> list[EvalRow]:
    """The rows of a JSONL file; DataError naming the file, the line and the field of the first
    bad one (``data/test.jsonl:7: messages[1].role: ...``). Blank lines are skipped."""
    rows = [parse_row(raw, where, need_reference=need_reference) for where, raw in numbered_objects(path)]
    if not rows:
        raise DataError(f"{path}: no examples; each line is one of {SHAPES}")
    return rows


def has_intents(rows: Sequence[EvalRow]) -> bool:
    return bool(rows) and all(r.intent is not None for r in rows)
