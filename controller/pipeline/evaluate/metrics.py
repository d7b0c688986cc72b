"""Quality metrics, a registry of named metrics chosen per run (``metrics: [exact_match, rouge_l,
bleu, chrf, perplexity, judge]``), and the percentile used for latencies.

Answer metrics compare each generated answer with its reference:

- ``exact_match``: the share of answers equal to the reference after NFKC, case folding and
  collapsing runs of whitespace; punctuation and digits count ("$12.50" is not "$1250"). The
  bundled support task's replies are compared this way, and so does a device's golden gate.
- ``exact_match_relaxed``: the same, with punctuation ignored too (Unicode punctuation
  removed), for free-text answers where "Paris." is "Paris".
- ``rouge_l``: ROUGE-L F1 (Google's ``rouge-score``), mean over rows; words are ``\\w+`` runs
  of the NFKC, case-folded text (rouge-score's own tokenizer drops every non-ASCII letter).
- ``bleu``, ``chrf``: sacrebleu's corpus BLEU and chrF, on sacrebleu's 0-100 scale.

``perplexity`` needs the model's probabilities (harness.py computes it) and ``judge`` a teacher
endpoint (judge.py). Pure Python here; rouge-score and sacrebleu load on first use.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.chat_format import normalize  # the agent's golden gate compares the same way

_WORD = re.compile(r"\w+")

ANSWERS, MODEL, JUDGE = "answers", "model", "judge"  # what a metric needs


@dataclass(frozen=True)
class Metric:
    name: str
    needs: str  # ANSWERS: answers and references; MODEL: the model's log-probabilities; JUDGE: an endpoint
    summary: str
    higher_is_better: bool = True
    per_row: Callable[[str, str], float] | None = None  # mean over rows (and per intent)
    corpus: Callable[[Sequence[str], Sequence[str]], float] | None = None  # over all rows at once


def exact_match(pred: str, gold: str) -> bool:
    return normalize(pred) == normalize(gold)


def relaxed(text: str) -> str:
    """``normalize`` with every Unicode punctuation character removed."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c
                   for c in unicodedata.normalize("NFKC", text))
    return normalize(text)


def exact_match_relaxed(pred: str, gold: str) -> bool:
    return relaxed(pred) == relaxed(gold)


class _Words:
    """rouge-score's tokenizer interface: words of the normalized text, any script."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(normalize(text))


_scorer: Any = None


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1 (rouge-score's): the longest common subsequence of words, as precision over
    the prediction and recall over the reference. Two empty texts score 1.0, one empty 0.0."""
    global _scorer
    if not _WORD.search(normalize(pred)) and not _WORD.search(normalize(gold)):
        return 1.0
    if _scorer is None:
        from rouge_score import rouge_scorer  # type: ignore[import-untyped]  # rouge-score ships no type hints

        _scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    return float(_scorer.score(gold, pred)["rougeL"].fmeasure)


def bleu(preds: Sequence[str], golds: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(preds), [list(golds)]).score)


def chrf(preds: Sequence[str], golds: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(preds), [list(golds)]).score)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("exact_match", ANSWERS, "share of answers equal to the reference (case and whitespace "
           "ignored, punctuation counts)", per_row=lambda p, g: float(exact_match(p, g))),
    Metric("exact_match_relaxed", ANSWERS, "share of answers equal to the reference (case, whitespace "
           "and punctuation ignored)", per_row=lambda p, g: float(exact_match_relaxed(p, g))),
    Metric("rouge_l", ANSWERS, "ROUGE-L F1 against the reference, 0..1 (rouge-score)", per_row=rouge_l),
    Metric("bleu", ANSWERS, "corpus BLEU against the references, 0..100 (sacrebleu)", corpus=bleu),
    Metric("chrf", ANSWERS, "corpus chrF against the references, 0..100 (sacrebleu)", corpus=chrf),
    Metric("perplexity", MODEL, "token-level perplexity of the reference given the prompt (or of a "
           "text row), lower is better", higher_is_better=False),
    Metric("judge", JUDGE, "a teacher endpoint's 1-5 score per answer, mean normalised to 0..1"),
)}
DEFAULT_METRICS = ("exact_match", "rouge_l")


def check_metrics(names: Sequence[str], field: str = "metrics") -> list[str]:
    """``names`` checked against the registry (ValueError naming the field and the unknown
    name), without repeats, in the order given."""
    import difflib

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    chosen: list[str] = []
    for i, name in enumerate(names):
        if name not in METRICS:
            close = difflib.get_close_matches(str(name), METRICS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"{field}[{i}]: unknown metric {name!r}; {hint}known: {', '.join(METRICS)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"{field}: name at least one metric ({', '.join(METRICS)})")
    return chosen


def score_answers(predictions: Sequence[str], references: Sequence[str], names: Sequence[str],
                  intents: Sequence[str] | None = None) -> dict[str, Any]:
    """The answer metrics among ``names`` (others are left to their own code): {"n", name: value,
    ..., "per_intent": {intent: {"n", name: value}} (per-row metrics only, when ``intents``)}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} answers for {len(references)} references")
    if not predictions:
        raise ValueError("no answers to score: the evaluation set is empty")
    out: dict[str, Any] = {"n": len(predictions)}
    per_row: dict[str, list[float]] = {}
    for name in names:
        metric = METRICS[name]
        if metric.per_row is not None:
            per_row[name] = [metric.per_row(p, g) for p, g in zip(predictions, references, strict=True)]
            out[name] = sum(per_row[name]) / len(predictions)
        elif metric.corpus is not None:
            out[name] = metric.corpus(predictions, references)
    if intents is not None and per_row:
        groups: dict[str, list[int]] = {}
        for i, intent in enumerate(intents):
            groups.setdefault(intent, []).append(i)
        out["per_intent"] = {intent: {"n": len(rows), **{name: sum(scores[i] for i in rows) / len(rows)
                                                         for name, scores in per_row.items()}}
                             for intent, rows in sorted(groups.items())}
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), numpy's default (linear interpolation between ranks)."""
    import numpy as np

    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile p must be in [0, 100], got {p!r}")
    return float(np.percentile(np.asarray(values, dtype=float), p))


def perplexity_of(nll_sum: float, tokens: int) -> float | None:
    """exp(mean negative log-likelihood per token); None when no token was scored."""
    return math.exp(nll_sum / tokens) if tokens else None


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows {"intent", "prediction", "answer"} -> {"n", "exact_match", "rouge_l",
    "per_intent": {intent: {"n", "exact_match", "rouge_l"}}}; rates are fractions in [0, 1]."""
    if not rows:
        raise ValueError("no rows to summarize: the evaluation set is empty")
    for number, row in enumerate(rows):
        for field in ("intent", "prediction", "answer"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"row {number}: field {field!r} is missing or not a string")
    return score_answers([r["prediction"] for r in rows], [r["answer"] for r in rows], DEFAULT_METRICS,
                         [r["intent"] for r in rows])
