"""Evaluation: quality metrics, the PyTorch harness (accuracy, latency, tokens/s, size) and
``evaluate_isolated`` (the same in a fresh process, with its peak memory). Light to import."""

from typing import Any

from controller.pipeline.evaluate.harness import evaluate, generate_answers
from controller.pipeline.evaluate.metrics import exact_match, normalize, percentile, rouge_l, summarize

__all__ = ["EvaluationError", "evaluate", "evaluate_isolated", "exact_match", "generate_answers",
           "normalize", "percentile", "rouge_l", "summarize"]


def __getattr__(name: str) -> Any:
    # measure is also run as `python -m ...evaluate.measure`; importing it here eagerly would make
    # runpy warn that the module was imported before it ran as __main__.
    if name in ("evaluate_isolated", "EvaluationError"):
        from controller.pipeline.evaluate import measure

        return getattr(measure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
