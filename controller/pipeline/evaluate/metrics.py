"""Quality metrics over predictions: exact match (overall and per intent), ROUGE-L for free text,
and the percentile used for latencies. Pure Python, no heavy imports."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.chat_format import normalize  # the agent's gate compares the same way

_WORD = re.compile(r"\w+")


def exact_match(pred: str, gold: str) -> bool:
    return normalize(pred) == normalize(gold)


def _tokens(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1: the longest common subsequence of word tokens (``\\w+`` of the normalized
    text), as precision over the prediction and recall over the reference. Two empty texts
    score 1.0; one empty text scores 0.0."""
    p, g = _tokens(pred), _tokens(gold)
    if not p and not g:
        return 1.0
    lcs = _lcs_length(p, g)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between the closest ranks (numpy's
    default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile p must be in [0, 100], got {p!r}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows {"intent", "prediction", "answer"} -> {"n", "exact_match", "rouge_l",
    "per_intent": {intent: {"n", "exact_match", "rouge_l"}}}; rates are fractions in [0, 1]."""
    if not rows:
        raise ValueError("no rows to summarize: the evaluation set is empty")
    totals: dict[str, list[float]] = {}  # intent -> [n, exact matches, rouge-l sum]
    for number, row in enumerate(rows):
        for field in ("intent", "prediction", "answer"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"row {number}: field {field!r} is missing or not a string")
        counts = totals.setdefault(row["intent"], [0, 0, 0.0])
        counts[0] += 1
        counts[1] += exact_match(row["prediction"], row["answer"])
        counts[2] += rouge_l(row["prediction"], row["answer"])
    n = sum(c[0] for c in totals.values())
    return {
        "n": n,
        "exact_match": sum(c[1] for c in totals.values()) / n,
        "rouge_l": sum(c[2] for c in totals.values()) / n,
        "per_intent": {intent: {"n": int(c[0]), "exact_match": c[1] / c[0], "rouge_l": c[2] / c[0]}
                       for intent, c in sorted(totals.items())},
    }
