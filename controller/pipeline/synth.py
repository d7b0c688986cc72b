"""Synthetic data: a teacher answers prompts, the answers are validated, and the usable ones are
written as a labelled data set with the teacher's identity and settings beside it.

Labelling is resumable. Every answered prompt, kept or dropped, is appended with its verdict to
``<out>.partial.jsonl`` as each chunk finishes; a rerun reuses those answers and asks the
teacher only for the rest: an answer is reused for the same id and the same prompt, or for a
conversation the same messages. Prompts the teacher failed on ("error") are asked again, and answers
from a different teacher or different generation settings are not reused. The partial file stays
after success as the cache a later run (more prompts, a restarted job) resumes from.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.pipeline.events import Events
from controller.pipeline.jsonl import DataError, append_jsonl_many, write_atomic, write_jsonl
from controller.pipeline.teachers.base import Answer, GenerationSettings, Teacher, TeacherError

DROP_REASONS = ("empty", "truncated", "too_long", "invalid", "error")
TASK = "synth/label"
Validator = Callable[[str, str], "str | None"]  # (prompt, answer) -> reason it's wrong, or None


@dataclass
class SynthReport:
    asked: int  # prompts sent to the teacher in this run
    reused: int  # prompts answered by an earlier run (from the partial file)
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    out_path: Path = Path()


def partial_path(out_path: Path) -> Path:
    return Path(out_path).with_suffix(".partial.jsonl")


def meta_path(out_path: Path) -> Path:
    return Path(f"{out_path}.meta.json")


def label_prompts(teacher: Teacher, prompts: Sequence[Mapping[str, Any]], out_path: Path,
                  settings: GenerationSettings, events: Events, *, max_answer_chars: int = 400,
                  validator: Validator | None = None, min_success_ratio: float = 0.9,
                  chunk: int = 256) -> SynthReport:
    """Label ``prompts`` (rows with "id", "prompt" and optionally "intent") with ``teacher`` and
    write rows {"id", "intent", "prompt", "answer", "teacher_finish"} to ``out_path``
    atomically. A row with "messages" (a conversation ending with the user's turn) is sent to
    the teacher whole; its "prompt" is that last user turn (what a validator sees) and its
    labelled row keeps the "messages", plus ``<out_path>.meta.json``. An answer is dropped when it is "empty",
    "truncated" (the teacher hit max_new_tokens), "too_long" (over max_answer_chars), "invalid"
    (``validator`` gave a reason) or an "error" (the teacher failed that prompt). Raises
    TeacherError, keeping the partial file, when fewer than ``min_success_ratio`` of the prompts
    get a usable answer, as soon as that is certain."""
    if not isinstance(max_answer_chars, int) or max_answer_chars < 1:
        raise ValueError(f"max_answer_chars must be an integer >= 1, got {max_answer_chars!r}")
    if not 0 <= min_success_ratio <= 1:
        raise ValueError(f"min_success_ratio must be in [0, 1], got {min_success_ratio!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    prompts = _check_prompts(prompts)
    out_path = Path(out_path)
    partial = partial_path(out_path)
    key = _teacher_key(teacher, settings)

    def verdict(prompt: str, answer: Answer) -> str:
        return _verdict(prompt, answer, max_answer_chars, validator)

    results = _reusable(partial, prompts, key, events)
    for row in results.values():  # judged again: the limits or the validator may have changed
        row["verdict"] = verdict(row["prompt"], Answer(row["answer"], row["teacher_finish"]))
    reused = len(results)
    todo = [p for p in prompts if p["id"] not in results]
    total = len(prompts)
    required = math.ceil(min_success_ratio * total - 1e-9)  # usable answers needed
    if reused:
        events.log(f"synth: reusing {reused} answers from {partial}; asking the teacher for {len(todo)}")
    events.progress(TASK, reused, total, unit="prompt")

    for start in range(0, len(todo), chunk):
        events.check_cancelled()
        part = todo[start:start + chunk]
        answers = teacher.generate([p.get("messages") or p["prompt"] for p in part], settings, events)
        if len(answers) != len(part):
            raise TeacherError(f"teacher returned {len(answers)} answers for {len(part)} prompts")
        answered = [{"id": row["id"], "intent": row["intent"], "prompt": row["prompt"],
                     "answer": answer.text.strip(), "teacher_finish": answer.finish_reason,
                     "verdict": verdict(row["prompt"], answer), "error": answer.error, "key": key,
                     **({"messages": row["messages"]} if "messages" in row else {})}
                    for row, answer in zip(part, answers, strict=True)]
        append_jsonl_many(partial, answered)  # one fsync per chunk: a kill loses at most a chunk
        results.update((r["id"], r) for r in answered)
        counts = Counter(r["verdict"] for r in results.values())
        dropped_so_far = len(results) - counts["kept"]
        events.progress(TASK, len(results), total, unit="prompt", kept=counts["kept"], dropped=dropped_so_far)
        if dropped_so_far > total - required and len(results) < total:
            raise TeacherError(
                f"teacher gave usable answers to only {counts['kept']} of the first {len(results)} "
                f"prompts; with {total} in all, min_success_ratio {min_success_ratio} can no longer "
                f"be met: dropped {_format_drops(counts)}. Answers so far are kept in {partial}")

    counts = Counter(results[p["id"]]["verdict"] for p in prompts)
    kept = counts["kept"]
    dropped = {reason: counts[reason] for reason in DROP_REASONS if counts[reason]}
    if kept < required:
        raise TeacherError(f"teacher gave usable answers to {kept} of {total} prompts "
                           f"(min_success_ratio {min_success_ratio}): dropped {_format_drops(counts)}")
    fields = ("id", "intent", "prompt", "answer", "teacher_finish", "messages")
    rows = [{k: results[p["id"]][k] for k in fields if k in results[p["id"]]}
            for p in prompts if results[p["id"]]["verdict"] == "kept"]
    write_jsonl(out_path, rows)
    meta = {
        "teacher": teacher.identity(),
        "settings": asdict(settings),
        "max_answer_chars": max_answer_chars,
        "validator": getattr(validator, "__qualname__", repr(validator)) if validator else None,
        "min_success_ratio": min_success_ratio,
        "counts": {"prompts": total, "asked": len(todo), "reused": reused, "kept": kept,
                   "dropped": dropped},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomic(meta_path(out_path), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    events.log(f"synth: kept {kept} of {total} answers" + (f", dropped {_format_drops(counts)}"
                                                          if dropped else "") + f" -> {out_path}")
    return SynthReport(asked=len(todo), reused=reused, kept=kept, dropped=dropped, out_path=out_path)


def _verdict(prompt: str, answer: Answer, max_answer_chars: int, validator: Validator | None) -> str:
    """"kept" or the reason the answer is dropped."""
    text = answer.text.strip()
    if answer.finish_reason == "error":
        return "error"
    if not text:
        return "empty"
    if answer.finish_reason == "length":
        return "truncated"
    if len(text) > max_answer_chars:
        return "too_long"
    if validator is not None and validator(prompt, text) is not None:
        return "invalid"
    return "kept"


def _format_drops(counts: Mapping[str, int]) -> str:
    return " ".join(f"{r}={counts[r]}" for r in DROP_REASONS if counts.get(r)) or "none"


def _check_prompts(prompts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, row in enumerate(prompts):
        messages = row.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, Mapping) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str) for m in messages):
                raise DataError(f"prompt {number}: field 'messages' must be a non-empty list of "
                                "{role, content} turns (roles system, user, assistant)")
            if messages[-1]["role"] != "user":
                raise DataError(f"prompt {number}: field 'messages' must end with the user's turn")
            row = {**row, "prompt": row.get("prompt", messages[-1]["content"])}
        for name in ("id", "prompt"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise DataError(f"prompt {number}: field {name!r} is missing or not a non-empty string")
        if row["id"] in seen:
            raise DataError(f"prompt {number}: id {row['id']!r} appears twice; ids must be unique")
        seen.add(row["id"])
        intent = row.get("intent")
        checked.append({"id": row["id"], "prompt": row["prompt"],
                        "intent": intent if isinstance(intent, str) and intent else "unknown",
                        **({"messages": [dict(m) for m in messages]} if messages is not None else {})})
    return checked


def _teacher_key(teacher: Teacher, settings: GenerationSettings) -> str:
    """Which teacher answered with which settings. Where it is served (base_url, path) and the
    batch size don't change what it answers, so they are left out: a teacher moved to another
    host, or a model directory copied elsewhere, still resumes."""
    identity = {k: v for k, v in teacher.identity().items() if k not in ("base_url", "path")}
    what = {"teacher": identity, "settings": {**asdict(settings), "batch_size": None}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reusable(partial: Path, prompts: list[dict[str, Any]], key: str,
              events: Events) -> dict[str, dict[str, Any]]:
    """Answers in the partial file for these prompts (same id and text, and for a conversation
    the same messages), from this teacher and settings, that are not errors. A torn last line
    (killed mid-write) is skipped."""
    if not partial.exists():
        return {}
    wanted = {p["id"]: (p["prompt"], p.get("messages")) for p in prompts}
    found: dict[str, dict[str, Any]] = {}
    other_teacher = 0
    lines = partial.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the append that was cut short when the last run died
            raise DataError(f"{partial}:{number}: malformed JSON; delete {partial} to label from "
                            "scratch") from None
        if not isinstance(row, dict) or not isinstance(row_id := row.get("id"), str) or (
                wanted.get(row_id) != (row.get("prompt"), row.get("messages"))):
            continue
        if row.get("key") != key:
            other_teacher += 1
        elif row.get("teacher_finish") in ("stop", "length") and isinstance(row.get("answer"), str):
            found[row["id"]] = row  # errors are asked again
    if other_teacher:
        events.log(f"synth: {other_teacher} answers in {partial} came from another teacher or other "
                   "settings; asking again")
    return found
