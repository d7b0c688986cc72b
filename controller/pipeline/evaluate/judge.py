"""LLM-as-judge: a teacher endpoint (OpenAI-compatible chat completions, the distill step's
client) scores each answer 1-5 against the question and the reference with a stated rubric.

The judge is asked for ``SCORE: <1-5>`` and a one-line reason. The first such score in its
reply is taken; a reply without one (or with a score outside 1-5, or no reply at all) is
counted in ``judge_unparsed`` and left out of the mean, never guessed. ``judge`` is the mean
score normalised to 0..1 ((score - 1) / 4); ``judge_mean_score`` is the mean on 1-5.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.pipeline.events import Events

RUBRIC = (
    "5: correct and complete, says what the reference says (wording may differ); "
    "4: correct, with a minor omission or harmless extra; "
    "3: partly correct, or correct but with a noticeable error; "
    "2: mostly wrong or off-topic, with a fragment of the right answer; "
    "1: wrong, empty, or not an answer.")

TEMPLATE = """You are grading an assistant's answer against a reference answer.

Rubric (score 1-5):
{rubric}

Question:
{prompt}

Reference answer:
{reference}

Assistant's answer:
{answer}

Reply with exactly one line: SCORE: <1-5> - <one-line reason>"""

_SCORE = re.compile(r"score\s*[:=]?\s*\**\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


class JudgeError(ValueError):
    """A judge that can't be asked (bad settings, no key, endpoint unreachable)."""


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str
    model: str
    api_key_env: str = ""  # the environment variable holding the key; "" = no key
    rubric: str = RUBRIC
    max_tokens: int = 64
    concurrency: int = 4
    timeout_s: float = 60.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], field: str = "judge") -> JudgeConfig:
        if not isinstance(raw, Mapping):
            raise JudgeError(f"{field}: expected a mapping with base_url, model, api_key_env, rubric")
        known = ("base_url", "model", "api_key_env", "rubric", "max_tokens", "concurrency", "timeout_s")
        for key in raw:
            if key not in known:
                raise JudgeError(f"{field}.{key}: unknown field; known: {', '.join(known)}")
        for key in ("base_url", "model"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise JudgeError(f"{field}.{key}: required, a non-empty string")
        rubric = raw.get("rubric") or RUBRIC
        if not isinstance(rubric, str):
            raise JudgeError(f"{field}.rubric: expected a string")
        env = raw.get("api_key_env") or ""
        if not isinstance(env, str):
            raise JudgeError(f"{field}.api_key_env: expected the name of an environment variable")
        return cls(raw["base_url"], raw["model"], env, rubric, int(raw.get("max_tokens", 64)),
                   int(raw.get("concurrency", 4)), float(raw.get("timeout_s", 60.0)))

    def to_dict(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "rubric": self.rubric, "max_tokens": self.max_tokens, "concurrency": self.concurrency,
                "timeout_s": self.timeout_s}


def parse_score(reply: str) -> int | None:
    """The 1-5 score of a judge's reply; None when it gives none, or one outside 1-5."""
    found = _SCORE.search(reply or "")
    if found is None:
        return None
    value = float(found.group(1))
    return int(value) if value.is_integer() and 1 <= value <= 5 else None


def judge_answers(config: JudgeConfig, prompts: Sequence[str], references: Sequence[str],
                  answers: Sequence[str], events: Events | None = None) -> dict[str, Any]:
    """{"judge", "judge_mean_score", "judge_scored", "judge_unparsed", "judge_model",
    "judge_rubric", "judge_reasons": the first few replies}."""
    from controller.pipeline.teachers.base import GenerationSettings, TeacherError
    from controller.pipeline.teachers.openai_compat import OpenAITeacher

    events = events or Events()
    key = None
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise JudgeError(f"judge.api_key_env: the environment variable {config.api_key_env} is not "
                             "set; set it to the endpoint's key, or leave api_key_env empty for a "
                             "keyless endpoint")
    questions = [TEMPLATE.format(rubric=config.rubric, prompt=p, reference=r, answer=a)
                 for p, r, a in zip(prompts, references, answers, strict=True)]
    try:
        client = OpenAITeacher(config.base_url, config.model, api_key=key, concurrency=config.concurrency,
                               timeout_s=config.timeout_s)
        replies = client.generate(questions, GenerationSettings(max_new_tokens=config.max_tokens), events)
    except TeacherError as e:
        raise JudgeError(f"judge: {e}".replace("teacher", "judge")) from None
    scores = [parse_score(r.text) if r.finish_reason != "error" else None for r in replies]
    scored = [s for s in scores if s is not None]
    mean = sum(scored) / len(scored) if scored else None
    return {
        "judge": (mean - 1) / 4 if mean is not None else None,
        "judge_mean_score": mean,
        "judge_scored": len(scored),
        "judge_unparsed": len(scores) - len(scored),
        "judge_model": config.model,
        "judge_rubric": config.rubric,
        "judge_replies": [r.text.strip().splitlines()[0] if r.text.strip() else r.error for r in replies[:5]],
    }
