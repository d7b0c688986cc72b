"""What a teacher's answer must be to be kept for distillation, by name (the distill step's
``validator``). Every answer is also checked for being empty, cut off at ``max_new_tokens`` and
longer than ``max_answer_chars`` (controller/pipeline/synth.py); these are checks on top.

A validator takes (prompt, answer) and returns None to keep the answer or a short reason to
drop it (counted per reason in the step's report).
"""

from __future__ import annotations

import json
from collections.abc import Callable

Validator = Callable[[str, str], "str | None"]


def json_answer(prompt: str, answer: str) -> str | None:
    """The answer is one JSON value (a task that asks for JSON output). Code fences around it
    (```json ... ```), which chat models add, are allowed and stripped."""
    text = answer.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        json.loads(text)
    except ValueError:
        return "not valid JSON"
    return None


def named(name: str) -> Validator | None:
    """The validator called ``name``: "none", "json", or "support" (the bundled task's reply
    forms)."""
    if name == "none":
        return None
    if name == "json":
        return json_answer
    if name == "support":
        from controller.pipeline.task.support import validate_answer

        return validate_answer
    raise ValueError(f"validator: {name!r} is not one of none, json, support")
