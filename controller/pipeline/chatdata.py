"""The data format of training and distillation: conversations, one JSON object a line.

Two row shapes are accepted (extra keys such as "id" or "intent" are kept and ignored):

- a conversation in the OpenAI fine-tuning format::

    {"messages": [{"role": "system", "content": "..."},      # optional, only first
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}, ...]}

  roles are system, user and assistant; every content is a non-empty string; the first turn
  after the optional system message is the user's; "weight" (0 or 1, default 1) is allowed on
  assistant turns only, and a 0 keeps that turn as context without training on it; at least
  one assistant turn has weight 1;
- a prompt and its answer: ``{"prompt": "...", "answer": "...", "system": "..."}`` (system
  optional), the conversation [system, user: prompt, assistant: answer].

Prompts for distillation (:func:`read_prompts`) are the same rows without the answer: a
conversation that ends with a user turn, or ``{"prompt"}``.

Rows are checked with pydantic (types, missing fields, roles) and the rules above; an error
names the file, the line and the field: ``data/train.jsonl:17: messages[2].role: 'bot' is not
one of system, user, assistant``. Evaluation reads its rows through the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.pipeline.jsonl import DataError, numbered_objects

ROLES = ("system", "user", "assistant")
# The ``columns`` a step declares for a data parameter in these formats (see steps.params.param).
CONVERSATIONS, PROMPTS = ("format:conversations",), ("format:prompts",)
SHAPES = 'a row is {"messages": [...]} or {"prompt": ..., "answer": ...}'
PROMPT_SHAPES = 'a prompt is {"messages": [...]} or {"prompt": ...}'


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str
    weight: Literal[0, 1] | None = None


class _ChatRow(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    messages: list[_Message]


class _PromptRow(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    prompt: str
    answer: str
    system: str | None = None


class _PromptOnlyRow(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    prompt: str
    system: str | None = None


@dataclass(frozen=True)
class Conversation:
    """One checked row: messages as {"role", "content"[, "weight"]} dicts, where it came from
    ("file:line" or "example N"), and the row's other fields (id, intent, ...)."""

    messages: tuple[dict[str, Any], ...]
    where: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    chat: bool = True  # False: it was a prompt/answer row

    @property
    def trained(self) -> list[int]:
        """Indices of the assistant turns that carry the loss."""
        return [i for i, m in enumerate(self.messages)
                if m["role"] == "assistant" and m.get("weight", 1) == 1]

    def plain(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them (role and content only)."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]


def _loc(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: Mapping[str, Any]) -> str:
    kind, value, loc = error["type"], error.get("input"), error["loc"]
    name = loc[-1] if loc else ""
    if kind == "missing":
        return "missing"
    if kind == "literal_error" and name == "role":
        return f"{value!r} is not one of {', '.join(ROLES)}"
    if kind == "literal_error" and name == "weight":
        return f"must be 0 or 1, got {value!r}"
    if kind == "string_type":
        return f"must be a string, got {type(value).__name__}"
    if kind == "list_type":
        return f"must be a list of messages, got {type(value).__name__}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be an object with role and content, got {type(value).__name__}"
    return str(error["msg"])


def _refuse(where: str, loc: str, problem: str) -> DataError:
    return DataError(f"{where}: {loc}: {problem}")


def _validate(model: type[BaseModel], row: Mapping[str, Any], where: str) -> BaseModel:
    try:
        return model.model_validate(row)
    except ValidationError as e:
        first = e.errors()[0]
        raise _refuse(where, _loc(first["loc"]) or "row", _problem(first)) from None


def conversation(row: Any, where: str, *, needs_answer: bool = True) -> Conversation:
    """A row checked and made a Conversation; DataError ``{where}: {field}: {problem}``.
    ``needs_answer`` False: a prompt for a teacher (ends with a user turn, or has no answer)."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        if "prompt" in row or "answer" in row:
            raise _refuse(where, "prompt" if "prompt" in row else "answer",
                          "give either messages or prompt and answer, not both")
        checked = _validate(_ChatRow, row, where)
        assert isinstance(checked, _ChatRow)
        messages = []
        for index, (message, raw) in enumerate(zip(checked.messages, row["messages"], strict=True)):
            item: dict[str, Any] = {"role": message.role, "content": message.content}
            if "weight" in raw and raw["weight"] is not None:
                if isinstance(raw["weight"], bool):
                    raise _refuse(where, f"messages[{index}].weight",
                                  f"must be 0 or 1, got {raw['weight']!r}")
                if message.role != "assistant":
                    raise _refuse(where, f"messages[{index}].weight", "only assistant turns take a weight")
                item["weight"] = int(raw["weight"])
            messages.append(item)
        extra = {k: v for k, v in row.items() if k != "messages"}
        return _checked(tuple(messages), where, extra, needs_answer)
    if "prompt" not in row and "answer" not in row:
        raise _refuse(where, "messages", f"missing ({SHAPES if needs_answer else PROMPT_SHAPES})")
    checked_row = _validate(_PromptRow if needs_answer else _PromptOnlyRow, row, where)
    system = getattr(checked_row, "system", None)
    turns: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
    turns.append({"role": "user", "content": getattr(checked_row, "prompt")})  # noqa: B009 - two row types
    if needs_answer:
        turns.append({"role": "assistant", "content": getattr(checked_row, "answer")})  # noqa: B009 - same
    names = {"system": "system", "user": "prompt", "assistant": "answer"}
    for turn in turns:
        if not turn["content"].strip():
            raise _refuse(where, names[turn["role"]], "empty")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "answer", "system")}
    return Conversation(tuple(turns), where, extra, chat=False)


def _checked(messages: tuple[dict[str, Any], ...], where: str, extra: dict[str, Any],
             needs_answer: bool) -> Conversation:
    if not messages:
        raise _refuse(where, "messages", "empty; a conversation needs a user turn"
                      + (" and an assistant turn" if needs_answer else ""))
    for index, message in enumerate(messages):
        if not message["content"].strip():
            raise _refuse(where, f"messages[{index}].content", "empty")
        if message["role"] == "system" and index > 0:
            raise _refuse(where, f"messages[{index}].role", "'system' is allowed only as the first message")
    first = 1 if messages[0]["role"] == "system" else 0
    if first >= len(messages):
        raise _refuse(where, "messages", "only a system message; a conversation needs a user turn")
    if messages[first]["role"] != "user":
        raise _refuse(where, f"messages[{first}].role",
                      f"the conversation starts with the user's turn (after an optional system "
                      f"message), got {messages[first]['role']!r}")
    result = Conversation(messages, where, extra)
    if needs_answer:
        if not any(m["role"] == "assistant" for m in messages):
            raise _refuse(where, "messages", "no assistant turn to train on")
        if not result.trained:
            raise _refuse(where, "messages", "every assistant turn has weight 0; nothing to train on")
    elif messages[-1]["role"] != "user":
        raise _refuse(where, f"messages[{len(messages) - 1}].role",
                      f"a prompt ends with the user's turn for the teacher to answer, got "
                      f"{messages[-1]['role']!r}")
    return result


def _read(path: Path, needs_answer: bool) -> list[Conversation]:
    rows = [conversation(row, where, needs_answer=needs_answer) for where, row in numbered_objects(path)]
    if not rows:
        raise DataError(f"{path}: no rows ({SHAPES if needs_answer else PROMPT_SHAPES})")
    return rows


def read_conversations(path: Path) -> list[Conversation]:
    """Every row of a training file; DataError names the first bad one by file:line: field."""
    return _read(path, needs_answer=True)


def read_prompts(path: Path) -> list[Conversation]:
    """Every row of a prompts file (conversations ending with a user turn, or {"prompt"})."""
    return _read(path, needs_answer=False)


def as_conversations(examples: Sequence[Any]) -> list[Conversation]:
    """Rows already in memory (dicts, or Conversations as they are), named "example N"."""
    return [e if isinstance(e, Conversation) else conversation(e, f"example {i}")
            for i, e in enumerate(examples)]


def to_row(conv: Conversation) -> dict[str, Any]:
    """The row as it would be written back: its own shape, its extra fields first."""
    if conv.chat:
        return {**conv.extra, "messages": [dict(m) for m in conv.messages]}
    row = dict(conv.extra)
    for message in conv.messages:
        key = {"system": "system", "user": "prompt", "assistant": "answer"}[message["role"]]
        row[key] = message["content"]
    return row


def check_file(path: Path, columns: Sequence[str]) -> None:
    """Check a data file before a run starts: rows in the format ``columns`` names
    (:data:`CONVERSATIONS`, :data:`PROMPTS`), else JSONL rows with those string fields."""
    if tuple(columns) == CONVERSATIONS:
        read_conversations(path)
    elif tuple(columns) == PROMPTS:
        read_prompts(path)
    else:
        from controller.pipeline.jsonl import read_jsonl

        read_jsonl(path, required=tuple(columns))
